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
