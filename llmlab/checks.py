"""Self-checks a learner runs on their own code.

Each ``check_*`` function tests an implementation against a reference on random
inputs and returns a :class:`CheckResult`, which shows as one line: a pass line,
or what exactly is wrong. A wrong answer, a shape error or an exercise not yet
done never raises, so the notebook keeps running. The same functions serve the
instructors' grader: ``result.passed`` is a bool and ``result.exercise`` the id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from llmlab import attention as reference


@dataclass
class CheckResult:
    exercise: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"[{mark}] {self.exercise}: {self.message}"


class _Mismatch(Exception):
    """Raised inside a check with the sentence that tells the learner what is wrong."""


def _run(exercise: str, body: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(exercise, True, body())
    except _Mismatch as problem:
        return CheckResult(exercise, False, str(problem))
    except NotImplementedError:
        return CheckResult(exercise, False, "not implemented yet: replace the `raise NotImplementedError` line with your code")
    except Exception as error:  # any crash in learner code becomes a readable line, never a dead kernel
        return CheckResult(exercise, False, f"your code raised {type(error).__name__}: {error}")


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def _expect_tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise _Mismatch(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    return value


def _expect_shape(value: torch.Tensor, shape: tuple, what: str, hint: str = "") -> None:
    if tuple(value.shape) != tuple(shape):
        raise _Mismatch(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}" + (f" ({hint})" if hint else ""))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tolerance = 1e-9 if a.dtype == torch.float64 else 2e-5
    return torch.allclose(a, b.to(a.dtype), atol=tolerance, rtol=tolerance)


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# --- Exercise: scaled dot-product attention -------------------------------------------------


def check_scaled_dot_product_attention(fn: Callable, exercise: str = "scaled_dot_product_attention") -> CheckResult:
    """fn(q, k, v, mask=None) -> (output, weights), compared with torch's scaled_dot_product_attention."""

    def body() -> str:
        generator = torch.Generator().manual_seed(0)
        cases = [((2, 3, 5, 5, 8, 8), False), ((1, 2, 4, 7, 16, 6), False), ((2, 1, 6, 6, 4, 4), True), ((3, 4, 3, 9, 8, 5), True)]
        for device in _devices():
            for dtype in (torch.float64, torch.float32):
                for (batch, heads, n_q, n_k, d_k, d_v), masked in cases:
                    q = torch.randn(batch, heads, n_q, d_k, generator=generator, dtype=dtype).to(device)
                    k = torch.randn(batch, heads, n_k, d_k, generator=generator, dtype=dtype).to(device)
                    v = torch.randn(batch, heads, n_k, d_v, generator=generator, dtype=dtype).to(device)
                    mask = reference.causal_mask(n_q, n_k, device=device) if masked else None
                    originals = [t.clone() for t in (q, k, v)]
                    result = fn(q, k, v, mask) if masked else fn(q, k, v)
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise _Mismatch("return a pair (output, weights), e.g. `return weights @ v, weights`")
                    output, weights = (_expect_tensor(x, name) for x, name in zip(result, ("output", "weights")))
                    if any(not torch.equal(a, b) for a, b in zip(originals, (q, k, v))):
                        raise _Mismatch("your function changed q, k or v in place; compute new tensors instead")
                    _expect_shape(weights, (batch, heads, n_q, n_k), "weights", "one row per query, one column per key: q @ k.transpose(-2, -1)")
                    _expect_shape(output, (batch, heads, n_q, d_v), "output", "weights @ v")
                    if output.dtype != dtype or output.device.type != device.type:
                        raise _Mismatch(f"output is {output.dtype} on {output.device.type} for {dtype} inputs on {device.type}; keep the inputs' dtype and device")
                    if not torch.allclose(weights.sum(-1).double(), torch.ones(1, dtype=torch.float64, device=device), atol=1e-4):
                        raise _Mismatch("each row of weights should sum to 1: take the softmax over the keys (dim=-1)")
                    if masked and weights.masked_select(~mask).abs().max().item() > 0:
                        raise _Mismatch("masked positions get non-zero weight: set their scores to -inf *before* the softmax")
                    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    if not _close(output, expected):
                        unscaled = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
                        if _close(output, unscaled):
                            raise _Mismatch("output matches attention *without* the 1/sqrt(d_k) scale: divide the scores by sqrt(d_k)")
                        raise _Mismatch(f"output differs from torch's scaled_dot_product_attention by up to {_max_difference(output, expected):.2e}")
        devices = " and ".join(d.type for d in _devices())
        return f"matches torch.nn.functional.scaled_dot_product_attention on {len(cases) * 2} cases (float32/64, with and without a causal mask, on {devices})"

    return _run(exercise, body)


# --- Exercise: causal mask -----------------------------------------------------------------


def check_causal_mask(fn: Callable, exercise: str = "causal_mask") -> CheckResult:
    """fn(n) -> boolean (n, n) tensor, True where query i may attend to key j (j <= i)."""

    def body() -> str:
        for n in (5, 8, 2, 1):
            mask = _expect_tensor(fn(n), f"causal_mask({n})")
            _expect_shape(mask, (n, n), f"causal_mask({n})")
            if mask.dtype != torch.bool:
                raise _Mismatch(f"the mask should be a boolean tensor (True = may attend), got dtype {mask.dtype}")
            expected = torch.ones(n, n, dtype=torch.bool).tril()
            if torch.equal(mask.cpu(), expected):
                continue
            if torch.equal(mask.cpu(), expected.T):
                raise _Mismatch("your mask lets each position see the future and not the past: use the lower triangle (tril)")
            if torch.equal(mask.cpu(), ~expected):
                raise _Mismatch("True and False are swapped: True should mean 'may attend'")
            if torch.equal(mask.cpu(), expected.tril(-1)):
                raise _Mismatch("a position must also attend to itself: keep the diagonal")
            raise _Mismatch(f"causal_mask({n}) is not the lower-triangular matrix of ones")
        return "lower-triangular boolean mask, diagonal included, for n = 1, 2, 5 and 8"

    return _run(exercise, body)


# --- Exercise: rotary position embeddings ---------------------------------------------------


def _rotate_half_layout(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """RoPE with the pairs (x_i, x_{i+d/2}) that GPT-NeoX and LLaMA code use, to recognise that mix-up."""
    half = x.shape[-1] // 2
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def check_apply_rope(fn: Callable, exercise: str = "apply_rope") -> CheckResult:
    """fn(x, angles) -> x rotated pairwise; compared with llmlab.attention.apply_rope and the RoPE properties."""

    def body() -> str:
        generator = torch.Generator().manual_seed(1)
        for device in _devices():
            for dtype in (torch.float64, torch.float32):
                for shape in ((2, 3, 7, 8), (1, 1, 5, 16), (4, 6, 2)):
                    x = torch.randn(*shape, generator=generator, dtype=dtype).to(device)
                    angles = reference.rope_angles(shape[-2], shape[-1], device=device)
                    rotated = _expect_tensor(fn(x, angles), "the result")
                    _expect_shape(rotated, shape, "the result", "rotation keeps the shape")
                    if rotated.dtype != dtype:
                        raise _Mismatch(f"result is {rotated.dtype} for {dtype} input; keep the input's dtype")
                    expected = reference.apply_rope(x, angles)
                    if _close(rotated, expected):
                        continue
                    if _close(rotated, _rotate_half_layout(x, angles)):
                        raise _Mismatch("you rotate the pairs (x_i, x_{i+d/2}) (the 'rotate-half' layout of GPT-NeoX/LLaMA code); "
                                        "this lab pairs adjacent features (x_2i, x_2i+1) as the RoFormer paper does")
                    if _close(rotated, reference.apply_rope(x, -angles)):
                        raise _Mismatch("you rotate by -θ: the pair (a, b) should become (a·cos θ - b·sin θ, a·sin θ + b·cos θ)")
                    if not torch.allclose(rotated.norm(dim=-1).double(), x.norm(dim=-1).double(), atol=1e-4):
                        raise _Mismatch("a rotation keeps each vector's length, yours changes it: check the cos/sin formula")
                    raise _Mismatch(f"differs from the reference RoPE by up to {_max_difference(rotated, expected):.2e}")
        # The property that makes RoPE relative: <R_m q, R_n k> depends only on m - n.
        q, k = torch.randn(2, 1, 1, 16, generator=generator, dtype=torch.float64)
        angles = reference.rope_angles(32, 16)
        positions = [(3, 1), (12, 10), (30, 28)]
        dots = [(fn(q, angles[m:m + 1]) * fn(k, angles[n:n + 1])).sum().item() for m, n in positions]
        if max(dots) - min(dots) > 1e-4 * max(abs(d) for d in dots) + 1e-6:
            raise _Mismatch("q·k after rotation should depend only on the distance m - n, yours does not")
        return "matches the reference on float32/64 inputs, keeps lengths, and q·k depends only on the distance m - n"

    return _run(exercise, body)


# --- Exercise: multi-head self-attention ----------------------------------------------------


def check_multi_head_attention(attention_cls: Callable, exercise: str = "multi_head_attention") -> CheckResult:
    """attention_cls(d_model, n_heads, rotary=...) with the weights of llmlab's module copied in gives the same output."""

    def body() -> str:
        generator = torch.Generator().manual_seed(2)
        configurations = [(32, 4, False), (32, 1, False), (48, 6, True), (16, 2, True)]
        for d_model, n_heads, rotary in configurations:
            torch.manual_seed(0)
            expected_module = reference.MultiHeadSelfAttention(d_model, n_heads, rotary=rotary, max_positions=64).double()
            mine = attention_cls(d_model, n_heads, rotary=rotary, max_positions=64).double()
            try:
                mine.load_state_dict(expected_module.state_dict())
            except RuntimeError as error:
                raise _Mismatch(f"cannot copy the reference weights into your module (keep the given __init__): {error}".splitlines()[0])
            x = torch.randn(3, 9, d_model, generator=generator, dtype=torch.float64)
            output = _expect_tensor(mine(x), "the module's output")
            _expect_shape(output, x.shape, "the output", "attention maps (batch, n, d_model) to the same shape")
            expected = expected_module(x)
            if _close(output, expected):
                continue
            setting = f"d_model={d_model}, n_heads={n_heads}, rotary={rotary}"
            future = x.clone()
            future[:, -1] += 1.0  # changing the last token must not change any earlier output
            if not torch.allclose(mine(future)[:, :-1], output[:, :-1]):
                raise _Mismatch(f"({setting}) earlier positions change when a later token changes: apply the causal mask")
            raise _Mismatch(f"({setting}) output differs from the reference by up to {_max_difference(output, expected):.2e}; "
                            "check the head split (batch, n, heads, d_head) -> (batch, heads, n, d_head) and the merge back")
        return f"matches the reference module in {len(configurations)} configurations (1 to 6 heads, with and without RoPE), causal"

    return _run(exercise, body)


def check_against_gpt2(attention_cls: Callable, exercise: str = "multi_head_attention_vs_gpt2") -> CheckResult:
    """Your multi-head attention, given the weights of a Hugging Face GPT-2 block, reproduces that block."""

    def body() -> str:
        from llmlab.gpt2 import compare_with_gpt2_attention

        difference = compare_with_gpt2_attention(attention_cls, d_model=64, n_heads=4, n_positions=12)
        if not math.isfinite(difference) or difference > 1e-4:
            raise _Mismatch(f"output differs from the GPT-2 attention block by up to {difference:.2e}")
        return "reproduces the attention block of a transformers GPT-2 model with copied weights (max difference < 1e-4)"

    return _run(exercise, body)


# --- Lab 1: tokens, embeddings and a first language model --------------------------------


def _toy_corpora() -> list[dict]:
    """Small corpora of words as symbol tuples: hand-made traps (ties, repeats, counts) plus random ones."""
    import random

    corpora = [
        {("l", "o", "w"): 5, ("l", "o", "w", "e", "r"): 2, ("n", "e", "w", "e", "s", "t"): 6, ("w", "i", "d", "e", "s", "t"): 3},
        {("a", "a", "a"): 4, ("a", "b"): 1, ("b", "a", "a", "a", "a"): 2},  # "aaa": a merged pair may not overlap the next
        {("x", "y"): 1, ("x", "y", "z"): 1, ("z", "w"): 5},  # by word types (x, y) wins; weighted by counts (z, w) wins
        {("c", "d"): 2, ("a", "b"): 2},  # a tie: either pair is a correct choice
        {("t", "h", "e"): 3, ("th", "e", "n"): 1, ("t", "h", "en"): 2},  # symbols already merged earlier
    ]
    rng = random.Random(0)
    for _ in range(6):
        words = {}
        for _ in range(rng.randint(3, 8)):
            words[tuple(rng.choice("abcde") for _ in range(rng.randint(2, 7)))] = rng.randint(1, 9)
        corpora.append(words)
    return corpora


def check_bpe_merge_step(fn: Callable, exercise: str = "01.1 bpe_merge_step") -> CheckResult:
    """fn(words) -> (pair, merged_words): the most frequent adjacent pair, counted with word counts, merged everywhere."""
    from llmlab import tokenization as reference_bpe

    def body() -> str:
        corpora = _toy_corpora()
        for words in corpora:
            original = dict(words)
            result = fn(words)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise _Mismatch("return a pair (best_pair, merged_words), e.g. `return best, merged`")
            pair, merged = result
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise _Mismatch(f"the best pair should be a tuple of two symbols like ('l', 'o'), got {pair!r}")
            if not isinstance(merged, dict):
                raise _Mismatch(f"the merged corpus should be a dict {{word tuple: count}}, got {type(merged).__name__}")
            if words != original:
                raise _Mismatch("your function changed the input corpus in place; build a new dict instead")
            words = original
            counts = reference_bpe.pair_counts(words)
            best = max(counts.values())
            if counts.get(pair, 0) != best:
                unweighted = reference_bpe.pair_counts({symbols: 1 for symbols in words})
                if unweighted.get(pair, 0) == max(unweighted.values()):
                    raise _Mismatch(f"in {words} you picked {pair}, the most frequent pair if each word counts once; "
                                    "weight every pair by the count of the word it sits in")
                raise _Mismatch(f"in {words} you picked {pair} (seen {counts.get(pair, 0)} times), but the most frequent "
                                f"pair occurs {best} times: count adjacent pairs zip(symbols, symbols[1:]) in every word")
            expected = reference_bpe.merge_pair(words, pair)
            if merged != expected:
                if sum(merged.values()) != sum(expected.values()):
                    raise _Mismatch(f"merging {pair} in {words} changed the total word count ({sum(merged.values())} instead of "
                                    f"{sum(expected.values())}): keep every word and its count")
                overlapping = pair[0] == pair[1] and any(symbols[i:i + 3] == (pair[0],) * 3 for symbols in words for i in range(len(symbols)))
                if overlapping:
                    raise _Mismatch(f"merging {pair} in {words} gave {merged}, expected {expected}: after fusing a pair, "
                                    "jump past both symbols, so overlapping occurrences ('a','a','a') give ('aa','a')")
                raise _Mismatch(f"merging {pair} in {words} gave {merged}, expected {expected}")
        return f"picks a most frequent pair and merges it correctly on {len(corpora)} corpora (word counts, ties, overlaps)"

    return _run(exercise, body)


def check_cosine_similarity(fn: Callable, exercise: str = "01.2 cosine_similarity") -> CheckResult:
    """fn(a, b) with a (n, d) and b (m, d) -> (n, m) cosines, compared with torch's own."""

    def body() -> str:
        generator = torch.Generator().manual_seed(0)
        shapes = [(3, 4, 5), (1, 7, 384), (6, 1, 2), (5, 5, 16)]
        for n, m, d in shapes:
            scale_a = torch.rand(n, 1, generator=generator, dtype=torch.float64) * 5 + 0.1  # rows of different lengths
            a = torch.randn(n, d, generator=generator, dtype=torch.float64) * scale_a
            b = torch.randn(m, d, generator=generator, dtype=torch.float64) * 3
            result = _expect_tensor(fn(a.clone(), b.clone()), "the result")
            if tuple(result.shape) == (m, n) and n != m:
                raise _Mismatch(f"result has shape {(m, n)}, expected {(n, m)}: one row per row of a, i.e. a_normalised @ b_normalised.T")
            _expect_shape(result, (n, m), "the result", "one row per row of a, one column per row of b")
            expected = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1)
            if _close(result, expected):
                continue
            if _close(result, a @ b.T):
                raise _Mismatch("you return plain dot products; divide by the lengths of both vectors (or normalise the rows first)")
            if n > 1 and m > 1 and d > 1 and _close(result, F.normalize(a, dim=0) @ F.normalize(b, dim=0).T):
                raise _Mismatch("you normalised the columns; normalise each row (dim=1), one vector per row")
            raise _Mismatch(f"cosines differ from torch.nn.functional.cosine_similarity by up to {_max_difference(result, expected):.2e}")
        return f"matches torch.nn.functional.cosine_similarity on {len(shapes)} pairs of matrices, rows of any length"

    return _run(exercise, body)


def check_perplexity_from_logits(fn: Callable, exercise: str = "01.3 perplexity_from_logits") -> CheckResult:
    """fn(logits (n, vocab), targets (n,)) -> perplexity, compared with exp(mean cross-entropy in nats)."""
    from llmlab import metrics

    def body() -> str:
        generator = torch.Generator().manual_seed(0)
        cases = [(10, 5, 1.0), (50, 65, 3.0), (1, 3, 0.5), (200, 30, 6.0)]
        for n, vocab, spread in cases:
            logits = torch.randn(n, vocab, generator=generator, dtype=torch.float64) * spread
            targets = torch.randint(0, vocab, (n,), generator=generator)
            value = fn(logits.clone(), targets.clone())
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise _Mismatch(f"return one number for the whole batch, got a tensor of shape {tuple(value.shape)}")
                value = value.item()
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _Mismatch(f"return a finite number, got {value!r}")
            losses = F.cross_entropy(logits, targets, reduction="none")
            expected = metrics.perplexity_from_logits(logits, targets)
            if math.isclose(value, expected, rel_tol=1e-6):
                continue
            mistakes = [
                (losses.mean().item(), "you return the cross-entropy; perplexity is exp(mean cross-entropy)"),
                (2 ** losses.mean().item(), "you used base 2; the cross-entropy here is in nats, so take exp(), not 2**"),
                (losses.exp().mean().item(), "you averaged per-token perplexities; average the cross-entropy first, then exponentiate"),
                (math.exp(losses.sum().item()), "you exponentiated the summed cross-entropy; use the mean over tokens"),
            ]
            for wrong, hint in mistakes:
                if math.isclose(value, wrong, rel_tol=1e-6):
                    raise _Mismatch(hint)
            raise _Mismatch(f"got {value:.6g} for {n} tokens over a vocabulary of {vocab}, expected {expected:.6g}: "
                            "log_softmax over the vocabulary, pick the targets' log-probabilities, negate, average, exp")
        return f"equals exp(mean cross-entropy) on {len(cases)} batches (vocabularies of 3 to 65)"

    return _run(exercise, body)


# --- Lab 3: pretraining ---------------------------------------------------------------------


def check_causal_lm_loss(fn: Callable, exercise: str = "causal_lm_loss") -> CheckResult:
    """fn(logits (B, n, V), tokens (B, n)) -> mean cross-entropy of predicting token t+1 at position t."""

    def body() -> str:
        from llmlab.pretraining import causal_lm_loss

        generator = torch.Generator().manual_seed(3)
        for batch, n, vocab in ((2, 7, 5), (1, 2, 11), (4, 16, 65)):
            logits = torch.randn(batch, n, vocab, generator=generator, dtype=torch.float64)
            tokens = torch.randint(0, vocab, (batch, n), generator=generator)
            loss = _expect_tensor(fn(logits, tokens), "the loss")
            if loss.dim() != 0:
                raise _Mismatch(f"the loss should be one number (a 0-d tensor), got shape {tuple(loss.shape)}: take the mean")
            expected = causal_lm_loss(logits, tokens)
            if torch.allclose(loss.double(), expected, atol=1e-6):
                continue
            unshifted = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
            if torch.allclose(loss.double(), unshifted, atol=1e-6):
                raise _Mismatch("position t is scored against token t itself: drop the last position's logits and the first token (targets = tokens[:, 1:])")
            summed = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
            if torch.allclose(loss.double(), summed, atol=1e-6):
                raise _Mismatch("that is the sum over positions; the loss is the mean (cross_entropy's default reduction)")
            raise _Mismatch(f"for logits of shape {(batch, n, vocab)} the loss is {loss.item():.4f}, expected {expected.item():.4f}")
        return "equals the shifted next-token cross-entropy on 3 random batches"

    return _run(exercise, body)


def check_learning_rate_schedule(fn: Callable, exercise: str = "learning_rate_schedule") -> CheckResult:
    """fn(step, total_steps, peak, warmup_steps, floor_ratio) -> learning rate (warm-up, then cosine to the floor)."""

    def body() -> str:
        from llmlab.training import cosine_learning_rate

        cases = [(total, warmup, floor) for total in (100, 2000) for warmup in (1, 10, 100) for floor in (0.0, 0.1)]
        for total, warmup, floor in cases:
            for step in sorted({0, warmup - 1, warmup, (warmup + total) // 2, total - 1, total, total + 5}):
                got = fn(step, total, 3e-3, warmup, floor)
                expected = cosine_learning_rate(step, total, 3e-3, warmup, floor)
                if not isinstance(got, (int, float)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
                    raise _Mismatch(f"return a number, got {type(got).__name__}")
                if abs(float(got) - expected) <= 1e-12 + 1e-9 * expected:
                    continue
                where = "during warm-up" if step < warmup else ("after the last step" if step >= total else "during the cosine decay")
                raise _Mismatch(f"at step {step} of {total} (warm-up {warmup}, floor {floor}) the rate is {float(got):.6g}, "
                                f"expected {expected:.6g} — check the schedule {where}")
        return f"matches warm-up + cosine decay on {len(cases)} settings, including the first, the peak and past-the-end steps"

    return _run(exercise, body)


def check_training_flops(fn: Callable, exercise: str = "training_flops") -> CheckResult:
    """fn(config: GPTConfig, tokens) -> 6·N·D, with N counted from the configuration alone."""

    def body() -> str:
        from llmlab.model import GPT, GPTConfig

        configurations = [
            GPTConfig(vocab_size=65, context=64, d_model=128, n_heads=4, n_layers=4),
            GPTConfig(vocab_size=65, context=256, d_model=384, n_heads=6, n_layers=6, bias=False),
            GPTConfig(vocab_size=50, context=32, d_model=48, n_heads=3, n_layers=2, rotary=True),
            GPTConfig(vocab_size=100, context=16, d_model=32, n_heads=2, n_layers=1, tie_weights=False),
        ]
        for config in configurations:
            parameters = GPT(config).parameter_count()
            tokens = 1_000_000
            got = float(fn(config, tokens))
            expected = 6.0 * parameters * tokens
            if abs(got - expected) <= 1e-9 * expected:
                continue
            counted = got / (6.0 * tokens)
            difference = round(counted - parameters)
            hints = {
                config.vocab_size * config.d_model: "the output layer shares its matrix with the token embedding (counted once) unless tie_weights is False",
                -config.vocab_size * config.d_model: "an untied output layer has its own vocab_size × d_model matrix",
                config.context * config.d_model: "rotary attention has no position table",
                -config.context * config.d_model: "learned positions add a context × d_model table",
            }
            hint = hints.get(difference, "count per block 4·d² (+4·d biases) for attention, 8·d² (+5·d) for the MLP, and each LayerNorm's gain (+ bias)")
            setting = f"d_model={config.d_model}, n_layers={config.n_layers}, bias={config.bias}, rotary={config.rotary}, tie_weights={config.tie_weights}"
            raise _Mismatch(f"({setting}) your count implies N = {counted:,.0f} parameters, the model has {parameters:,}: {hint}")
        return f"6·N·D with N counted from the configuration, exact for {len(configurations)} configurations"

    return _run(exercise, body)


# --- Lab 6: from model to business --------------------------------------------------------


def check_break_even_volume(fn: Callable, exercise: str = "06.2 break_even_volume") -> CheckResult:
    """fn(costs: SupportCosts, automation_rate, wrong_answer_rate) -> tickets per month to break even (math.inf if never)."""

    def body() -> str:
        import random

        from llmlab import economics

        generator = random.Random(6)
        cases = [(economics.SupportCosts(), 0.8, 0.02), (economics.SupportCosts(wrong_answer_cost=200.0), 0.5, 0.05)]
        for _ in range(30):
            automation = generator.uniform(0.05, 0.95)
            costs = economics.SupportCosts(
                human_cost_per_ticket=generator.uniform(1, 8), assistant_cost_per_ticket=generator.uniform(0, 0.5),
                wrong_answer_cost=generator.uniform(0, 30), fixed_monthly_cost=generator.uniform(500, 20_000))
            cases.append((costs, automation, generator.uniform(0, 0.1) * automation))
        for costs, automation, wrong in cases:
            got = fn(costs, automation, wrong)
            if not isinstance(got, (int, float)) or isinstance(got, bool):
                raise _Mismatch(f"return a number (tickets per month), got {type(got).__name__}")
            expected = economics.break_even_volume(costs, automation, wrong)
            if math.isinf(expected):
                if not (isinstance(got, float) and math.isinf(got) and got > 0):
                    raise _Mismatch(f"when each ticket loses money (margin {economics.margin_per_ticket(costs, automation, wrong):.3f} ≤ 0) "
                                    f"the assistant never breaks even: return math.inf, got {got}")
                continue
            if math.isclose(got, expected, rel_tol=1e-9):
                continue
            h, c, p, fixed = costs.human_cost_per_ticket, costs.assistant_cost_per_ticket, costs.wrong_answer_cost, costs.fixed_monthly_cost
            mistakes = {
                "the wrong answers are left out: subtract wrong_answer_rate × wrong_answer_cost from the margin": fixed / (automation * h - c),
                "the assistant's cost is paid on every ticket, not only on the automated ones": fixed / (automation * h - automation * c - wrong * p),
                "only the automated share of tickets saves the human cost: multiply it by automation_rate": fixed / (h - c - wrong * p),
                "the margin is per ticket: divide the fixed cost by it, do not multiply": fixed * (automation * h - c - wrong * p),
            }
            for hint, value in mistakes.items():
                if math.isfinite(value) and math.isclose(got, value, rel_tol=1e-9):
                    raise _Mismatch(hint)
            raise _Mismatch(f"for {costs}, automation {automation:.3f}, wrong answers {wrong:.4f}: got {got:.2f} tickets, expected {expected:.2f}")
        return f"matches fixed / (a·h − c − w·p) on {len(cases)} cases, including ones that never break even"

    return _run(exercise, body)


def check_threshold_sweep(fn: Callable, exercise: str = "06.1 threshold_sweep") -> CheckResult:
    """fn(confidences, correct, thresholds) -> [{"threshold", "automation_rate", "wrong_answer_rate"}, ...]."""

    def body() -> str:
        import numpy as np

        from llmlab.assistant import threshold_sweep

        generator = np.random.default_rng(6)
        cases = [(np.array([0.9, 0.8, 0.6, 0.3]), np.array([True, False, True, True]), [0.0, 0.5, 0.6, 0.85, 1.0])]
        for size in (10, 57, 300):
            confidences = np.round(generator.uniform(0, 1, size), 2)  # rounded, so some sit exactly on a threshold
            correct = generator.uniform(0, 1, size) < 0.3 + 0.7 * confidences
            cases.append((confidences, correct, list(np.round(np.linspace(0, 1, 21), 2))))
        for confidences, correct, thresholds in cases:
            rows = fn(confidences.copy(), correct.copy(), thresholds)
            rows = list(rows)
            if len(rows) != len(thresholds):
                raise _Mismatch(f"return one row per threshold ({len(thresholds)}), got {len(rows)}")
            expected = threshold_sweep(confidences, correct, thresholds)
            for row, reference_row in zip(rows, expected):
                if not isinstance(row, dict) or not {"threshold", "automation_rate", "wrong_answer_rate"} <= set(row):
                    raise _Mismatch("each row should be a dict with the keys threshold, automation_rate and wrong_answer_rate")
                threshold = reference_row["threshold"]
                answered = confidences >= threshold
                if not math.isclose(row["automation_rate"], reference_row["automation_rate"], abs_tol=1e-12):
                    if math.isclose(row["automation_rate"], float((confidences > threshold).mean()), abs_tol=1e-12):
                        raise _Mismatch(f"at threshold {threshold} a confidence equal to the threshold should be answered: use >=, not >")
                    if math.isclose(row["automation_rate"], float((answered & correct).mean()), abs_tol=1e-12):
                        raise _Mismatch("the automation rate counts every answered message, right or wrong")
                    raise _Mismatch(f"at threshold {threshold}: automation rate {row['automation_rate']:.4f}, expected {reference_row['automation_rate']:.4f}")
                if not math.isclose(row["wrong_answer_rate"], reference_row["wrong_answer_rate"], abs_tol=1e-12):
                    if answered.any() and math.isclose(row["wrong_answer_rate"], float((answered & ~correct).sum() / answered.sum()), abs_tol=1e-12):
                        raise _Mismatch("the wrong-answer rate is a share of *all* messages (so it can be priced per ticket), not of the answered ones")
                    if math.isclose(row["wrong_answer_rate"], float((~correct).mean()), abs_tol=1e-12):
                        raise _Mismatch("only answered messages can get a wrong answer: count mistakes where confidence >= threshold")
                    raise _Mismatch(f"at threshold {threshold}: wrong-answer rate {row['wrong_answer_rate']:.4f}, expected {reference_row['wrong_answer_rate']:.4f}")
        return f"automation and wrong-answer rates right at every threshold of {len(cases)} cases (ties included)"

    return _run(exercise, body)


def _luhn_cases() -> list[tuple[str, bool]]:
    import random

    from llmlab.privacy import luhn_valid

    generator = random.Random(6)
    cases = [("4111 1111 1111 1111", True), ("4111-1111-1111-1112", False), ("79927398713", True), ("79927398710", False),
             ("378282246310005", True), ("18", True), ("81", False)]
    for length in (13, 15, 16, 16, 19):
        for _ in range(6):
            digits = "".join(str(generator.randrange(10)) for _ in range(length))
            grouped = " ".join(digits[i:i + 4] for i in range(0, length, 4)) if generator.random() < 0.5 else digits
            cases.append((grouped, luhn_valid(grouped)))
            # make a valid one by fixing the last digit
            for last in "0123456789":
                candidate = digits[:-1] + last
                if luhn_valid(candidate):
                    cases.append(("-".join(candidate[i:i + 4] for i in range(0, length, 4)), True))
                    break
    return cases


def check_luhn_valid(fn: Callable, exercise: str = "06.3 luhn_valid") -> CheckResult:
    """fn(number: str) -> bool, the Luhn check with spaces and dashes ignored."""

    def body() -> str:
        cases = _luhn_cases()
        for number, expected in cases:
            got = fn(number)
            if not isinstance(got, bool):
                raise _Mismatch(f"return True or False, got {got!r} for {number!r}")
            if got == expected:
                continue
            digits = number.replace(" ", "").replace("-", "")
            if digits != number and fn(digits) == expected:
                raise _Mismatch(f"{number!r}: right without the separators, wrong with them: remove spaces and dashes first")
            doubled_from_left = sum((int(d) * 2 - 9 if int(d) > 4 else int(d) * 2) if i % 2 == 1 else int(d)
                                    for i, d in enumerate(digits)) % 10 == 0
            no_minus_nine = sum(int(d) * 2 if i % 2 == 1 else int(d) for i, d in enumerate(reversed(digits))) % 10 == 0
            if got == no_minus_nine and got != expected:
                raise _Mismatch(f"{number!r}: a doubled digit above 9 counts as the sum of its digits (subtract 9), e.g. 7 → 14 → 5")
            if got == doubled_from_left:
                raise _Mismatch(f"{number!r}: double every second digit counting from the right (the check digit is not doubled)")
            raise _Mismatch(f"{number!r}: got {got}, expected {expected}")
        return f"right on {len(cases)} numbers, grouped with spaces, dashes or not at all"

    return _run(exercise, body)


def check_iban_valid(fn: Callable, exercise: str = "06.4 iban_valid") -> CheckResult:
    """fn(iban: str) -> bool: known country and length, then the ISO 13616 mod-97 test, case and spaces ignored."""

    def body() -> str:
        cases = [
            ("GB82 WEST 1234 5698 7654 32", True, ""), ("gb82west12345698765432", True, "upper-case the letters before converting them"),
            ("DE89 3704 0044 0532 0130 00", True, ""), ("FR14 2004 1010 0505 0001 3M02 606", True, "letters inside the number count as 10..35 too"),
            ("NO93 8601 1117 947", True, ""), ("GB82 WEST 1234 5698 7654 33", False, "the mod-97 remainder must be exactly 1"),
            ("DE89 3704 0044 0532 0130 01", False, "the mod-97 remainder must be exactly 1"),
            # the next three pass the mod-97 test: only the length or the country rules them out
            ("GB04 WEST 1234 5698 7654", False, "check the length for the country (GB: 22 characters)"),
            ("DE51 3704 0044 0532 0130 0", False, "check the length for the country (DE: 22 characters)"),
            ("ZZ33 WEST 1234 5698 7654 32", False, "a country not in IBAN_LENGTHS is not an IBAN"),
            ("GB28 WEST 1234 5698 7654 32", False, "move the first four characters to the end before taking mod 97"),
            ("de89 3704 0044 0532 0130 00", True, "upper-case the letters before converting them"),
        ]
        for iban, expected, hint in cases:
            got = fn(iban)
            if not isinstance(got, bool):
                raise _Mismatch(f"return True or False, got {got!r} for {iban!r}")
            if got != expected:
                raise _Mismatch(f"{iban!r}: got {got}, expected {expected}" + (f" — {hint}" if hint else ""))
        return f"right on {len(cases)} IBANs: valid ones in any case and spacing, wrong check digits, wrong length, unknown country"

    return _run(exercise, body)


# === Lab 4: fine-tuning (LoRA forward pass, macro-F1, stratified few-shot sampler) ===========


def check_lora_forward(fn: Callable, exercise: str = "04.1") -> CheckResult:
    """fn(x, weight, bias, lora_A, lora_B, alpha, r) -> x Wᵀ + b + (alpha / r) · x Aᵀ Bᵀ."""

    def body() -> str:
        generator = torch.Generator().manual_seed(4)
        cases = [(3, 6, 10, 2, 4.0), (2, 16, 8, 4, 16.0), (5, 12, 12, 8, 8.0)]
        for n, d_in, d_out, r, alpha in cases:
            x = torch.randn(n, d_in, generator=generator, dtype=torch.float64)
            weight = torch.randn(d_out, d_in, generator=generator, dtype=torch.float64)
            bias = torch.randn(d_out, generator=generator, dtype=torch.float64)
            lora_A = torch.randn(r, d_in, generator=generator, dtype=torch.float64)
            lora_B = torch.randn(d_out, r, generator=generator, dtype=torch.float64)
            base = x @ weight.T + bias
            update = x @ lora_A.T @ lora_B.T
            output = _expect_tensor(fn(x, weight, bias, lora_A, lora_B, alpha, r), "the output")
            _expect_shape(output, (n, d_out), "the output", "x (n, in) times Wᵀ (in, out) gives (n, out)")
            expected = base + (alpha / r) * update
            if _close(output, expected):
                continue
            if _close(output, base):
                raise _Mismatch("the output equals the frozen layer alone: add the low-rank update (alpha / r) · x Aᵀ Bᵀ")
            if _close(output, base + update):
                raise _Mismatch("the update is missing its scale: multiply x Aᵀ Bᵀ by alpha / r")
            if _close(output, base + (r / alpha) * update):
                raise _Mismatch("the scale is upside down: it is alpha / r, not r / alpha")
            if _close(output, (alpha / r) * update) or _close(output, x @ weight.T + (alpha / r) * update):
                raise _Mismatch("the frozen part is incomplete: keep x Wᵀ + b (bias included) and add the update to it")
            raise _Mismatch(f"the output differs from x Wᵀ + b + (alpha/r)·x Aᵀ Bᵀ by up to {_max_difference(output, expected):.2e}")
        return f"x Wᵀ + b + (alpha/r)·x Aᵀ Bᵀ right on {len(cases)} random layers (ranks 2, 4, 8)"

    return _run(exercise, body)


def check_macro_f1(fn: Callable, exercise: str = "04.2") -> CheckResult:
    """fn(true, predicted, n_classes) -> macro-averaged F1 over the classes present in true or predicted."""
    import numpy as np

    from llmlab import metrics_classification as metrics

    def body() -> str:
        generator = np.random.default_rng(4)
        for n_classes, size in ((4, 50), (9, 300), (20, 500)):
            true = generator.integers(0, n_classes, size)
            predicted = np.where(generator.random(size) < 0.7, true, generator.integers(0, n_classes, size))
            predicted[predicted == n_classes - 1] = 0  # one class never predicted: its F1 must count as 0
            true[true == 1] = 2                          # one class never true but predicted sometimes: also F1 0
            predicted[:3] = 1
            n_classes += 1  # one more class that occurs nowhere: it must not count
            value = fn(true, predicted, n_classes)
            try:
                if isinstance(value, (str, bytes)):
                    raise TypeError
                value = float(value)
            except (TypeError, ValueError):
                raise _Mismatch(f"return one number (a float), got {type(value).__name__}") from None
            expected = metrics.macro_f1(true, predicted, n_classes)
            if math.isclose(value, expected, abs_tol=1e-9):
                continue
            if math.isnan(value):
                raise _Mismatch("got nan: a class that is never predicted has precision 0/0; use F1 = 2·TP / (2·TP + FP + FN), which is 0 there")
            if math.isclose(value, metrics.accuracy(true, predicted), abs_tol=1e-9):
                raise _Mismatch("this is the accuracy (= micro-F1): compute F1 per class, then average the classes with equal weight")
            f1 = metrics.per_class_f1(true, predicted, n_classes)
            support = np.bincount(true, minlength=n_classes)
            if math.isclose(value, float((f1 * support).sum() / support.sum()), abs_tol=1e-9):
                raise _Mismatch("this is the support-weighted F1: in the macro average every class counts the same")
            if math.isclose(value, float(f1.mean()), abs_tol=1e-9):
                raise _Mismatch("you averaged over all n_classes, including classes absent from both lists; average over the classes that occur")
            present = f1[support > 0]
            if math.isclose(value, float(present.mean()), abs_tol=1e-9):
                raise _Mismatch("you averaged only over classes that occur in `true`; a class that is only predicted (all false positives) counts too, with F1 0")
            raise _Mismatch(f"macro-F1 is {expected:.6f} on a random case, you returned {value:.6f}")
        return "matches the macro-F1 on 3 random cases, including a class never predicted, one never true and one absent"

    return _run(exercise, body)


def check_sample_per_intent(fn: Callable, exercise: str = "04.3") -> CheckResult:
    """fn(labels, per_intent, seed) -> sorted list of indices, per_intent of each label (all if fewer), random but repeatable."""
    import numpy as np

    def body() -> str:
        labels = np.repeat(np.arange(6), [12, 3, 9, 30, 1, 7])
        np.random.default_rng(0).shuffle(labels)
        for per_intent in (1, 4, 10):
            chosen = fn(labels, per_intent, 0)
            if not isinstance(chosen, (list, np.ndarray)):
                raise _Mismatch(f"return a list of indices, got {type(chosen).__name__}")
            chosen = [int(i) for i in chosen]
            if any(i < 0 or i >= len(labels) for i in chosen):
                raise _Mismatch("some indices are outside 0 … len(labels) - 1: return positions in labels, not labels")
            if len(set(chosen)) != len(chosen):
                raise _Mismatch("an index appears twice: sample without replacement")
            counts = np.bincount(labels[chosen], minlength=6)
            expected = np.minimum(np.bincount(labels), per_intent)
            if not np.array_equal(counts, expected):
                if counts.sum() == expected.sum():
                    raise _Mismatch(f"right total but wrong mix per intent {counts.tolist()} (expected {expected.tolist()}): sample within each intent separately")
                raise _Mismatch(f"with per_intent={per_intent} you took {counts.tolist()} per intent, expected {expected.tolist()} (an intent with fewer examples gives all it has)")
            if chosen != sorted(chosen):
                raise _Mismatch("return the indices in increasing order (sorted), so a subset keeps the dataset's order")
            if chosen != [int(i) for i in fn(labels, per_intent, 0)]:
                raise _Mismatch("the same seed gave a different sample: draw with np.random.default_rng(seed)")
        first_ones = sorted(int(i) for intent in range(6) for i in np.flatnonzero(labels == intent)[:4])
        if [int(i) for i in fn(labels, 4, 0)] == first_ones and [int(i) for i in fn(labels, 4, 1)] == first_ones:
            raise _Mismatch("you take the first examples of each intent: shuffle them with the seeded generator first")
        if [int(i) for i in fn(labels, 4, 0)] == [int(i) for i in fn(labels, 4, 1)]:
            raise _Mismatch("seeds 0 and 1 gave the same sample: pick the examples at random (seeded), not the first ones")
        return "stratified, without repeats, sorted, repeatable for a seed and different across seeds"

    return _run(exercise, body)
