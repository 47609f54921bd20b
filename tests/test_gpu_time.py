"""The estimate of each lab's gpu time on a T4 (``llmlab.gpu_time``): counted from the presets, stated as an estimate,
printed by ``start_lab``, and built on data counts that agree with the course's data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmlab import gpu_time, runtime
from llmlab.costs import PEAK_DENSE_FLOPS, transformer_matrix_parameters
from llmlab.presets import LAB_PRESETS, lab_settings


def test_every_lab_has_an_estimate_that_says_it_is_one():
    assert set(gpu_time.LAB_PARTS) == set(LAB_PRESETS) == set(gpu_time.NOT_COUNTED)
    for lab in LAB_PRESETS:
        line = gpu_time.gpu_time_line(lab)
        assert line.startswith("gpu preset on a T4: about ") and "an estimate, not measured" in line, line
        assert "TFLOPS" in line and f"python -m llmlab.gpu_time {lab}" in line and "\n" not in line
        assert gpu_time.gpu_time_estimate(lab).minutes() > 0


def test_utilisation_is_chapter_3s_nanogpt_share():
    """Chapter 3 divides the 6·N·D of Lab 3's gpu preset (nanoGPT's configuration) by 3 minutes of an A100."""
    lab3 = lab_settings("03_pretraining", "gpu")
    n = transformer_matrix_parameters(lab3["n_layers"], lab3["d_model"], 65)
    chapter3 = 6 * n * lab3["steps"] * lab3["batch_size"] * lab3["context"] / (3 * 60 * PEAK_DENSE_FLOPS["A100 (bf16)"])
    assert gpu_time.UTILISATION["fp16"] == pytest.approx(chapter3, rel=1e-12)
    assert 0.09 < gpu_time.UTILISATION["fp16"] < 0.10
    assert gpu_time.T4_PEAK_FLOPS == {"fp16": 65e12, "fp32": 8.1e12}


def test_lab3_pretraining_by_hand():
    """6·N·D + the evaluations' 2·N per token, over 9.3 % of 65 TFLOPS, plus the launches of 5,000 steps of 6 layers."""
    n = 6 * 12 * 384 ** 2 + 65 * 384  # 10,641,792 weights in matrix products
    assert n == 10_641_792
    tokens = 5000 * 64 * 256
    eval_tokens = (5000 // 250 + 1) * 1024 * 256
    utilisation = 6 * n * tokens / (180 * 312e12)
    compute = (6 * n * tokens + 2 * n * eval_tokens) / (65e12 * utilisation)
    launches = 5000 * (3 * (6 + 2) * 0.001 + 0.005) + 21 * math.ceil(1024 / 64) * (6 + 2) * 0.001
    part = next(p for p in gpu_time.gpu_time_estimate("03_pretraining").parts if p.what.startswith("pretraining:"))
    assert part.compute_seconds == pytest.approx(compute, rel=1e-9)
    assert part.launch_seconds == pytest.approx(launches, rel=1e-9)
    # the arithmetic alone is Chapter 3's "3 minutes on an A100" scaled to a T4's peak, and the evaluations
    assert compute == pytest.approx(180 * 312 / 65 * (1 + eval_tokens / (3 * tokens)), rel=1e-9)


def test_lab6_by_hand():
    """Set-up, MiniLM's 90 MB download and fp32 embeddings of the 13,083 BANKING77 messages: the whole of Lab 6's estimate."""
    minilm = 6 * 12 * 384 ** 2
    embed = 2 * minilm * 13_083 * 16.2 / (8.1e12 * 0.30) + math.ceil(13_083 / 128) * 8 * 0.001
    expected = 60 + 90 / 20 + embed
    assert gpu_time.gpu_time_estimate("06_business").seconds() == pytest.approx(expected, rel=1e-9)
    assert "about 1 min" in gpu_time.gpu_time_line("06_business")


def test_start_lab_prints_the_line_at_every_preset(monkeypatch, capsys):
    for preset in ("smoke", "cpu"):
        monkeypatch.setenv("LLMLAB_PRESET", preset)
        runtime.start_lab("02_attention")
        assert f"time: {gpu_time.gpu_time_line('02_attention')}\n" in capsys.readouterr().out


def test_the_estimate_follows_the_presets(monkeypatch):
    """More steps, more minutes: the estimate is counted from the presets, not typed in."""
    before = gpu_time.gpu_time_estimate("03_pretraining")
    line = gpu_time.gpu_time_line("03_pretraining")
    monkeypatch.setitem(LAB_PRESETS["03_pretraining"]["gpu"], "steps", 4 * LAB_PRESETS["03_pretraining"]["gpu"]["steps"])
    after = gpu_time.gpu_time_estimate("03_pretraining")
    pretraining = next(p for p in before.parts if p.what.startswith("pretraining:"))
    assert after.seconds() - before.seconds() == pytest.approx(3 * pretraining.seconds, rel=0.01)
    assert gpu_time.gpu_time_line("03_pretraining") != line
    # Lab 4b's generation: 16 times the prompts per call, far fewer calls of generate, fewer minutes
    settings = lab_settings("04b_instruction_tuning", "gpu")
    slow = gpu_time.gpu_time_estimate("04b_instruction_tuning", {**settings, "generate_batch_size": 2})
    fast = gpu_time.gpu_time_estimate("04b_instruction_tuning", {**settings, "generate_batch_size": 32})
    assert slow.seconds() > fast.seconds() + 600


def test_lab5_says_what_a_missing_lab3_checkpoint_costs():
    estimate = gpu_time.gpu_time_estimate("05_inference")
    assert estimate.conditions() == ["Lab 3's checkpoint is missing", "Lab 4's classifier is missing"]
    lab3 = next(p for p in gpu_time.gpu_time_estimate("03_pretraining").parts if p.what.startswith("pretraining:"))
    assert estimate.seconds(conditional=True) - estimate.seconds() > lab3.seconds
    assert "min more when Lab 3's checkpoint is missing" in gpu_time.gpu_time_line("05_inference")


def test_rounding_and_refusals():
    assert [gpu_time.rounded_minutes(m) for m in (0.2, 3.4, 9.6, 12.4, 13, 41)] == [1, 3, 10, 10, 15, 40]
    with pytest.raises(ValueError, match="precision 'bf16'"):
        gpu_time.Part("x", precision="bf16")
    with pytest.raises(KeyError, match="no gpu time estimate for lab '99_missing'"):
        gpu_time.gpu_time_estimate("99_missing")


def test_the_data_counts_agree_with_the_data():
    from llmlab import instruct, instruct_training
    from llmlab.data import banking77, coffee_dialogs
    from llmlab.lm import shakespeare_corpus

    assert len(shakespeare_corpus().val) == gpu_time.SHAKESPEARE_VALIDATION_CHARACTERS
    banking = banking77()
    assert (len(banking["train"]), len(banking["test"])) == (gpu_time.BANKING77["train"], gpu_time.BANKING77["test"])
    dialogs = [instruct.dialog_messages(dialog) for dialog in coffee_dialogs()]
    histories = [(messages[:i], message) for messages in dialogs for i, message in enumerate(messages) if message["role"] == "assistant"]
    measured = dict(
        dialogs=len(dialogs), messages_per_dialog=np.mean([len(m) for m in dialogs]),
        characters_per_dialog=np.mean([sum(len(x["content"]) for x in m) for m in dialogs]),
        replies_per_dialog=len(histories) / len(dialogs),
        history_characters_per_reply=np.mean([sum(len(x["content"]) for x in h) for h, _ in histories]),
        history_messages_per_reply=np.mean([len(h) for h, _ in histories]),
        characters_per_reply=np.mean([len(reply["content"]) for _, reply in histories]),
    )
    for key, value in measured.items():
        assert gpu_time.COFFEE_DIALOGS[key] == pytest.approx(value, rel=0.005), key
    assert gpu_time.DPO_EVALUATION_PAIRS == instruct_training.DPO_EVALUATION_PAIRS
    assert gpu_time.DPO_EVALUATIONS == instruct_training.DPO_EVALUATIONS


def test_minilm_tokens_per_message():
    from transformers import AutoConfig, AutoTokenizer

    from llmlab.data import banking77
    from llmlab.embeddings import minilm_source

    config = AutoConfig.from_pretrained(minilm_source())
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (6, 384, 4 * 384)
    tokenizer = AutoTokenizer.from_pretrained(minilm_source())
    lengths = [len(ids) for ids in tokenizer(list(banking77()["train"]["text"]))["input_ids"]]
    assert np.mean(lengths) == pytest.approx(gpu_time.MINILM_TOKENS_PER_MESSAGE, rel=0.01)
