"""The gpu presets, checked on a machine without a GPU.

- Every lab's gpu-preset training code runs for two optimiser steps at the gpu preset's shapes (model sizes,
  sequence lengths, batch sizes): a shape or configuration error in a preset nobody has run fails here.
  Only the number of steps (one each for the sizes of Lab 3's isoFLOP study) and the data are cut.
- Each lab's GPU memory estimate (``llmlab.memory``) at the gpu preset is at most 12 GiB of a T4's 16 GB, is the
  number ``start_lab`` prints (``llmlab.memory_records``), and the measurements behind it agree with hand counts.
- The fp16 autocast + GradScaler path of the training loop runs on the CPU, and an fp16 overflow makes the
  scaler skip the step (weights unchanged, scale halved) instead of stopping the run.
- ``make gpu-check`` (``llmlab.course.gpu_check``) stops at once without CUDA, reads a kernel's peak memory and
  formats its table.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from llmlab import memory, memory_records
from llmlab.course import gpu_check, notebooks
from llmlab.data import banking77, banking77_intents
from llmlab.first_models import BigramLM, MLPLM
from llmlab.inference import checkpoint_header
from llmlab.intents import train_intent_classifier
from llmlab.lm import HeldOutLoss, random_windows, shakespeare_corpus
from llmlab.metrics import token_cross_entropy
from llmlab.model import GPT, GPTConfig
from llmlab.presets import LAB_PRESETS, lab_settings
from llmlab.pretraining import isoflop_run, matrix_parameters, pretrain, sized
from llmlab.runtime import Precision, start_lab
from llmlab.tasks import ReversalTask
from llmlab.training import next_token_loss, train

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
FP16 = Precision(torch.float16, True)  # what pick_precision gives a T4
T4_LIMIT = 12 * memory_records.GIB  # of a T4's 16 GB: the rest for the CUDA context, workspaces and the allocator's rounding

# Labs whose gpu preset trains nothing that the tests below do not already run, and why.
NO_GPU_TRAINING_OF_THEIR_OWN = {
    "05_inference": "it trains only Lab 3's model (when Lab 3's checkpoint is missing), with Lab 3's gpu settings: "
                    "test_lab03_gpu_pretraining; its generation runs at the gpu shapes in its memory estimate",
    "06_business": "it trains only the frozen recipe's linear head (scikit-learn, on the CPU), and its gpu preset "
                   "is its cpu preset",
    "07_building_on_a_model": "its only training, the coffee-order writer, has the same shape at every preset "
                              "(llmlab.structured.ORDER_DEFAULTS), which the lab's smoke run trains",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this module's large products on one thread. No number depends on it; on a small machine that other
    processes share (2 cores here), two threads took about 1.5 times as long as one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_finite_steps(losses, grad_norms) -> None:
    assert len(losses) == 2, f"expected two optimiser steps, got {len(losses)}"
    assert all(math.isfinite(value) for value in [*losses, *grad_norms]), (losses, grad_norms)


def test_every_lab_with_presets_is_covered():
    covered = {"01_what_is_an_llm", "02_attention", "03_pretraining", "04_fine_tuning", "04b_instruction_tuning"}
    assert covered.isdisjoint(NO_GPU_TRAINING_OF_THEIR_OWN)
    assert covered | set(NO_GPU_TRAINING_OF_THEIR_OWN) == set(LAB_PRESETS), "a new lab: add its gpu-shape test here"
    assert lab_settings("06_business", "gpu") == lab_settings("06_business", "cpu")
    shape = ("order_vocab_size", "order_d_model", "order_d_ff", "order_n_layers", "order_n_heads", "order_max_length")
    assert not set(shape) & (set(lab_settings("07_building_on_a_model", "gpu"))
                             | set(lab_settings("07_building_on_a_model", "smoke")))


# --- each lab's gpu-preset training, two steps at the gpu shapes ---------------------------------------


def test_lab01_gpu_training(tmp_path):
    settings = lab_settings("01_what_is_an_llm", "gpu")
    corpus = shakespeare_corpus(settings["characters"])
    vocab = corpus.tokenizer.vocab_size
    held_out = HeldOutLoss(corpus.val[:2_000], window=64)  # the lab's evaluation slice is 20,000 characters
    models = {"bigram": BigramLM(vocab),
              "MLP": MLPLM(vocab, settings["mlp_context"], settings["mlp_embedding"], settings["mlp_hidden"])}
    rates = {"bigram": settings["bigram_learning_rate"], "MLP": settings["mlp_learning_rate"]}
    for name, model in models.items():
        generator = torch.Generator().manual_seed(1)
        history = train(model, lambda: random_windows(corpus.train, settings["batch_size"], settings["window"], generator, CPU),
                        steps=2, learning_rate=rates[name], device=CPU, evaluate=lambda: held_out.report(model), eval_every=1,
                        checkpoint_path=tmp_path / f"{name}.safetensors", checkpoint_every=1, resume=True,
                        data_generator=generator, description=name)
        two_finite_steps(history.losses, history.grad_norms)
        assert len(history.evals) == 2


def test_lab02_gpu_training():
    settings = lab_settings("02_attention", "gpu")
    task = ReversalTask(settings["sequence_length"])
    for rotary in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=task.vocab_size, context=task.context, d_model=settings["d_model"],
                              n_heads=settings["n_heads"], n_layers=settings["n_layers"], rotary=rotary))
        generator = torch.Generator().manual_seed(1)
        history = train(model, lambda: task.batch(settings["batch_size"], generator, CPU), steps=2,
                        learning_rate=settings["learning_rate"], device=CPU, eval_every=1,
                        evaluate=lambda: task.accuracy(model, 64, torch.Generator().manual_seed(2), CPU))
        two_finite_steps(history.losses, history.grad_norms)
        inputs, _ = task.batch(4, torch.Generator().manual_seed(3))
        with torch.no_grad():
            model(inputs, keep_weights=True)
        weights = model.attention_weights()
        assert len(weights) == settings["n_layers"] and weights[0].shape == (4, settings["n_heads"], task.context, task.context)
        assert task.mirror_share(weights[-1]).shape == (settings["n_heads"],)


def test_lab03_gpu_pretraining(tmp_path):
    """Two steps through the gpu preset's model (6 layers of width 384, windows of 256 characters), evaluated and
    checkpointed after each. Four windows a step, not the preset's 64: on 2 CPU cores 64 cost 100 s of the suite and test
    no more code; what 64 windows need in memory is test_gpu_memory_estimate_fits_a_t4's."""
    settings = lab_settings("03_pretraining", "gpu") | {"steps": 2, "eval_every": 1, "eval_windows": 2, "checkpoint_every": 1,
                                                         "batch_size": 4}
    checkpoint = tmp_path / "pretraining-gpu.safetensors"
    model, history, _ = pretrain(settings, CPU, checkpoint_path=checkpoint, resume=True)
    two_finite_steps(history.losses, history.grad_norms)
    assert len(history.evals) == 2 and checkpoint_header(checkpoint)["step"] == 2
    assert (model.config.d_model, model.config.n_layers, model.context) == (384, 6, 256)


def test_lab03_gpu_isoflop_sizes():
    """Every size of the gpu preset's isoFLOP study, at the preset's context, for the budget of one step (of 4 windows:
    the preset's 64 cost the suite 20 s on 2 CPU cores and test no more code)."""
    settings = lab_settings("03_pretraining", "gpu") | {"eval_windows": 2, "batch_size": 4}
    corpus = shakespeare_corpus(settings.get("characters"))
    tokens_per_step = settings["batch_size"] * settings["context"]
    for d_model, n_layers in settings["scaling_sizes"]:
        parameters = matrix_parameters(sized(settings, d_model, n_layers), corpus.tokenizer.vocab_size)
        result = isoflop_run(settings, d_model, n_layers, 6 * parameters * tokens_per_step, CPU, corpus)
        assert result["steps"] == 1 and math.isfinite(result["val_loss"]), result


@pytest.mark.parametrize("recipe", ["finetune", "lora"])
def test_lab04_gpu_fine_tuning(recipe, tmp_path):
    """The gpu preset's fine-tuning and LoRA runs on 64 messages for one epoch: two batches of 32."""
    settings = lab_settings("04_fine_tuning", "gpu")[f"{recipe}_settings"] | {"epochs": 1}
    assert settings["batch_size"] == 32
    train_split = banking77()["train"]
    all_texts, all_labels = train_split["text"], train_split["label"]
    longest = sorted(range(len(all_texts)), key=lambda i: -len(all_texts[i]))[:64]  # batches as long as the data has
    texts, labels = [all_texts[i] for i in longest], [all_labels[i] for i in longest]
    checkpoint = tmp_path / f"{recipe}.safetensors"
    classifier = train_intent_classifier(texts, labels, banking77_intents(), recipe, settings, CPU, checkpoint_path=checkpoint)
    history = checkpoint_header(checkpoint)["metadata"]["history"]
    two_finite_steps(history["losses"], history["grad_norms"])
    assert classifier.max_length == 64 and classifier.predict_proba(texts[:3]).shape == (3, 77)


def test_lab04b_gpu_sft_and_dpo_paths(tmp_path):
    """The gpu preset's full SFT, LoRA SFT and DPO, two optimiser steps each, through the real sft_train and dpo_train with
    the preset's settings: 384-token conversations, batches of 16 one per pass (8 pairs, 1 per pass), gradient
    checkpointing, LoRA rank 16. Not at Qwen2.5-0.5B's size, which is minutes per step on a CPU: a Qwen2ForCausalLM of
    one layer, width 112 (14 query and 2 key-value heads of 8 channels) and the lab's own small tokenizer, offline."""
    from llmlab.data import coffee_dialogs
    from llmlab.instruct import ChatCollator, dialog_messages, preference_pairs, sft_dataset
    from llmlab.instruct_training import dpo_train, encode_pairs, pair_log_probs, sft_train, train_chat_tokenizer, with_lora

    settings = lab_settings("04b_instruction_tuning", "gpu") | {"sft_epochs": 1, "dpo_steps": 2}
    assert (settings["max_length"], settings["sft_batch_size"], settings["sft_micro_batch_size"]) == (384, 16, 1)
    dialogs = coffee_dialogs()[:120]
    tokenizer = train_chat_tokenizer("\n".join(turn["text"] for dialog in dialogs for turn in dialog["turns"]), 512)
    conversations = [dialog_messages(dialog) for dialog in dialogs]
    data, _ = sft_dataset(tokenizer, conversations, settings["max_length"])
    data = data.select(range(2 * settings["sft_batch_size"]))  # two optimiser steps
    collator = ChatCollator(tokenizer.pad_token_id)

    def small_qwen():
        return memory.qwen_decoder(1, vocab_size=len(tokenizer), hidden_size=112, intermediate_size=304,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)

    for name, model, rate in (("full", small_qwen(), settings["learning_rate"]),
                              ("lora", with_lora(small_qwen(), tokenizer, settings), settings["lora_learning_rate"])):
        costs = sft_train(model, data, collator, settings, rate, CPU, tmp_path / f"sft-{name}")
        assert costs["steps"] == 2, (name, costs["steps"])
        assert all(math.isfinite(loss) for loss in costs["losses"]), costs["losses"]
        assert not any(getattr(module, "gradient_checkpointing", False) for module in model.modules()), "left switched on"
    pairs, _ = encode_pairs(tokenizer, preference_pairs(conversations, seed=0), settings["max_length"])
    pairs = pairs[:2 * settings["dpo_batch_size"]]
    reference = small_qwen()
    chosen, rejected = pair_log_probs(reference, pairs, collator, settings["eval_batch_size"], CPU)
    policy = with_lora(reference, tokenizer, settings)
    history = dpo_train(policy, pairs, chosen, rejected, collator, settings, CPU)
    two_finite_steps(history.losses, history.grad_norms)
    assert history.losses[0] == pytest.approx(math.log(2), abs=1e-3), "the policy starts as the reference"
    # evaluation: float32 (Qwen2 overflows fp16), greedy replies generate_batch_size prompts per call, left-padded
    from llmlab.instruct import reply_prompts
    from llmlab.instruct_training import generate_replies, lab_precision

    assert lab_precision(settings, CPU).name == "fp32" and settings["generate_batch_size"] > settings["eval_batch_size"]
    histories = [history for history, _ in reply_prompts(conversations)][:settings["generate_batch_size"] + 2]
    model = small_qwen()
    batched = generate_replies(model, tokenizer, histories, 6, settings["generate_batch_size"], CPU)
    assert len(batched) == len(histories)
    assert generate_replies(model, tokenizer, histories[:3], 6, 1, CPU) == batched[:3], "left padding changes no reply"


# --- memory at the gpu preset --------------------------------------------------------------------------


def test_every_lab_has_an_estimate_or_a_reason():
    assert set(memory.ESTIMATORS).isdisjoint(memory_records.NOT_ESTIMATED)
    assert set(memory.ESTIMATORS) | set(memory_records.NOT_ESTIMATED) == set(LAB_PRESETS)
    assert set(memory_records.RECORDED_MIB) == set(memory.ESTIMATORS)
    for lab in LAB_PRESETS:  # what start_lab prints at the gpu preset: never a KeyError
        assert memory_records.gpu_memory_line(lab).startswith("gpu preset on a T4: ")
    with pytest.raises(KeyError, match="'07_missing'"):
        memory_records.recorded_gpu_memory_estimate("07_missing")
    with pytest.raises(KeyError, match="no GPU memory estimate"):
        memory.gpu_memory_estimates("07_missing")


def installed_versions() -> dict[str, str]:
    import importlib.metadata

    return {name: importlib.metadata.version(name).split("+")[0] for name in memory_records.RECORDED_WITH}


def test_the_estimates_were_recorded_with_the_pinned_versions():
    makefile = (ROOT / "Makefile").read_text()
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"TORCH_SPEC ?= torch=={memory_records.RECORDED_WITH['torch']}\n" in makefile
    assert f"\ntransformers=={memory_records.RECORDED_WITH['transformers']}\n" in requirements, \
        "new pins: run `python -m llmlab.memory` with them and update RECORDED_MIB and RECORDED_WITH in llmlab/memory_records.py"


@functools.cache
def measured_estimate(lab: str):
    """memory.gpu_memory_estimate(lab), measured once for the two tests below (Lab 4b's takes half a minute)."""
    return memory.gpu_memory_estimate(lab)


@pytest.mark.parametrize("lab", sorted(memory.ESTIMATORS))
def test_gpu_memory_estimate_fits_a_t4(lab):
    estimate = measured_estimate(lab)
    assert 0 < estimate.total <= T4_LIMIT, estimate.line()


@pytest.mark.skipif(installed_versions() != memory_records.RECORDED_WITH,
                    reason=f"llmlab.memory_records.RECORDED_MIB was measured with {memory_records.RECORDED_WITH}, "
                           f"here {installed_versions()}: other versions save other tensors")
@pytest.mark.parametrize("lab", sorted(memory.ESTIMATORS))
def test_the_recorded_estimate_is_what_the_code_measures(lab):
    estimate = measured_estimate(lab)
    recorded = memory_records.recorded_gpu_memory_estimate(lab)
    entry = memory_records.recorded_entry(estimate)
    message = f"llmlab.memory_records.RECORDED_MIB[{lab!r}] is out of date; the code measures {entry!r}"
    assert (recorded.part, recorded.precision) == (estimate.part, estimate.precision), message
    for key in ("weights", "gradients", "optimizer", "activations", "kv_cache"):
        measured, kept = getattr(estimate, key), getattr(recorded, key)
        assert abs(measured - kept) <= max(2 * memory_records.MIB, memory_records.RECORDED_TOLERANCE * measured), message


def test_lab3_weights_match_a_hand_count():
    """10.6M parameters: V·d + L·(12·d² + 2·d) + d (no biases, tied head), and the rotary tables, all float32."""
    settings = lab_settings("03_pretraining", "gpu")
    estimate = memory.gpu_memory_estimates("03_pretraining")[0]
    vocab, d, layers = memory._character_vocabulary(), settings["d_model"], settings["n_layers"]
    parameters = vocab * d + layers * (12 * d * d + 2 * d) + d
    assert 10_600_000 < parameters < 10_700_000
    rotary_tables = layers * settings["context"] * (d // settings["n_heads"] // 2)
    assert estimate.weights == 4 * (parameters + rotary_tables)
    assert (estimate.gradients, estimate.optimizer) == (4 * parameters, 8 * parameters)  # ZeRO's 16 bytes per weight in all


def test_qwen_weights_match_the_published_count():
    """Qwen2.5-0.5B: 494,032,768 parameters (0.49B, 0.36B outside the embeddings): V·d + L·(4d² + 4·128·d + 6d + 256 +
    3·d·4864) + d, the K and V projections 2 heads of 64, biases on Q, K and V, tied head. Full SFT keeps the base model
    beside the trained one; LoRA trains r·(in + out) per adapted layer and the two chat-token rows."""
    v, d, layers, ff = 151_936, 896, 24, 4864
    per_layer = 2 * d * d + d + 2 * (d * 128 + 128) + 3 * d * ff + 2 * d
    parameters = v * d + layers * per_layer + d
    assert parameters == 494_032_768 and layers * per_layer == 357_897_216
    full, lora, dpo, kl = memory.gpu_memory_estimates("04b_instruction_tuning")
    assert (full.gradients, full.optimizer) == (4 * parameters, 8 * parameters)
    model_bytes = full.weights // 2
    # The rest: the rotary frequencies, 32 floats per table (one table in transformers 5; 4.45 adds one per layer).
    assert 0 <= model_bytes - 4 * parameters <= (1 + layers) * 32 * 4
    settings = lab_settings("04b_instruction_tuning", "gpu")
    adapters = layers * settings["lora_r"] * (2 * (d + d) + 2 * (d + 128) + 3 * (d + ff)) + 2 * d  # q, o; k, v; MLP; 2 rows
    assert lora.gradients == dpo.gradients == 4 * adapters
    for estimate, copies in ((lora, 3), (dpo, 4)):  # plus peft's bookkeeping for the two trained rows, under 8 KiB
        assert 0 <= estimate.weights - 4 * adapters - copies * model_bytes <= 8 * 1024
    assert kl.weights == 4 * model_bytes and kl.activations == 5 * 4 * settings["eval_batch_size"] * 383 * v


def _tiny_qwen_sft(layers: int, checkpointing: bool):
    model = memory.qwen_decoder(layers, vocab_size=512, hidden_size=112, intermediate_size=304).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = memory._chat_batch(512, 384)
    return lambda size: memory.saved_activation_bytes(model, lambda: model(**batch(size)).loss, memory.T4_AUTOCAST)


def test_qwen_activations_grow_linearly_with_the_layers():
    """The Qwen estimate's extrapolations, on a Qwen2 of Qwen2.5-0.5B's heads and 384 tokens but width 112: from 1 and 2
    layers to 3 (and from batch 1 and 2 to 3) is what 3 layers (batch 3) measure; with gradient checkpointing each layer
    more keeps only its fp32 input (batch × tokens × width), what the estimate adds per layer beyond the first."""
    with torch.random.fork_rng():
        measured = {layers: _tiny_qwen_sft(layers, False) for layers in (1, 2, 3)}
        assert 0 < measured[1](1) < measured[2](1)
        assert memory.extrapolate_to_layers(lambda layers: measured[layers](1), 3) == measured[3](1)
        # within 64 bytes: a few small tensors of the model's loss do not grow exactly with the batch (8 bytes here)
        assert abs(memory.extrapolate_to_batch(measured[1], 3) - measured[1](3)) <= 64
        checkpointed = {layers: _tiny_qwen_sft(layers, True) for layers in (1, 3)}
        assert checkpointed[3](2) - checkpointed[1](2) == 2 * (2 * 384 * 112 * 4)
        assert checkpointed[3](2) < measured[3](2)
    with pytest.raises(ValueError, match="layers must be at least 1, got 0"):
        memory.extrapolate_to_layers(lambda layers: 0, 0)


def test_saved_activations_match_hand_counts():
    batch, d, k = 16, 32, 8
    x = torch.randn(batch, d, requires_grad=True)
    assert memory.saved_activation_bytes(nn.Identity(), lambda: x.exp().sum()) == 4 * batch * d  # exp keeps its result
    linear = nn.Linear(d, k, bias=False)
    # fp32: the input (the weight is the model's, not counted); fp16 autocast: fp16 copies of the input and the weight
    assert memory.saved_activation_bytes(linear, lambda: linear(x).sum()) == 4 * batch * d
    assert memory.saved_activation_bytes(linear, lambda: linear(x).float().sum(), torch.float16) == 2 * batch * d + 2 * d * k


def test_live_tensor_peak_counts_frees():
    def run():
        first = torch.ones(1_000)
        second = first + 1
        del first
        return second * 2  # alive at once: two of the three 4,000-byte tensors

    assert memory.peak_live_bytes(nn.Linear(1, 1), run) == 8_000


def _lab3_model_and_batches():
    model = memory._lab3_gpt()
    return model, memory._next_token_batch(model.config.vocab_size, model.context), next_token_loss


def _minilm_classifier_and_batches():
    from llmlab.intents import EncoderClassifier

    encoder = memory._minilm_encoder()
    model = EncoderClassifier(encoder, 77, normalize=False, dropout=0.1)
    return model, memory._encoder_batch(encoder.config.vocab_size, 64, 77), \
        lambda model, batch: token_cross_entropy(model(*batch[0]), batch[1])


@pytest.mark.parametrize("build", [_lab3_model_and_batches, _minilm_classifier_and_batches], ids=["lab3-gpt", "minilm"])
def test_activations_grow_linearly_with_the_batch(build):
    """What the estimates extrapolate from batches 1 and 2 is what batch 3 measures, and it grows with the batch."""
    with torch.random.fork_rng():
        model, make_batch, loss_fn = build()
        model.train()

        def measured(batch_size):
            return memory.saved_activation_bytes(model, lambda: loss_fn(model, make_batch(batch_size)), memory.T4_AUTOCAST)

        one, two = measured(1), measured(2)
        assert 0 < one < two
        assert memory.extrapolate_to_batch(measured, 3) == measured(3)


def test_start_lab_prints_the_estimate_at_the_gpu_preset(monkeypatch, capsys):
    monkeypatch.setenv("LLMLAB_PRESET", "gpu")
    start_lab("03_pretraining")
    printed = capsys.readouterr().out
    assert f"memory: {memory_records.gpu_memory_line('03_pretraining')}\n" in printed
    assert "~3.2 GiB" in printed
    monkeypatch.setenv("LLMLAB_PRESET", "smoke")
    start_lab("03_pretraining")
    assert "memory:" not in capsys.readouterr().out


# --- fp16 autocast and loss scaling on the CPU ---------------------------------------------------------


def test_fp16_autocast_and_grad_scaler_train_on_the_cpu(tmp_path):
    torch.manual_seed(0)
    task = ReversalTask(6)
    model = GPT(GPTConfig(vocab_size=task.vocab_size, context=task.context, d_model=32, n_heads=2, n_layers=2, rotary=True))
    batch = task.batch(64, torch.Generator().manual_seed(0))
    logits_dtypes = set()

    def loss_fn(model, batch):
        logits = model(batch[0])
        logits_dtypes.add(logits.dtype)
        return token_cross_entropy(logits, batch[1])

    checkpoint = tmp_path / "fp16.safetensors"
    history = train(model, lambda: batch, steps=25, learning_rate=1e-2, device=CPU, precision=FP16, loss_fn=loss_fn,
                    checkpoint_path=checkpoint)
    assert logits_dtypes == {torch.float16}  # autocast was on: the products ran in fp16
    assert all(math.isfinite(loss) for loss in history.losses) and history.losses[-1] < 0.8 * history.losses[0]
    scaler = checkpoint_header(checkpoint)["metadata"]["grad_scaler"]  # saved only when the scaler is enabled
    assert scaler["scale"] > 0


def test_an_fp16_overflow_skips_the_step(tmp_path):
    """d(loss)/d(output) = 2, scaled by 65,536 then 32,768: 131,072 and 65,536 overflow fp16 (largest 65,504), so
    the scaler skips steps 1 and 2 and halves its scale each time; at 16,384 the gradient fits and step 3 updates."""
    torch.manual_seed(0)
    model = nn.Linear(8, 4, bias=False)
    inputs = 0.01 * torch.randn(16, 8)
    before = model.weight.detach().clone()

    def loss_fn(model, batch):
        return model(batch).float().sum() * 2

    checkpoint = tmp_path / "overflow.safetensors"
    options = dict(steps=3, learning_rate=1e-2, device=CPU, precision=FP16, loss_fn=loss_fn, checkpoint_path=checkpoint)
    history = train(model, lambda: inputs, stop_after_step=1, **options)
    assert all(math.isfinite(loss) for loss in history.losses)  # the run did not stop: the loss itself is fine
    assert not any(math.isfinite(norm) for norm in history.grad_norms)  # both steps' gradients overflowed
    assert torch.equal(model.weight, before)  # and neither step touched the weights
    assert checkpoint_header(checkpoint)["metadata"]["grad_scaler"]["scale"] == 2.0**14
    history = train(model, lambda: inputs, resume=True, **options)  # step 3, with the scale the checkpoint kept
    assert math.isfinite(history.grad_norms[-1]) and not torch.equal(model.weight, before)


# --- make gpu-check ------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: make gpu-check would run every lab")
def test_gpu_check_stops_without_cuda(monkeypatch):
    result = subprocess.run([sys.executable, "-m", "llmlab.course.gpu_check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and torch.__version__ in lines[0]

    def must_not_run(*arguments, **options):
        raise AssertionError("a notebook ran on a machine without CUDA")

    monkeypatch.setattr(notebooks, "execute", must_not_run)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu_check.main([])


def test_gpu_check_reads_the_peak_from_the_kernel(tmp_path):
    cells = ["x = 1", "import torch\nblock = torch.ones(1024, 1024, device='cuda' if torch.cuda.is_available() else 'cpu')"]
    path = tmp_path / "03_pretraining.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell) for cell in cells]), path)
    result = gpu_check.run_solution(path, cell_timeout=120)
    assert result.lab == "03_pretraining" and result.cells == 2 and result.seconds > 0 and result.error is None
    if torch.cuda.is_available():
        assert result.max_allocated >= 4 * 2**20 and result.max_reserved >= result.max_allocated
    else:
        assert result.max_allocated is None and result.max_reserved is None  # the kernel never initialised CUDA
    assert nbformat.read(path, as_version=4).metadata["llmlab"]["runs"]["gpu"]["outputs_committed"]


def test_gpu_check_table():
    gib = memory_records.GIB
    results = [gpu_check.LabResult("03_pretraining", 600.0, 40, "NVIDIA H100", int(2.5 * gib), 3 * gib),
               gpu_check.LabResult("04b_instruction_tuning", 90.0, 30, None, None, None),
               gpu_check.LabResult("05_inference", error="CellExecutionError: out of memory")]
    table = gpu_check.format_table(results, "cuda: NVIDIA H100", "2.13.0", "2026-01-02", t4_ratio=4)
    lines = table.splitlines()
    assert lines[0] == "gpu preset, every solution, on cuda: NVIDIA H100; torch 2.13.0; 2026-01-02."
    assert "× 4, a ratio stated by whoever ran the check" in table
    assert "| lab | wall time | T4 time (estimated) | peak allocated | peak reserved | estimate (llmlab.memory) |" in lines
    estimate = memory_records.recorded_gpu_memory_estimate("03_pretraining").total_gib
    assert f"| 03_pretraining | 10.0 min | 40.0 min | 2.50 GiB | 3.00 GiB | {estimate:.2f} GiB |" in lines
    lab4b = memory_records.recorded_gpu_memory_estimate("04b_instruction_tuning").total_gib
    assert f"| 04b_instruction_tuning | 1.5 min | 6.0 min | CUDA unused | CUDA unused | {lab4b:.2f} GiB |" in lines
    assert "| 05_inference | failed: CellExecutionError: out of memory |  |  |  |  |" in lines
    without_ratio = gpu_check.format_table(results[:1], "cuda: NVIDIA T4", "2.13.0", "2026-01-02")
    assert "T4 time" not in without_ratio and "| 03_pretraining | 10.0 min | 2.50 GiB |" in without_ratio
    with pytest.raises(ValueError, match="t4_ratio must be positive, got 0"):
        gpu_check.format_table(results, "m", "t", "d", t4_ratio=0)
