"""How much GPU memory each lab needs at its ``gpu`` preset, estimated on a machine without a GPU.

The ``gpu`` presets are sized for a free Colab T4 (16 GB). For every part of a lab that runs on
the GPU — a training run, an embedding pass, generation — an estimate adds up:

- **weights**: every parameter and buffer in float32. Autocast computes in fp16 but keeps the
  float32 master weights (Micikevicius et al. 2018, *Mixed Precision Training*).
- **gradients**: one float32 number per trainable parameter.
- **AdamW state**: two float32 numbers per trainable parameter (the running mean and the running
  square of the gradient). Weights + gradients + AdamW make 16 bytes per trainable parameter, the
  figure that Rajbhandari et al. 2020 (*ZeRO*, section 3.1) give for mixed-precision Adam
  (2Ψ fp16 weights + 2Ψ fp16 gradients + 12Ψ fp32 master weights, momentum and variance).
  torch's autocast keeps fp32 weights and gradients instead (4 + 4 + 8 bytes): the same 16.
- **activations**, measured rather than taken from a formula: the forward pass runs on the CPU at
  the preset's shapes, under the autocast dtype a T4 gets from ``llmlab.runtime.pick_precision``
  (fp16), and the tensors autograd saves for the backward pass are counted, each storage once
  (``torch.autograd.graph.saved_tensors_hooks``). Parameters and buffers are left out (counted
  above); the fp16 copies of the weights that autocast makes are in, since they take memory too.
  To keep this to seconds, the pass runs at batch 1 and batch 2 and is extrapolated to the
  preset's batch B as a(1) + (B − 1)·(a(2) − a(1)): every activation of these models belongs to
  one example, so the count is linear in B (``tests/test_gpu_paths.py`` checks it against a direct
  measurement).
- **KV cache** (generation): ``llmlab.attention.kv_cache_bytes`` for the batch and positions used.

A part that only runs a model (no gradients, no optimizer) is measured as it runs: the lab's own
function (``embed``, ``generate_batch``, a forward pass) runs on the CPU in float32, as on a T4,
and every tensor the operations make is followed until it is freed (a ``TorchDispatchMode``); the
largest total alive at one time is the peak, what ``torch.cuda.max_memory_allocated`` reports on a
GPU. It too runs at batch 1 and 2 and is extrapolated; the KV cache is shown apart from the rest.

What is left out: the CUDA context (a few hundred MB outside torch's allocator), cuBLAS
workspaces, temporaries that live inside one operation, and the allocator's rounding. The tests
allow at most 12 GiB, which leaves a quarter of the T4 for them; ``make gpu-check`` measures the
real peak (``torch.cuda.max_memory_allocated``) on a GPU.

CPU autocast is close to, not identical with, CUDA autocast: on the CPU, softmax, log-softmax and
layer norm of an fp16 input stay fp16, where CUDA computes them in fp32. In these models their
inputs are float32 anyway (the residual stream stays float32), except the attention weights that
Lab 2's own attention keeps: 2 bytes per weight here against 6 on a T4 (fp32 weights + the fp16
copy the next product makes), a few tens of MB at that lab's shapes.

Each lab's parts are listed by one function in ``ESTIMATORS``; a new lab is one more entry there, and one in
``llmlab.memory_records.RECORDED_MIB``: ``llmlab.runtime.start_lab`` prints a lab's largest part at the gpu preset from
that table (``llmlab.memory_records.gpu_memory_line``) rather than measuring when the lab starts, and
``tests/test_gpu_paths.py`` measures every lab again and fails when a recorded number is off. ``python -m llmlab.memory``
prints the entries to record.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import weakref
from collections.abc import Callable
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from llmlab.memory_records import RECORDED_WITH, MemoryEstimate, recorded_entry, size_text
from llmlab.presets import lab_settings

T4_AUTOCAST = torch.float16  # what pick_precision chooses on a T4 (compute capability 7.5: no fast bf16)
FLOAT32_BYTES = 4
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, float32 each


# --- measuring ----------------------------------------------------------------------------------


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def saved_activation_bytes(model: torch.nn.Module, compute: Callable[[], torch.Tensor],
                           autocast_dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``compute()`` runs on the CPU.

    Each storage counts once (views share one); the model's parameters and buffers are not counted.
    ``autocast_dtype`` runs ``compute`` under CPU autocast with that dtype (None: plain float32).
    """
    excluded = {_storage_key(tensor) for tensor in itertools.chain(model.parameters(), model.buffers())}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in excluded:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor  # kept alive with the graph, so no other tensor can reuse its address meanwhile

    autocast = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        output = compute()
    del output
    return sum(saved.values())


def extrapolate_to_batch(bytes_at: Callable[[int], int], batch_size: int) -> int:
    """bytes(B) from measurements at batch 1 and 2: bytes(1) + (B − 1)·(bytes(2) − bytes(1)), exact when memory is linear in B."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    one = bytes_at(1)
    return one if batch_size == 1 else one + (batch_size - 1) * (bytes_at(2) - one)


def _parameter_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of every parameter and buffer, number of trainable parameters); a tied matrix counts once."""
    weights = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return weights, trainable


def training_estimate(lab: str, part: str, model: torch.nn.Module, make_batch: Callable[[int], object],
                      loss_fn: Callable[[torch.nn.Module, object], torch.Tensor], batch_size: int,
                      autocast_dtype: torch.dtype | None = T4_AUTOCAST) -> MemoryEstimate:
    """Memory of training ``model`` with AdamW on batches of ``batch_size`` (``make_batch(b)`` builds one of b examples)."""
    weights, trainable = _parameter_bytes(model)
    model.train()  # dropout masks are saved only in training mode
    activations = extrapolate_to_batch(
        lambda b: saved_activation_bytes(model, lambda: loss_fn(model, make_batch(b)), autocast_dtype), batch_size)
    return MemoryEstimate(lab, part, "fp16 autocast" if autocast_dtype == torch.float16 else "fp32", weights,
                          gradients=FLOAT32_BYTES * trainable, optimizer=ADAMW_STATES * FLOAT32_BYTES * trainable,
                          activations=activations)


class LiveTensorBytes(TorchDispatchMode):
    """Within ``with LiveTensorBytes(...) as live:``, ``live.peak`` is the most bytes that tensors made by
    operations held at one time, each storage counted once and until its last tensor is freed.

    Tensors that share storage with ``excluded`` ones (a model's weights and their views) are not
    counted. Meant for code that runs without gradients; the autograd graph keeps some tensors alive
    only in C++, and torch keeps the Python object of such a tensor alive with it, so those count too.
    """

    def __init__(self, excluded=()):
        super().__init__()
        self.excluded = {_storage_key(tensor) for tensor in excluded}
        self.holders: dict[int, list[int]] = {}  # storage address -> [bytes, tensors alive]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.holders[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.holders[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            key = _storage_key(tensor)
            if key == 0 or key in self.excluded:  # empty, or a weight
                continue
            if key in self.holders:
                self.holders[key][1] += 1
            else:
                self.holders[key] = [tensor.untyped_storage().nbytes(), 1]
                self.current += self.holders[key][0]
                self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._release, key)
        return output


def peak_live_bytes(model: torch.nn.Module, run: Callable[[], object]) -> int:
    """The most bytes that tensors made by ``run()`` hold at one time, without gradients; ``model``'s weights not counted."""
    with torch.no_grad(), LiveTensorBytes(itertools.chain(model.parameters(), model.buffers())) as live:
        result = run()
        del result
    return live.peak


def inference_estimate(lab: str, part: str, model: torch.nn.Module, run: Callable[[torch.nn.Module, int], object],
                       batch_size: int, kv_cache: int = 0) -> MemoryEstimate:
    """Memory of ``run(model, b)`` in float32 without gradients (see the module docstring), extrapolated to ``batch_size``.

    ``kv_cache`` (bytes, at ``batch_size``) is the part of the measured peak that the KV cache holds;
    the rest is shown as activations.
    """
    weights, _ = _parameter_bytes(model)
    model.eval()
    peak = extrapolate_to_batch(lambda b: peak_live_bytes(model, lambda: run(model, b)), batch_size)
    if peak < kv_cache:
        raise RuntimeError(f"{lab}, {part}: measured {peak} bytes, less than its KV cache of {kv_cache}: the cache was not made")
    return MemoryEstimate(lab, part, "fp32", weights, activations=peak - kv_cache, kv_cache=kv_cache)


# --- the models and batches of the labs ---------------------------------------------------------


def _random_tokens(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))


def _next_token_batch(vocab_size: int, length: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) of ``length`` random characters, what ``llmlab.lm.random_windows`` gives at that shape."""
    return lambda batch: (_random_tokens(batch, length, vocab_size), _random_tokens(batch, length, vocab_size))


@functools.lru_cache(maxsize=1)
def _character_vocabulary() -> int:
    from llmlab.data import tiny_shakespeare
    from llmlab.tokenization import CharTokenizer

    return CharTokenizer.from_text(tiny_shakespeare()).vocab_size


def _lab3_gpt(settings: dict | None = None, **changes):
    from llmlab.model import GPT
    from llmlab.pretraining import model_config

    torch.manual_seed(0)
    config = model_config(settings or lab_settings("03_pretraining", "gpu"), _character_vocabulary())
    return GPT(replace(config, **changes))


def _minilm_encoder():
    """all-MiniLM-L6-v2's architecture with random weights: the memory is the same, and no weights are read."""
    from transformers import AutoConfig, AutoModel

    from llmlab.embeddings import minilm_source

    torch.manual_seed(0)
    return AutoModel.from_config(AutoConfig.from_pretrained(minilm_source()))


def _encoder_batch(vocab_size: int, length: int, n_intents: int) -> Callable[[int], tuple]:
    """((input_ids, attention_mask), labels) with every text at the full ``length``: the largest batch there can be."""
    return lambda batch: ((_random_tokens(batch, length, vocab_size), torch.ones(batch, length, dtype=torch.long)),
                          _random_tokens(batch, 1, n_intents)[:, 0])


def _minilm_embeddings(lab: str) -> MemoryEstimate:
    """``llmlab.embeddings.embed`` on the GPU: float32, batches of 128 texts, each cut at MAX_TOKENS tokens."""
    import inspect

    from transformers import AutoTokenizer

    from llmlab.embeddings import MAX_TOKENS, embed, minilm_source

    batch_size = inspect.signature(embed).parameters["batch_size"].default
    tokenizer, encoder = AutoTokenizer.from_pretrained(minilm_source()), _minilm_encoder()
    long_text = "my card has not arrived yet " * MAX_TOKENS  # longer than MAX_TOKENS: every text fills the batch
    return inference_estimate(lab, f"MiniLM embeddings, batch {batch_size} × {MAX_TOKENS} tokens", encoder,
                              lambda model, b: embed([long_text] * b, tokenizer, model, batch_size=batch_size, progress=False),
                              batch_size)


def _intent_training(lab: str, recipe: str, preset_settings: dict) -> MemoryEstimate:
    """Lab 4's fine-tuning or LoRA run, built by the same functions as ``llmlab.intents.train_intent_classifier``."""
    from llmlab.data import banking77_intents
    from llmlab.intents import DEFAULT_SETTINGS, EncoderClassifier, freeze_lower_layers, lora_encoder
    from llmlab.metrics import token_cross_entropy

    settings = DEFAULT_SETTINGS[recipe] | preset_settings
    encoder = _minilm_encoder()
    if recipe == "lora":
        encoder = lora_encoder(encoder, settings)
    else:
        freeze_lower_layers(encoder, settings["train_layers"])
    n_intents = len(banking77_intents())
    model = EncoderClassifier(encoder, n_intents, normalize=False, dropout=settings["dropout"])
    name = {"finetune": "fine-tuning MiniLM", "lora": "LoRA on MiniLM"}[recipe]
    return training_estimate(
        lab, f"{name}, batch {settings['batch_size']} × {settings['max_length']} tokens", model,
        _encoder_batch(encoder.config.vocab_size, settings["max_length"], n_intents),
        lambda model, batch: token_cross_entropy(model(*batch[0]), batch[1]), settings["batch_size"])


# --- one function per lab: every part that runs on the GPU -------------------------------------


def _lab01(settings: dict) -> list[MemoryEstimate]:
    from llmlab.first_models import BigramLM, MLPLM
    from llmlab.training import next_token_loss

    lab, vocab = "01_what_is_an_llm", _character_vocabulary()
    batch = _next_token_batch(vocab, settings["window"])
    shape = f"batch {settings['batch_size']} × {settings['window']}"
    mlp = MLPLM(vocab, settings["mlp_context"], settings["mlp_embedding"], settings["mlp_hidden"])
    return [
        training_estimate(lab, f"training the bigram model, {shape}", BigramLM(vocab), batch, next_token_loss, settings["batch_size"]),
        training_estimate(lab, f"training the MLP, {shape}", mlp, batch, next_token_loss, settings["batch_size"]),
        _minilm_embeddings(lab),
    ]


# The timing cell of Lab 2 runs the learner's attention on (1, 4, n, d_head) inputs, 4 heads.
LAB2_TIMING_HEADS = 4


def _lab02(settings: dict) -> list[MemoryEstimate]:
    from llmlab.metrics import token_cross_entropy
    from llmlab.model import GPT, GPTConfig
    from llmlab.tasks import ReversalTask

    lab, task = "02_attention", ReversalTask(settings["sequence_length"])
    estimates = []
    for rotary in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=task.vocab_size, context=task.context, d_model=settings["d_model"],
                              n_heads=settings["n_heads"], n_layers=settings["n_layers"], rotary=rotary))
        # keep_weights: the learner's attention builds the n × n weights explicitly, as this path does
        estimates.append(training_estimate(
            lab, f"training the reversal GPT ({'rotary' if rotary else 'learned'} positions), batch {settings['batch_size']}",
            model, lambda b: task.batch(b, torch.Generator().manual_seed(0)),
            lambda model, batch: token_cross_entropy(model(batch[0], keep_weights=True), batch[1]), settings["batch_size"]))
    # Timing the learner's attention is one function call, not a network, so it is counted from its code: at
    # most two (heads, n, n) float32 matrices live at once (scores and masked scores, then masked scores and
    # weights), with the boolean mask and its negation (n × n bytes each) and q, k, v; no weights, fp32.
    n, d_head = max(settings["timing_lengths"]), settings["timing_d_head"]
    score_matrix = LAB2_TIMING_HEADS * n * n * FLOAT32_BYTES
    timing = 2 * score_matrix + 2 * n * n + 3 * LAB2_TIMING_HEADS * n * d_head * FLOAT32_BYTES
    estimates.append(MemoryEstimate(lab, f"timing your attention at n = {n} ({LAB2_TIMING_HEADS} heads)", "fp32", 0,
                                    activations=timing, notes=("counted from the solution's code, not measured",)))
    return estimates


def _lab03(settings: dict) -> list[MemoryEstimate]:
    from llmlab.training import next_token_loss

    lab, model = "03_pretraining", _lab3_gpt(settings)
    batch = _next_token_batch(model.config.vocab_size, settings["context"])
    shape = f"batch {settings['batch_size']} × {settings['context']}"
    return [
        training_estimate(lab, f"pretraining the GPT, {shape}", model, batch, next_token_loss, settings["batch_size"]),
        # Part 3 checks the learner's training step against train() in fp32, at the same shapes
        training_estimate(lab, f"checking your training step in fp32, {shape}", model, batch, next_token_loss,
                          settings["batch_size"], autocast_dtype=None),
    ]


def _lab04(settings: dict) -> list[MemoryEstimate]:
    lab = "04_fine_tuning"
    return [
        _intent_training(lab, "finetune", settings["finetune_settings"]),
        _intent_training(lab, "lora", settings["lora_settings"]),
        _minilm_embeddings(lab),
    ]


def _lab05(settings: dict) -> list[MemoryEstimate]:
    from llmlab.attention import kv_cache_bytes
    from llmlab.generation import generate_batch
    from llmlab.inference import GREEDY

    lab = "05_inference"
    # Without Lab 3's gpu checkpoint, Lab 5 first trains that model itself (llmlab.inference.lab3_model).
    lab3_training = gpu_memory_estimates("03_pretraining")[0]
    estimates = [replace(lab3_training, lab=lab, part=f"{lab3_training.part} (Lab 3's run, when its checkpoint is missing)")]

    # The timing model of Parts 4-5: Lab 3's shape with a longer context, at batch 1. Its largest passes: the last
    # step of generating without the cache (the whole text so far), and the prefill of the longest prompt.
    longest = max(settings["speed_prompt"] + max(settings["speed_lengths"]),
                  max(settings["prefill_prompts"]) + settings["prefill_new_tokens"])
    timing_model = _lab3_gpt(context=longest)
    vocab, config = timing_model.config.vocab_size, timing_model.config
    no_cache = settings["speed_prompt"] + max(settings["speed_lengths"]) - 1
    estimates.append(inference_estimate(lab, f"the timing model's last step without the cache, {no_cache} tokens", timing_model,
                                        lambda model, b: model(_random_tokens(b, no_cache, vocab)), 1))
    prompt, new_tokens = max(settings["prefill_prompts"]), settings["prefill_new_tokens"]
    estimates.append(inference_estimate(
        lab, f"the timing model's prefill of {prompt} tokens", timing_model,
        lambda model, b: model(_random_tokens(b, prompt, vocab), cache=model.new_cache(b, prompt + new_tokens)), 1,
        kv_cache=kv_cache_bytes(config.n_layers, prompt + new_tokens, config.d_model, 1, FLOAT32_BYTES, config.n_heads)))

    # Batched generation with Lab 3's model (llmlab.inference.batch_throughput), every prompt at the full length.
    model, largest = _lab3_gpt(), max(settings["batch_sizes"])
    prompt, new_tokens = settings["batch_prompt"], settings["batch_new_tokens"]
    estimates.append(inference_estimate(
        lab, f"generating {new_tokens} tokens for a batch of {largest} prompts of {prompt}", model,
        lambda model, b: generate_batch(model, list(_random_tokens(b, prompt, vocab)), new_tokens, GREEDY), largest,
        kv_cache=kv_cache_bytes(config.n_layers, prompt + new_tokens, config.d_model, largest, FLOAT32_BYTES, config.n_heads)))
    return estimates


def _lab06(settings: dict) -> list[MemoryEstimate]:
    # The assistant's classifier is the frozen recipe: MiniLM embeddings on the GPU, the rest on the CPU.
    return [_minilm_embeddings("06_business")]


# --- Lab 4b: Qwen2.5-0.5B, built from its published configuration (nothing is downloaded) -------------------

# Qwen/Qwen2.5-0.5B's config.json on the Hugging Face Hub (the model card's "model config"): 0.49B parameters, 0.36B of
# them outside the embeddings, 24 layers, 14 query and 2 key-value heads (GQA), SwiGLU, RMSNorm, tied embeddings.
QWEN25_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, max_position_embeddings=32_768, tie_word_embeddings=True, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False)
# <|im_start|> and <|im_end|> in Qwen2.5's tokenizer: the rows with_lora trains (llmlab.instruct_training.chat_token_ids)
QWEN_CHAT_TOKENS = (151_644, 151_645)
# Bytes per logit that the backward pass of the loss holds on top of the saved fp32 log-softmax: the loss's dense
# gradient with respect to the log-probabilities (nll_loss or gather backward, fp32) and log-softmax's gradient with
# respect to its fp32 input, both alive while LogSoftmaxBackward runs (the largest tensors of the whole step).
LOSS_BACKWARD_BYTES_PER_LOGIT = 2 * FLOAT32_BYTES
# token_kl_to_reference at its largest: log_p, log_q, log_p.exp(), log_p − log_q and their product, fp32 (no autocast).
KL_TENSORS_PER_LOGIT = 5


def qwen_decoder(layers: int, **changes):
    """A randomly initialised ``Qwen2ForCausalLM`` of Qwen2.5-0.5B's shape with ``layers`` layers (``changes`` for tests)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    try:  # transformers 5 moved it; the oldest version llmlab allows (4.45) has it in modeling_utils
        from transformers.initialization import no_init_weights
    except ModuleNotFoundError:
        from transformers.modeling_utils import no_init_weights

    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    config = Qwen2Config(**(QWEN25_05B | {"num_hidden_layers": layers} | changes))
    with no_init_weights():  # Hugging Face's initialisation takes seconds at this vocabulary; the memory does not depend on it
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")  # what from_pretrained picks on a T4
    model.tie_weights()  # skipped with the initialisation; Qwen2.5-0.5B's head is its embedding matrix
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("Qwen2.5-0.5B's head and embedding are one matrix, but the model built here has two")
    if next(model.parameters()).device.type != "meta":
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.uniform_(-0.05, 0.05, generator=generator)
    return model


def lora_qwen(model, settings: dict):
    """``model`` with the LoRA adapters and trainable chat-token rows of ``llmlab.instruct_training.with_lora``.

    with_lora reads the chat tokens from a tokenizer; Qwen's is not read here (offline), so its two ids are written in.
    """
    from peft import LoraConfig, get_peft_model

    from llmlab.instruct_training import LORA_TARGETS

    config = LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                        target_modules=LORA_TARGETS, task_type="CAUSAL_LM",
                        trainable_token_indices={"embed_tokens": [i for i in QWEN_CHAT_TOKENS if i < model.config.vocab_size]})
    return get_peft_model(model, config)


def extrapolate_to_layers(bytes_at: Callable[[int], int], layers: int) -> int:
    """bytes(L) from measurements at 1 and 2 layers: bytes(1) + (L − 1)·(bytes(2) − bytes(1)), exact when every layer adds the same."""
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    one = bytes_at(1)
    return one if layers == 1 else one + (layers - 1) * (bytes_at(2) - one)


def _chat_batch(vocab_size: int, length: int) -> Callable[[int], dict]:
    """A batch of conversations that fill ``length`` tokens, every token in the loss: the largest a batch can be."""
    def make(batch: int) -> dict:
        ids = _random_tokens(batch, length, vocab_size)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return make


def _qwen_training(lab: str, part: str, model: torch.nn.Module, lora: dict | None, loss_fn, make_batch: Callable[[int], dict],
                   micro_batch: int, sequences_per_example: int, settings: dict, resident_copies: int) -> MemoryEstimate:
    """Training Qwen2.5-0.5B (every weight, or LoRA adapters with ``lora``'s settings) on micro-batches of ``micro_batch``
    examples, with ``resident_copies`` other float32 copies of the model on the GPU meanwhile; ``model`` is the trained
    model with 1 layer, which the activations are measured on.

    Weights and trainable parameters are linear in the layers: counted at 1 and 2 layers (built on the meta device, so
    nothing is allocated) and extrapolated to 24. Activations: measured at 1 layer, batch 1 and 2, and extrapolated to
    the micro-batch (``extrapolate_to_batch``). Without gradient checkpointing they are extrapolated to 24 layers from 1
    and 2 (``extrapolate_to_layers``); with it, each layer keeps only its input (fp32, micro-batch × tokens × hidden) and
    the backward pass recomputes one layer at a time: the 1-layer measurement (embedding, one whole layer, head and loss)
    plus 23 layer inputs. On top, the loss's backward tensors (``LOSS_BACKWARD_BYTES_PER_LOGIT``) for every logit of the
    micro-batch.
    """
    layers, length = QWEN25_05B["num_hidden_layers"], settings["max_length"]
    with torch.device("meta"):
        plain = {n: qwen_decoder(n) for n in (1, 2)}
        counted = {n: lora_qwen(qwen_decoder(n), lora) if lora else plain[n] for n in (1, 2)}
    base_weights = extrapolate_to_layers(lambda n: _parameter_bytes(plain[n])[0], layers)
    weights = extrapolate_to_layers(lambda n: _parameter_bytes(counted[n])[0], layers)
    trainable = extrapolate_to_layers(lambda n: _parameter_bytes(counted[n])[1], layers)
    measured_models = {1: model}
    autocast_dtype = None if settings.get("fp32_only") else T4_AUTOCAST  # Lab 4b's Qwen runs in float32 (fp16 overflows)

    def measured(n: int, batch: int) -> int:
        if n not in measured_models:
            measured_models[n] = lora_qwen(qwen_decoder(n), lora) if lora else qwen_decoder(n)
        measured_models[n].train()
        return saved_activation_bytes(measured_models[n], lambda: loss_fn(measured_models[n], make_batch(batch)), autocast_dtype)

    if settings["gradient_checkpointing"]:
        layer_input = micro_batch * sequences_per_example * length * QWEN25_05B["hidden_size"] * FLOAT32_BYTES
        saved = extrapolate_to_batch(lambda b: measured(1, b), micro_batch) + (layers - 1) * layer_input
    else:
        saved = extrapolate_to_layers(lambda n: extrapolate_to_batch(lambda b: measured(n, b), micro_batch), layers)
    loss_backward = LOSS_BACKWARD_BYTES_PER_LOGIT * micro_batch * sequences_per_example * length * QWEN25_05B["vocab_size"]
    notes = (f"weights: the trained model and {resident_copies} other float32 copies that the notebook keeps on the GPU",
             f"activations: saved tensors {size_text(saved)} + the loss's backward {size_text(loss_backward)}")
    return MemoryEstimate(lab, part, "fp32" if autocast_dtype is None else "fp16 autocast", weights + resident_copies * base_weights,
                          gradients=FLOAT32_BYTES * trainable, optimizer=ADAMW_STATES * FLOAT32_BYTES * trainable,
                          activations=saved + loss_backward, notes=notes)


def _lab04b(settings: dict) -> list[MemoryEstimate]:
    """Lab 4b's gpu preset as its notebook runs it: every model it makes stays on the GPU (base, full SFT, LoRA SFT, the
    DPO policy), each a float32 copy of Qwen2.5-0.5B (load_causal_lm), so each later part carries the earlier ones."""
    from llmlab.instruct import dpo_loss, response_log_probs

    if settings["base_model"] != "Qwen/Qwen2.5-0.5B":
        raise ValueError(f"the estimate builds Qwen/Qwen2.5-0.5B's shape; the gpu preset's base_model is {settings['base_model']!r}")
    lab, length, vocab = "04b_instruction_tuning", settings["max_length"], QWEN25_05B["vocab_size"]
    checkpointing = ", gradient checkpointing" if settings["gradient_checkpointing"] else ""
    sft_shape = f"batch {settings['sft_batch_size']} × {length} tokens, {settings['sft_micro_batch_size']} per pass{checkpointing}"
    sft_batch = _chat_batch(vocab, length)

    def sft_loss(model, batch):  # the Trainer's loss: the model's own shifted cross-entropy
        return model(**batch).loss

    def dpo_batch(pairs: int) -> dict:  # the chosen and rejected replies of `pairs` pairs, as dpo_train batches them
        return _chat_batch(vocab, length)(2 * pairs) | {"reference": torch.zeros(2 * pairs)}

    def dpo_step_loss(model, batch):
        log_probs, reference, pairs = response_log_probs(model, batch), batch["reference"], len(batch["reference"]) // 2
        return dpo_loss(log_probs[:pairs], log_probs[pairs:], reference[:pairs], reference[pairs:], settings["dpo_beta"])

    model = qwen_decoder(1)  # measured as it is for full SFT, then with LoRA adapters (added in place) for LoRA SFT and DPO
    full = _qwen_training(lab, f"full SFT of Qwen2.5-0.5B, {sft_shape} (base model on the GPU too)", model, None, sft_loss,
                          sft_batch, settings["sft_micro_batch_size"], 1, settings, 1)
    model = lora_qwen(model, settings)
    lora = _qwen_training(lab, f"LoRA SFT of Qwen2.5-0.5B, {sft_shape} (base and full SFT models on the GPU too)", model,
                          settings, sft_loss, sft_batch, settings["sft_micro_batch_size"], 1, settings, 2)
    dpo = _qwen_training(lab, f"DPO of LoRA adapters, {settings['dpo_batch_size']} pairs of {length} tokens, "
                              f"{settings['dpo_micro_batch_size']} per pass{checkpointing} (base, full and LoRA SFT models on the GPU too)",
                         model, settings, dpo_step_loss, dpo_batch, settings["dpo_micro_batch_size"], 2, settings, 3)
    # The KL of the DPO model to the SFT model (token_kl_to_reference): the largest of the evaluations, counted from its code.
    batch, model_weights = settings["eval_batch_size"], full.weights // 2
    kl = MemoryEstimate(lab, f"KL of the DPO model to the SFT model, batch {batch} × {length} tokens (4 models on the GPU)", "fp32",
                        4 * model_weights, activations=KL_TENSORS_PER_LOGIT * FLOAT32_BYTES * batch * (length - 1) * vocab,
                        notes=("counted from token_kl_to_reference's code, not measured",))
    return [full, lora, dpo, kl]


ESTIMATORS: dict[str, Callable[[dict], list[MemoryEstimate]]] = {
    "01_what_is_an_llm": _lab01,
    "02_attention": _lab02,
    "03_pretraining": _lab03,
    "04_fine_tuning": _lab04,
    "04b_instruction_tuning": _lab04b,
    "05_inference": _lab05,
    "06_business": _lab06,
}


@functools.lru_cache(maxsize=None)
def gpu_memory_estimates(lab: str) -> tuple[MemoryEstimate, ...]:
    """Every part of ``lab`` that runs on the GPU at the gpu preset, estimated (see the module docstring)."""
    if lab not in ESTIMATORS:
        raise KeyError(f"no GPU memory estimate for lab {lab!r}; labs with one: {', '.join(sorted(ESTIMATORS))} "
                       "(add an entry to llmlab.memory.ESTIMATORS)")
    threads = torch.get_num_threads()
    # One thread: the counts do not depend on it, and the many small operations of generation run several times
    # faster on one thread than on two that other processes share.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():  # building models draws random numbers; the lab's own seeds stay as they were
            return tuple(ESTIMATORS[lab](lab_settings(lab, "gpu")))
    finally:
        torch.set_num_threads(threads)


def gpu_memory_estimate(lab: str) -> MemoryEstimate:
    """The part of ``lab`` that needs the most GPU memory at the gpu preset."""
    return max(gpu_memory_estimates(lab), key=lambda estimate: estimate.total)



def main() -> None:
    """Measure every lab in ESTIMATORS and print its entry for ``llmlab.memory_records.RECORDED_MIB``, every part of
    each lab, and the seconds it took."""
    import importlib.metadata
    import time

    versions = {name: importlib.metadata.version(name).split("+")[0] for name in RECORDED_WITH}
    print(f"RECORDED_WITH = {versions!r}")
    print("RECORDED_MIB = {")
    report = []
    for lab in ESTIMATORS:
        started = time.perf_counter()
        estimates = gpu_memory_estimates(lab)
        seconds = time.perf_counter() - started
        print(f"    {lab!r}: {recorded_entry(gpu_memory_estimate(lab))!r},")
        report.append(f"{lab} ({seconds:.1f} s to measure):")
        report += [f"  {estimate.total_gib:5.2f} GiB  {estimate.part}" for estimate in estimates]
    print("}")
    print("\n".join(report))


if __name__ == "__main__":
    main()
