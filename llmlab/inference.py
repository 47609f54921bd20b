"""Inference, measured (Chapter 5, Lab 5): how fast tokens come, what batching and int8 weights change.

- ``ms_per_token``: generation time per token, with or without the KV cache;
- ``prefill_and_decode``: the two phases of a request timed apart;
- ``batch_throughput``: tokens per second against the number of texts generated at once;
- ``memory_bound_tokens_per_second``: the ceiling that reading the weights and each text's KV cache
  once per step sets; ``kv_bytes_per_token``, the cache's bytes per token; ``memory_needed_bytes`` and
  ``fits_in_memory``, whether weights and caches fit in a GPU's memory;
- ``measure_read_bandwidth`` and ``measure_matmul_flops``: the machine's memory bandwidth and arithmetic
  rate, measured; ``weight_bytes``: the bytes of a model's weights; ``prefilled_cache`` and
  ``decode_sweep``: decode steps of a model far larger than the caches, timed against the bound;
- ``bfloat16_copy`` and ``torchao_weight_only_copy``: 16-bit weights, and torchao's weight-only int8
  and int4 (an optional library, imported only when asked for); ``relative_logit_error``;
- ``speed_rows``: ms/token with and without the cache for several lengths (what Lab 5 plots and the benchmark prints);
- ``time_in_turn``: several candidates timed in turn, so that a busy machine slows them alike;
- ``int8_copy`` and ``saved_megabytes``: dynamic int8 quantisation of the linear layers, and size on disk;
  ``int8_intent_classifier`` does the same for Lab 4's classifier;
- ``lab3_model``: Lab 3's GPT from its checkpoint when that was written with the same preset, else trained anew;
- ``continuation_log_probability``: how likely a model finds a text it generated (greedy against beam search);
- ``benchmark``: what ``python -m llmlab.bench generate`` prints.

Every timing is a median of repeated runs (``llmlab.runtime.measure_seconds`` or ``time_in_turn``)
on the machine at hand; the functions say what was measured, never what a datasheet promises.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmlab.generation import Decoding, generate, generate_batch
from llmlab.model import GPT, GPTConfig
from llmlab.presets import lab_settings
from llmlab.runtime import describe_machine, measure_seconds, pick_device, shown_path

GREEDY = Decoding("greedy")

# Peak memory bandwidth from NVIDIA's datasheets, bytes per second: T4 320 GB/s (GDDR6),
# H100 SXM 3.35 TB/s (HBM3). Decoding one token reads every weight once, so this caps its speed.
DATASHEET_BANDWIDTH = {"T4": 320e9, "H100 SXM": 3.35e12}
# Memory from the same datasheets, bytes: T4 16 GB, H100 SXM 80 GB, counted as 10^9 bytes each.
DATASHEET_MEMORY = {"T4": 16e9, "H100 SXM": 80e9}


def random_prompt(length: int, vocab_size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """(batch, length) random token ids: speed does not depend on which tokens they are."""
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def ms_per_token(model: GPT, prompt_length: int, new_tokens: int, use_cache: bool, repeats: int = 3) -> float:
    """Milliseconds per generated token (greedy, batch 1), prompt processing included, median of ``repeats`` runs."""
    prompt = random_prompt(prompt_length, model.config.vocab_size)[0]
    device = next(model.parameters()).device
    seconds = measure_seconds(lambda: generate(model, prompt, new_tokens, GREEDY, use_cache=use_cache), device, repeats, warmup=1)
    return 1000 * seconds / new_tokens


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def prefill_and_decode(model: GPT, prompt_length: int, new_tokens: int, batch: int = 1, repeats: int = 3) -> dict[str, float]:
    """Milliseconds for the prefill (the whole prompt at once) and per decode step (one token per text), with the cache.

    Each repeat prefills a fresh cache and then runs ``new_tokens`` decode steps; the two phases are
    timed apart and the medians over ``repeats`` are reported (after one untimed warm-up run).
    """
    device = next(model.parameters()).device
    model.eval()
    prompt = random_prompt(prompt_length, model.config.vocab_size, batch).to(device)
    step = random_prompt(1, model.config.vocab_size, batch).to(device)
    prefill_times, decode_times = [], []
    for attempt in range(repeats + 1):
        cache = model.new_cache(batch, prompt_length + new_tokens)
        _synchronize(device)
        started = time.perf_counter()
        model(prompt, cache=cache)
        _synchronize(device)
        prefilled = time.perf_counter()
        for _ in range(new_tokens):
            model(step, cache=cache)
        _synchronize(device)
        if attempt:  # the first run warms up
            prefill_times.append(prefilled - started)
            decode_times.append(time.perf_counter() - prefilled)
    prefill_seconds, decode_seconds = float(np.median(prefill_times)), float(np.median(decode_times))
    return {"prefill_ms": 1000 * prefill_seconds, "decode_ms_per_step": 1000 * decode_seconds / new_tokens,
            "prompt_tokens_per_second": batch * prompt_length / prefill_seconds,
            "generated_tokens_per_second": batch * new_tokens / decode_seconds}


def batch_throughput(model: GPT, batch_sizes: list[int], prompt_length: int, new_tokens: int, repeats: int = 3) -> list[dict]:
    """Generated tokens per second and seconds per step for each batch size (prompts of different lengths, left-padded)."""
    device = next(model.parameters()).device
    rows = []
    for batch in batch_sizes:
        # prompt lengths spread between half and all of prompt_length, so the batch needs padding
        prompts = [random_prompt(max(1, prompt_length // 2 + (i * prompt_length) // (2 * batch)), model.config.vocab_size, seed=i)[0]
                   for i in range(batch)]
        seconds = measure_seconds(lambda: generate_batch(model, prompts, new_tokens, GREEDY), device, repeats, warmup=1)
        rows.append({"batch": batch, "tokens_per_second": batch * new_tokens / seconds, "ms_per_step": 1000 * seconds / new_tokens})
    return rows


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, bytes_per_value: float = 2) -> float:
    """Bytes of KV cache one token of one text holds: 2 (K and V) × layers × KV heads × head dim × bytes per value.

    Llama 2 7B (32 layers, 32 KV heads of 128, 16 bits) holds 524,288 bytes per token; Mistral 7B and
    Llama 3 8B share each of 8 KV heads among 4 query heads (grouped-query attention) and hold a quarter.
    """
    if min(n_layers, n_kv_heads, head_dim) < 1 or bytes_per_value <= 0:
        raise ValueError(f"need positive layers, KV heads, head dim and bytes per value, got {n_layers}, "
                         f"{n_kv_heads}, {head_dim} and {bytes_per_value}")
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value


def memory_bound_tokens_per_second(model_bytes: float, bandwidth_bytes_per_second: float, batch: int = 1,
                                   context_tokens: float = 0, kv_bytes_per_token: float = 0) -> float:
    """The most tokens per second decoding can produce if each step must read, from memory, all
    weights once and every text's KV cache:

        tokens/s <= batch × bandwidth / (model bytes + batch × context tokens × KV bytes per token).

    One step makes one token for each of ``batch`` texts. It reads the weights once for all of them,
    which is why batching raises throughput; but each text attends over its own cache of
    ``context_tokens`` tokens, so those bytes grow with the batch and the gain shrinks. With the
    defaults (no cache) this is the weights-only bound ``batch × bandwidth / model bytes``, an
    upper bound for short texts. Whether the batch fits in memory at all is ``fits_in_memory``.
    """
    if model_bytes <= 0 or bandwidth_bytes_per_second <= 0 or batch < 1:
        raise ValueError(f"need positive model bytes and bandwidth and batch >= 1, got {model_bytes}, "
                         f"{bandwidth_bytes_per_second} and {batch}")
    if context_tokens < 0 or kv_bytes_per_token < 0:
        raise ValueError(f"need context tokens and KV bytes per token >= 0, got {context_tokens} "
                         f"and {kv_bytes_per_token}")
    bytes_per_step = model_bytes + batch * context_tokens * kv_bytes_per_token
    return batch * bandwidth_bytes_per_second / bytes_per_step


def memory_needed_bytes(model_bytes: float, batch: int = 1, max_context_tokens: float = 0,
                        kv_bytes_per_token: float = 0) -> float:
    """Bytes of the weights plus the KV caches of ``batch`` texts at their longest (``max_context_tokens``)."""
    if model_bytes <= 0 or batch < 1 or max_context_tokens < 0 or kv_bytes_per_token < 0:
        raise ValueError(f"need positive model bytes, batch >= 1 and non-negative context and KV bytes, got "
                         f"{model_bytes}, {batch}, {max_context_tokens} and {kv_bytes_per_token}")
    return model_bytes + batch * max_context_tokens * kv_bytes_per_token


def fits_in_memory(model_bytes: float, memory_bytes: float, batch: int = 1, max_context_tokens: float = 0,
                   kv_bytes_per_token: float = 0) -> bool:
    """Whether weights + batch × max context × KV bytes per token fit in ``memory_bytes`` of GPU memory.

    A necessary condition only: activations, the runtime and fragmentation need memory too.
    """
    if memory_bytes <= 0:
        raise ValueError(f"need positive memory, got {memory_bytes}")
    return memory_needed_bytes(model_bytes, batch, max_context_tokens, kv_bytes_per_token) <= memory_bytes


READ_BANDWIDTH_METHOD = ("the median time torch.sum takes over a float32 array of {megabytes:,.0f} MB (after one "
                         "untimed pass), with {threads} thread(s): the sum reads every byte once and does one add per "
                         "4 bytes, far below what the processor can compute, so bytes / seconds is the rate memory "
                         "delivers them; the array must be far larger than the caches for that to be main memory")


def measure_read_bandwidth(megabytes: float = 512, repeats: int = 5, device: torch.device | str = "cpu") -> dict:
    """Bytes per second that ``device`` reads from its memory, measured, with the method that measured it.

    A float32 array of ``megabytes`` MB (10^6 bytes) is summed ``repeats`` times after one untimed
    pass; the bandwidth is its bytes divided by the median time. Summing is what a decode step does
    to its weights at batch 1: every byte is read once and used for about one operation. Only an
    array far larger than the processor's caches measures main memory; a small one measures a cache.
    """
    if megabytes <= 0 or repeats < 1:
        raise ValueError(f"need positive megabytes and repeats >= 1, got {megabytes} and {repeats}")
    device = torch.device(device)
    array = torch.ones(max(1, int(megabytes * 1e6 / 4)), device=device)
    seconds = measure_seconds(lambda: array.sum(), device, repeats, warmup=1)
    size = array.numel() * array.element_size()
    threads = torch.get_num_threads() if device.type == "cpu" else "GPU"
    return {"bytes_per_second": size / seconds, "megabytes": size / 1e6, "seconds": seconds, "threads": threads,
            "method": READ_BANDWIDTH_METHOD.format(megabytes=size / 1e6, threads=threads)}


def measure_matmul_flops(size: int = 1024, repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """Floating-point operations per second of one float32 matrix product (size × size by size × size), measured.

    A product of two large square matrices does ``size`` multiply-adds per number it reads, so its
    speed is set by arithmetic, not memory: the other roof of the roofline, on this machine.
    """
    if size < 1 or repeats < 1:
        raise ValueError(f"need size >= 1 and repeats >= 1, got {size} and {repeats}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    return 2 * size ** 3 / measure_seconds(lambda: left @ right, device, repeats, warmup=1)


def largest_cpu_cache_bytes() -> int | None:
    """Bytes of this CPU's largest cache (the last level) as Linux reports it, or None where it does not."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes) if sizes else None


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters, a tied matrix once: what a decode step reads at batch 1 (its buffers aside)."""
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


def prefilled_cache(model: GPT, batch: int, context_tokens: int, max_tokens: int, seed: int = 0):
    """A KV cache for ``batch`` texts of up to ``max_tokens`` tokens that already holds ``context_tokens`` of each.

    The keys and values are random numbers, not a real prefill: a decode step's time depends on
    how many positions it reads, not on their values, and a real prefill of long prompts at a large
    batch would take a CPU minutes.
    """
    if not 0 <= context_tokens < max_tokens:
        raise ValueError(f"need 0 <= context_tokens < max_tokens, got {context_tokens} and {max_tokens}")
    cache = model.new_cache(batch, max_tokens)
    generator = torch.Generator(device=cache.keys.device).manual_seed(seed)
    for layer in range(model.config.n_layers):  # layer by layer, so no full-size temporary is made
        for stored in (cache.keys[layer, :, :, :context_tokens], cache.values[layer, :, :, :context_tokens]):
            stored.normal_(generator=generator)
    cache.advance(context_tokens)
    return cache


@torch.no_grad()
def decode_sweep(model: GPT, batch_sizes: list[int], context_tokens: int, steps: int, repeats: int = 3,
                 bandwidth_megabytes: float = 512, model_bytes: float | None = None) -> list[dict]:
    """Decode steps timed at each batch size against the memory-bound ceiling, with the bandwidth measured in turn.

    For each batch: a cache holding ``context_tokens`` positions of every text (``prefilled_cache``),
    then ``repeats`` rounds (after one warm-up round) of: sum an array of ``bandwidth_megabytes`` MB
    (``measure_read_bandwidth``'s method), then ``steps`` decode steps, each timed on its own, the cache
    rewound to ``context_tokens`` after each round. Reported: the median step, the median bandwidth
    of the rounds (measured next to the steps, so that other work on the machine weighs on both),
    the weights-only ceiling and the KV-aware one, which also reads every text's cache (for the mean
    number of positions a step attended over), and the measured tokens/s as a share of the latter.
    ``model_bytes`` (default: ``weight_bytes(model)``) gives the weights' bytes where parameters do not
    hold them all (a quantised copy keeps its weights in packed form).
    """
    if min(batch_sizes) < 1 or steps < 1 or repeats < 1:
        raise ValueError(f"need batch sizes >= 1, steps >= 1 and repeats >= 1, got {batch_sizes}, {steps} and {repeats}")
    model.eval()
    device = next(model.parameters()).device
    array = torch.ones(max(1, int(bandwidth_megabytes * 1e6 / 4)), device=device)
    array_bytes = array.numel() * array.element_size()
    model_bytes = weight_bytes(model) if model_bytes is None else model_bytes
    d_head = model.config.d_model // model.config.n_heads
    cache_bytes = kv_bytes_per_token(model.config.n_layers, model.config.n_heads, d_head, array.element_size())
    mean_context = context_tokens + (steps + 1) / 2  # the positions attended over, averaged over the steps
    rows = []
    for batch in batch_sizes:
        cache = prefilled_cache(model, batch, context_tokens, context_tokens + steps)
        tokens = random_prompt(1, model.config.vocab_size, batch).to(device)
        step_seconds, read_seconds = [], []
        for attempt in range(repeats + 1):
            _synchronize(device)
            started = time.perf_counter()
            array.sum()
            _synchronize(device)
            read = time.perf_counter() - started
            cache.length = context_tokens  # rewind: the next steps overwrite the positions after it
            for _ in range(steps):
                started = time.perf_counter()
                model(tokens, cache=cache)
                _synchronize(device)
                if attempt:  # the first round warms up
                    step_seconds.append(time.perf_counter() - started)
            if attempt:
                read_seconds.append(read)
        del cache
        seconds, bandwidth = float(np.median(step_seconds)), array_bytes / float(np.median(read_seconds))
        bound = memory_bound_tokens_per_second(model_bytes, bandwidth, batch, mean_context, cache_bytes)
        rows.append({"batch": batch, "ms_per_step": 1000 * seconds, "tokens_per_second": batch / seconds,
                     "bandwidth_bytes_per_second": bandwidth, "context_tokens": mean_context,
                     "weights_only_bound": memory_bound_tokens_per_second(model_bytes, bandwidth, batch),
                     "kv_aware_bound": bound, "share_of_bound": batch / seconds / bound,
                     "bytes_per_step": model_bytes + batch * mean_context * cache_bytes})
    return rows


@torch.no_grad()
def decode_in_turn(models: dict[str, GPT], context_tokens: int, steps: int, repeats: int = 3,
                   bandwidth_megabytes: float = 512) -> dict:
    """Milliseconds per decode step at batch 1 of each model, the models timed in turn with a memory read.

    Each model gets a cache holding ``context_tokens`` positions (``prefilled_cache``); every round
    (``time_in_turn``, one warm-up round) sums an array of ``bandwidth_megabytes`` MB and runs
    ``steps`` decode steps of each model, so that other work on the machine slows all of them alike.
    Returns ``{"ms_per_step": {name: ms}, "bandwidth_bytes_per_second": bytes/s of the sum}``; the models
    must be on one device.
    """
    device = next(next(iter(models.values())).parameters()).device
    array = torch.ones(max(1, int(bandwidth_megabytes * 1e6 / 4)), device=device)
    caches = {name: prefilled_cache(model.eval(), 1, context_tokens, context_tokens + steps)
              for name, model in models.items()}
    token = random_prompt(1, next(iter(models.values())).config.vocab_size).to(device)

    def run_steps(name: str) -> None:
        caches[name].length = context_tokens  # rewind: the steps overwrite the positions after it
        for _ in range(steps):
            models[name](token, cache=caches[name])

    functions = {"memory read": lambda: array.sum()} | {name: (lambda name=name: run_steps(name)) for name in models}
    seconds = time_in_turn(functions, device, repeats)
    return {"ms_per_step": {name: 1000 * seconds[name] / steps for name in models},
            "bandwidth_bytes_per_second": array.numel() * array.element_size() / seconds["memory read"]}


def decode_flops_per_token(model: GPT, context_tokens: float) -> float:
    """Floating-point operations to decode one token: 2 per weight of the blocks and output layer (a
    multiply and an add), plus attention's 4 × layers × context × width (scores and weighted sum).

    The embedding is a lookup, not a product, so it is left out unless the output layer shares it.
    """
    config = model.config
    embedding = model.token_embedding.weight.numel()
    products = model.parameter_count() - (0 if config.tie_weights else embedding)
    if getattr(model, "position_embedding", None) is not None:
        products -= model.position_embedding.weight.numel()
    return 2 * products + 4 * config.n_layers * context_tokens * config.d_model


def bfloat16_copy(model: nn.Module) -> nn.Module:
    """A copy with every weight (and so every activation and the KV cache) in bfloat16: half the bytes of float32."""
    return copy.deepcopy(model).to(torch.bfloat16).eval()


TORCHAO_VERSION = "0.18.0"  # the release the course ran; each torchao release supports a narrow range of torch versions


def _import_torchao():
    """torchao's ``quantize_`` and the configurations used here, or a one-line ImportError saying how to install it."""
    try:
        # torchao logs at import that its CUDA-only kernels cannot load (true, and harmless, on a CPU
        # build of torch) and trips a torch deprecation notice; neither concerns the CPU paths used here.
        quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
        levels = [logger.level for logger in quiet]
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        try:
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        finally:
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)
    except ImportError as error:
        raise ImportError(f"torchao's weight-only quantisation is not available ({error}): "
                          f"pip install torchao=={TORCHAO_VERSION} (for torch {torch.__version__.split('+')[0]}; "
                          "other torch versions need their own torchao release)") from None
    return quantize_, Int8WeightOnlyConfig, PrototypeInt4WeightOnlyConfig


def torchao_weight_only_copy(model: nn.Module, bits: int, group_size: int = 128) -> nn.Module:
    """A copy whose transformer blocks' linear layers hold torchao weight-only int8 or int4 weights (on the CPU).

    Weight-only: the weights are stored in ``bits`` bits with scales, the activations stay in floating
    point, and the layer turns the weights back into floating point to multiply. int8 keeps one scale
    per output row (``Int8WeightOnlyConfig``); int4 keeps one scale and zero point per ``group_size``
    weights of a row and runs PyTorch's CPU int4 kernel (``_weight_int4pack_mm_for_cpu``, torchao's
    ``PrototypeInt4WeightOnlyConfig``). The int4 copy is in bfloat16 elsewhere (activations, norms,
    embedding and cache; the kernel takes float32 activations too). The output layer and the
    embedding stay as they are (in Lab 5's large model the output layer is tied to the embedding).
    Needs the optional ``torchao`` package (one-line ImportError without it).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    quantize_, Int8WeightOnlyConfig, PrototypeInt4WeightOnlyConfig = _import_torchao()
    quantised = copy.deepcopy(model).cpu().eval()
    if bits == 4:
        quantised = quantised.to(torch.bfloat16)
    config = Int8WeightOnlyConfig() if bits == 8 else PrototypeInt4WeightOnlyConfig(group_size=group_size)
    in_blocks = lambda module, name: isinstance(module, nn.Linear) and name.startswith("blocks.")  # noqa: E731
    quantize_(quantised, config, filter_fn=in_blocks)
    # torchao leaves a layer whose shape its kernel cannot take (int4: width not a multiple of group_size) as it
    # was, without an error; a copy that is partly float must not be reported as int4, so that is checked here.
    for name, module in quantised.named_modules():
        if name.startswith("blocks.") and isinstance(module, nn.Linear) and type(module.weight) in (torch.Tensor, nn.Parameter):
            raise ValueError(f"torchao left {name} ({module.in_features} → {module.out_features}) unquantised at "
                             f"{bits} bits with group_size {group_size}: widths must be multiples of it")
    return quantised


@torch.no_grad()
def relative_logit_error(reference: nn.Module, other: nn.Module, tokens: torch.Tensor) -> float:
    """||other's logits − reference's|| / ||reference's logits|| on ``tokens`` (batch, n), both on the CPU in float32."""
    expected = reference(tokens).float()
    return float((other(tokens).float() - expected).norm() / expected.norm())


def int8_copy(model: nn.Module) -> nn.Module:
    """A copy whose linear layers hold int8 weights and quantise their inputs on the fly (dynamic quantisation).

    Each weight matrix is stored as 8-bit integers and a scale; at run time each input batch is
    scaled to 8 bits too, the product is computed in integers and scaled back. Only ``nn.Linear``
    layers change; embeddings, norms and the attention arithmetic stay in float32. PyTorch marks
    this eager-mode API as deprecated in favour of the ``torchao`` package, but it still runs on
    every CPU build the course supports, so its warnings are silenced here.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def saved_megabytes(model: nn.Module) -> float:
    """Size of the model's saved weights (``torch.save`` of its state dict), in MB (10^6 bytes)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def time_in_turn(functions: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3,
                 warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each function, calling them in turn within every repeat (after ``warmup`` untimed rounds).

    Timing the candidates in turn rather than one after the other means that a machine busy with
    other work slows them alike, so their ratio stays meaningful even when the absolute times do not.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for attempt in range(warmup + repeats):
        for name, function in functions.items():
            _synchronize(device)
            started = time.perf_counter()
            function()
            _synchronize(device)
            if attempt >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return {name: float(np.median(times)) for name, times in seconds.items()}


def speed_rows(model: GPT, prompt_length: int, lengths: list[int], repeats: int = 3) -> list[dict]:
    """For each number of generated tokens: ms/token with the cache, without it, and the ratio (greedy, batch 1).

    The two loops are timed in turn (``time_in_turn``) on the same random prompt.
    """
    device = next(model.parameters()).device
    prompt = random_prompt(prompt_length, model.config.vocab_size)[0]
    rows = []
    for new_tokens in lengths:
        seconds = time_in_turn({use_cache: lambda use_cache=use_cache: generate(model, prompt, new_tokens, GREEDY, use_cache=use_cache)
                                for use_cache in (True, False)}, device, repeats)
        rows.append({"new_tokens": new_tokens, "cache_ms": 1000 * seconds[True] / new_tokens,
                     "no_cache_ms": 1000 * seconds[False] / new_tokens, "cache_speedup": seconds[False] / seconds[True]})
    return rows


def int8_intent_classifier(classifier):
    """Lab 4's ``IntentClassifier`` with its encoder's linear layers and its head quantised to int8.

    A copy, on the CPU; the original is untouched. The word embeddings stay in float32.
    """
    from llmlab.intents import IntentClassifier

    model = int8_copy(classifier.model)
    return IntentClassifier(classifier.intents, model, classifier.tokenizer, classifier.recipe, classifier.max_length,
                            classifier.training_seconds, classifier.trainable_parameters)


@torch.no_grad()
def continuation_log_probability(model: GPT, tokens: torch.Tensor, prompt_length: int) -> float:
    """The model's total log-probability (natural log) of ``tokens[prompt_length:]`` given what comes before each.

    ``tokens`` (1-D) must fit the model's context, so that every token is scored with all of the text before it.
    """
    tokens = torch.as_tensor(tokens).view(-1)
    if not 1 <= prompt_length <= len(tokens) or len(tokens) > model.context:
        raise ValueError(f"need 1 <= prompt_length ({prompt_length}) <= {len(tokens)} tokens <= the context ({model.context})")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    log_probabilities = torch.log_softmax(model(tokens.to(device).view(1, -1)).float(), dim=-1)[0]
    model.train(was_training)
    targets = tokens[prompt_length:].to(device)
    return float(log_probabilities[prompt_length - 1:-1].gather(-1, targets.view(-1, 1)).sum())


def checkpoint_header(path) -> dict:
    """The JSON header of an ``llmlab`` checkpoint (its step and metadata), read without loading any tensor."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["llmlab"])


def _as_run(run_settings: dict) -> dict:
    """Run settings as the run used them: pretrain clips at 1.0 when the settings name no clip_norm."""
    return {**run_settings, "clip_norm": 1.0 if run_settings.get("clip_norm") is None else run_settings["clip_norm"]}


def _why_not_loaded(path: Path, settings: dict, alphabet: str) -> str | None:
    """Why the checkpoint at ``path`` is not Lab 3's finished run with ``settings``; None when it is."""
    from llmlab.pretraining import run_settings

    if not path.is_file():
        return f"there is no checkpoint at {shown_path(path)}"
    header = checkpoint_header(path)
    saved = _as_run(header["metadata"].get("run_settings") or {})
    wanted = _as_run(run_settings(settings, seed=0))
    differences = [f"{key} {saved.get(key)!r} there, {wanted.get(key)!r} here" for key in sorted(set(saved) | set(wanted))
                   if saved.get(key) != wanted.get(key)]
    if differences:
        return f"{shown_path(path)} was written with other settings ({'; '.join(differences[:3])})"
    if header["step"] < settings["steps"]:
        return f"{shown_path(path)} holds step {header['step']} of {settings['steps']}, an unfinished run"
    if header["metadata"].get("alphabet") != alphabet:
        return f"{shown_path(path)} was trained on another alphabet"
    return None


def lab3_model(preset: str, device: torch.device, corpus, checkpoint_path) -> tuple[GPT, str]:
    """Lab 3's character GPT for ``preset`` and a sentence that says where it came from.

    The checkpoint is loaded only if Lab 3's run with the same preset wrote it (the same run
    settings, seed 0, every step done, the same alphabet); otherwise the model is trained here
    with ``pretrain`` and Lab 3's settings for ``preset``, and the sentence gives the reason.
    """
    from llmlab.checkpoint import load_checkpoint
    from llmlab.pretraining import model_config, pretrain

    settings = lab_settings("03_pretraining", preset)
    path = Path(checkpoint_path)
    reason = _why_not_loaded(path, settings, corpus.tokenizer.alphabet)
    if reason is None:
        model = GPT(model_config(settings, corpus.tokenizer.vocab_size))
        step, _, _ = load_checkpoint(path, model)
        return model.to(device).eval(), f"loaded Lab 3's '{preset}' model from {shown_path(path)} (step {step} of {settings['steps']})"
    model, history, _ = pretrain(settings, device, corpus, description=f"Lab 3's model ({preset})")
    return model.eval(), (f"trained Lab 3's '{preset}' model here ({settings['steps']} steps, {history.eval_seconds[-1]:.0f} s) "
                          f"because {reason}")


def benchmark_model(settings: dict) -> GPT:
    """The model ``benchmark`` times: the preset's GPT shape, GPT-2 style (learned positions, biases) so that Hugging Face runs it too."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=settings["bench_vocab"], context=settings["bench_prompt"] + max(settings["bench_new_tokens"]),
                       d_model=settings["bench_d_model"], n_heads=settings["bench_heads"], n_layers=settings["bench_layers"],
                       rotary=False, bias=True)
    return GPT(config).eval()


def benchmark(preset: str) -> dict:
    """ms/token with and without the KV cache, and Hugging Face ``generate`` on the same weights (batch 1, greedy, cache on)."""
    from llmlab.hf_bridge import to_gpt2_lm_head_model

    settings = lab_settings("05_inference", preset)
    device = pick_device()
    model = benchmark_model(settings).to(device)
    gpt2 = to_gpt2_lm_head_model(model.cpu()).to(device)
    model.to(device)
    prompt_length, repeats = settings["bench_prompt"], settings["bench_repeats"]
    print(f"bench generate | preset {preset} | {describe_machine(device)} | {model.parameter_count():,} parameters "
          f"({model.config.n_layers} layers × {model.config.d_model}) | prompt {prompt_length} tokens, greedy, batch 1")
    rows = speed_rows(model, prompt_length, settings["bench_new_tokens"], repeats)
    for row in rows:
        new_tokens = row["new_tokens"]
        prompt = random_prompt(prompt_length, model.config.vocab_size)[0]
        ours = generate(model, prompt, new_tokens, GREEDY, use_cache=True)
        hf_options = dict(attention_mask=torch.ones(1, prompt_length, dtype=torch.long, device=device), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
        theirs = gpt2.generate(prompt.view(1, -1).to(device), **hf_options)[0].cpu()
        row["hf_ms"] = 1000 * measure_seconds(lambda: gpt2.generate(prompt.view(1, -1).to(device), **hf_options),
                                              device, repeats, warmup=1) / new_tokens
        row["same_tokens_as_hf"] = bool(torch.equal(ours, theirs))
    print(f"{'new tokens':>10} {'cache ms/token':>15} {'no cache ms/token':>18} {'speed-up':>9} {'HF generate ms/token':>21} {'same tokens':>12}")
    for row in rows:
        print(f"{row['new_tokens']:>10} {row['cache_ms']:>15.3f} {row['no_cache_ms']:>18.3f} {row['cache_speedup']:>8.1f}x "
              f"{row['hf_ms']:>21.3f} {str(row['same_tokens_as_hf']):>12}")
    report = {"preset": preset, "machine": describe_machine(device), "parameters": model.parameter_count(), "rows": rows}
    print(json.dumps(report))
    return report
