"""Lab 3's pretraining code: tokenizer, batches, loss, sampling, GPT-2 equivalence, kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmlab.checkpoint import load_checkpoint, save_checkpoint
from llmlab.gpt2 import to_gpt2_lm_head_model
from llmlab.model import GPT, GPTConfig
from llmlab.presets import LAB_PRESETS
from llmlab.pretraining import (
    CharTokenizer, FixedWindowLoss, causal_lm_loss, generate, pretrain, random_windows, shakespeare_corpus,
)

ROOT = Path(__file__).resolve().parent.parent
SMOKE = LAB_PRESETS["03_pretraining"]["smoke"]


def test_tokenizer_round_trip_and_errors():
    tokenizer = CharTokenizer.from_text("hello world")
    assert tokenizer.vocab_size == 8 and tokenizer.decode(tokenizer.encode("low hell")) == "low hell"
    with pytest.raises(ValueError, match="not in the tokenizer's alphabet"):
        tokenizer.encode("HELLO")


def test_corpus_is_the_nanogpt_split():
    corpus = shakespeare_corpus()
    assert corpus.tokenizer.vocab_size == 65
    assert len(corpus.train) == 1_003_854 and len(corpus.val) == 111_540


def test_windows_are_shifted_by_one():
    ids = torch.arange(100)
    inputs, targets = random_windows(ids, 4, 10, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (4, 10)
    assert torch.equal(targets, inputs + 1)
    with pytest.raises(ValueError, match="fewer than the context"):
        random_windows(torch.arange(5), 1, 5, torch.Generator())


def test_causal_lm_loss_matches_the_model_loss():
    model = GPT(GPTConfig(vocab_size=20, context=16, d_model=32, n_heads=4, n_layers=1))
    tokens = torch.randint(0, 20, (3, 16))
    logits = model(tokens)
    _, model_loss = model(tokens[:, :-1], tokens[:, 1:])
    # The model's causal mask makes position t's logits independent of later tokens, so both agree.
    assert torch.allclose(causal_lm_loss(logits, tokens), model_loss, atol=1e-6)
    with pytest.raises(ValueError, match="share"):
        causal_lm_loss(logits[:, :5], tokens)


def test_generation_respects_top_k_and_length():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, context=8, d_model=16, n_heads=2, n_layers=1))
    out = generate(model, torch.tensor([1, 2, 3]), 20, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(0))
    assert out.shape == (23,) and torch.equal(out[:3], torch.tensor([1, 2, 3]))
    # top_k=1 is greedy: generating again gives the same text.
    again = generate(model, torch.tensor([1, 2, 3]), 20, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.tensor([1]), 1, temperature=0)


def test_same_architecture_as_gpt2_lm_head_model():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, context=32, d_model=64, n_heads=4, n_layers=3, bias=True)
    model = GPT(config).eval()
    gpt2 = to_gpt2_lm_head_model(model)
    assert model.parameter_count() == sum(p.numel() for p in gpt2.parameters())
    tokens = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        assert torch.allclose(model(tokens), gpt2(tokens).logits, atol=1e-5)
    with pytest.raises(ValueError, match="rotary"):
        to_gpt2_lm_head_model(GPT(GPTConfig(vocab_size=65, context=8, rotary=True)))


def test_checkpoint_round_trip_with_tied_weights(tmp_path):
    model = GPT(GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=1))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8)))[1].backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model, optimizer, step=7, rng={"torch": torch.get_rng_state()}, metadata={"note": "x"})
    fresh = GPT(GPTConfig(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=1))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    step, rng, metadata = load_checkpoint(path, fresh, fresh_optimizer)
    assert step == 7 and metadata == {"note": "x"} and "torch" in rng
    assert fresh.lm_head.weight is fresh.token_embedding.weight
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], fresh_optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(path, GPT(GPTConfig(vocab_size=11, context=8, d_model=32, n_heads=2, n_layers=1)))
    assert not list(tmp_path.glob("*.partial"))


def _final_state(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    corpus = shakespeare_corpus()
    settings = {**SMOKE, "steps": 24, "eval_every": 8, "checkpoint_every": 5}
    device = torch.device("cpu")
    reference, reference_history, _ = pretrain(settings, device, corpus)
    path = tmp_path / "run.safetensors"
    pretrain(settings, device, corpus, checkpoint_path=path, stop_after_step=12)  # "interrupted" after step 12
    step, _, _ = load_checkpoint(path, GPT(reference.config))
    assert step == 13
    resumed, resumed_history, _ = pretrain(settings, device, corpus, checkpoint_path=path, resume=True)
    assert resumed_history.losses == pytest.approx(reference_history.losses, abs=1e-6)
    assert resumed_history.evals[-1]["val_loss"] == pytest.approx(reference_history.evals[-1]["val_loss"], abs=1e-6)
    for name, tensor in _final_state(reference).items():
        assert torch.allclose(tensor, resumed.state_dict()[name], atol=1e-6), name


def test_killed_process_resumes_to_the_same_loss(tmp_path):
    """A real SIGKILL in the middle of training, then a resume from the last checkpoint."""
    settings = {**SMOKE, "steps": 40, "eval_every": 39, "checkpoint_every": 4}
    path = tmp_path / "killed.safetensors"
    script = (
        "import json, sys, torch\n"
        "from llmlab.pretraining import pretrain\n"
        "pretrain(json.loads(sys.argv[1]), torch.device('cpu'), checkpoint_path=sys.argv[2], resume=True)\n"
    )
    import json

    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(settings), str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if path.is_file():
            step, _, _ = load_checkpoint(path, GPT(GPTConfig(vocab_size=65, context=settings["context"], d_model=settings["d_model"],
                                                             n_heads=settings["n_heads"], n_layers=settings["n_layers"],
                                                             rotary=settings["rotary"], bias=settings["bias"])))
            if step >= 8:
                break
        time.sleep(0.05)
    assert process.poll() is None, "the training process finished before it could be killed; make the run longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    corpus = shakespeare_corpus()
    resumed, resumed_history, _ = pretrain(settings, torch.device("cpu"), corpus, checkpoint_path=path, resume=True)
    reference, reference_history, _ = pretrain(settings, torch.device("cpu"), corpus)
    assert resumed_history.evals[-1]["val_loss"] == pytest.approx(reference_history.evals[-1]["val_loss"], abs=1e-5)
    assert resumed_history.losses == pytest.approx(reference_history.losses, abs=1e-5)


def test_fixed_window_loss_is_repeatable():
    corpus = shakespeare_corpus()
    model = GPT(GPTConfig(vocab_size=65, context=32, d_model=16, n_heads=2, n_layers=1)).eval()
    first = FixedWindowLoss(corpus.val, 16, 32)(model)
    second = FixedWindowLoss(corpus.val, 16, 32)(model)
    assert first == second and 3.5 < first < 5.0  # untrained: near ln 65 ≈ 4.17
    whole = FixedWindowLoss.whole(corpus.val, 32)
    assert whole.tokens == (len(corpus.val) - 1) // 32 * 32
    assert torch.equal(whole.inputs[1, :5], corpus.val[32:37])  # non-overlapping tiles
