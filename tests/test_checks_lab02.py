"""Lab 2's self-checks pass the reference code and name each classic mistake (02.1 attention … 02.4 multi-head attention)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmlab import attention as reference
from llmlab.checks import lab02


def expect(result, phrase: str | None) -> None:
    """``phrase`` None: the check passes; otherwise it fails with a message that contains ``phrase``."""
    assert bool(result) is (phrase is None), result
    assert phrase is None or phrase in result.message, result


# --- 02.1: scaled dot-product attention --------------------------------------------------------------


def masked_softmax(scores, mask):
    return torch.softmax(scores if mask is None else scores.masked_fill(~mask, float("-inf")), dim=-1)


def attention_with(to_weights=masked_softmax, scale=math.sqrt):
    """weights = to_weights(q kᵀ / scale(d_k), mask), output = weights @ v: the reference, unless an argument is wrong."""
    def attend(q, k, v, mask=None):
        weights = to_weights(q @ k.transpose(-2, -1) / scale(q.shape[-1]), mask)
        return weights @ v, weights
    return attend


def reference_then(change_output=lambda output: output, change_weights=lambda weights: weights):
    """The reference attention with one wrong step applied to its output or to its weights."""
    def attend(q, k, v, mask=None):
        output, weights = reference.scaled_dot_product_attention(q, k, v, mask)
        return change_output(output), change_weights(weights)
    return attend


def scaled_in_place(q, k, v, mask=None):
    q /= math.sqrt(q.shape[-1])  # divides the caller's tensor
    return attention_with(scale=lambda d_k: 1.0)(q, k, v, mask)


def in_float32(q, k, v, mask=None):
    return reference.scaled_dot_product_attention(q.float(), k.float(), v.float(), mask)


def output_from_transposed_weights(q, k, v, mask=None):
    _, weights = reference.scaled_dot_product_attention(q, k, v, mask)
    return weights.transpose(-2, -1) @ v, weights


unscaled = attention_with(scale=lambda d_k: 1.0)


@pytest.mark.parametrize("attend, phrase", [
    pytest.param(reference.scaled_dot_product_attention, None, id="reference"),
    pytest.param(attention_with(), None, id="reference-rewritten"),
    pytest.param(lambda q, k, v, mask=None: reference.scaled_dot_product_attention(q, k, v, mask)[0],
                 "return a pair (output, weights)", id="output-only"),
    pytest.param(reference_then(change_output=lambda output: output.numpy()), "output should be a torch.Tensor", id="numpy"),
    pytest.param(scaled_in_place, "changed q, k or v in place", id="changes-q-in-place"),
    pytest.param(reference_then(change_weights=lambda weights: weights.mean(1)), "weights has shape (2, 5, 5), expected (2, 3, 5, 5)",
                 id="weights-averaged-over-heads"),
    pytest.param(reference_then(change_output=reference.merge_heads), "output has shape (2, 5, 24), expected (2, 3, 5, 8)",
                 id="heads-merged"),
    pytest.param(in_float32, "another dtype or device than the inputs", id="float32"),
    pytest.param(attention_with(lambda scores, mask: torch.softmax(scores, dim=-2)), "take the softmax over the keys (dim=-1)",
                 id="softmax-over-queries"),
    pytest.param(attention_with(lambda scores, mask: torch.softmax(scores, -1) * (1 if mask is None else mask)),
                 "rows of weights no longer sum to 1: set masked scores to -inf *before* the softmax", id="mask-after-softmax"),
    pytest.param(attention_with(lambda scores, mask: torch.softmax(scores, -1)), "masked positions get non-zero weight",
                 id="mask-ignored"),
    pytest.param(attention_with(lambda scores, mask: torch.softmax(scores if mask is None else scores.masked_fill(~mask, 0.0), -1)),
                 "masked positions get non-zero weight", id="masked-scores-set-to-zero"),
    pytest.param(unscaled, "without* the 1/sqrt(d_k) scale", id="no-scale"),
    pytest.param(attention_with(scale=lambda d_k: d_k), "the weights differ from softmax(q kᵀ / sqrt(d_k)) by up to",
                 id="divided-by-d_k"),
    pytest.param(output_from_transposed_weights, "the weights are right but the output differs", id="output-wrong"),
])
def test_attention_check(attend, phrase):
    expect(lab02.check_scaled_dot_product_attention(attend), phrase)


# --- 02.2: the causal mask ------------------------------------------------------------------------------


def lower_triangle(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


@pytest.mark.parametrize("make_mask, phrase", [
    pytest.param(reference.causal_mask, None, id="reference"),
    pytest.param(lambda n: lower_triangle(n).tolist(), "should be a torch.Tensor", id="list"),
    pytest.param(lambda n: lower_triangle(n)[None], "has shape (1, 5, 5), expected (5, 5)", id="batch-dimension"),
    pytest.param(lambda n: torch.ones(n, n).tril(), "should be a boolean tensor", id="float"),
    pytest.param(lambda n: lower_triangle(n).T, "see the future and not the past", id="transposed"),
    pytest.param(lambda n: ~lower_triangle(n), "True and False are swapped", id="inverted"),
    pytest.param(lambda n: lower_triangle(n).tril(-1), "keep the diagonal", id="no-diagonal"),
    pytest.param(lambda n: torch.ones(n, n, dtype=torch.bool).tril(1), "is not the lower-triangular matrix of ones", id="one-ahead"),
])
def test_mask_check(make_mask, phrase):
    expect(lab02.check_causal_mask(make_mask), phrase)


# --- 02.3: RoPE ------------------------------------------------------------------------------------------


def rotate_pairs(x, angles, sign: float = 1.0):
    """Adjacent pairs (x_2i, x_2i+1) rotated by sign·θ, left stacked as (..., d/2, 2)."""
    cos, sin = angles.cos().to(x.dtype), (sign * angles).sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)


def rotate_half(x, angles):
    """The GPT-NeoX / LLaMA layout: x_i paired with x_{i+d/2}."""
    cos, sin = (torch.cat((t, t), dim=-1).to(x.dtype) for t in (angles.cos(), angles.sin()))
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def recomputes_angles(x, angles):
    return reference.apply_rope(x, reference.rope_angles(x.shape[-2], x.shape[-1], device=x.device))


def squared_angles(x, angles):
    return rotate_pairs(x, angles.double() ** 2).flatten(-2)


@pytest.mark.parametrize("rotate, phrase", [
    pytest.param(reference.apply_rope, None, id="reference"),
    pytest.param(lambda x, angles: rotate_pairs(x, angles).flatten(-2).numpy(), "should be a torch.Tensor", id="numpy"),
    pytest.param(lambda x, angles: rotate_pairs(x, angles), "rotation keeps the shape", id="pairs-not-flattened"),
    pytest.param(lambda x, angles: rotate_pairs(x.float(), angles).flatten(-2), "keep the input's dtype and device", id="float32"),
    pytest.param(rotate_half, "'rotate-half' layout", id="rotate-half"),
    pytest.param(lambda x, angles: rotate_pairs(x, angles, sign=-1.0).flatten(-2), "you rotate by -θ", id="minus-theta"),
    pytest.param(lambda x, angles: 2 * rotate_pairs(x, angles).flatten(-2), "keeps each vector's length", id="scaled-length"),
    pytest.param(lambda x, angles: rotate_pairs(x, angles).flip(-1).flatten(-2), "differs from the reference RoPE by up to",
                 id="pair-swapped"),
    pytest.param(recomputes_angles, "given the angles of position 3 alone", id="ignores-the-angles-given"),
])
def test_rope_check(rotate, phrase):
    expect(lab02.check_apply_rope(rotate), phrase)


@pytest.mark.parametrize("name, check, wrong, phrase", [
    pytest.param("scaled_dot_product_attention", lab02.check_scaled_dot_product_attention, unscaled,
                 "differs from torch.nn.functional.scaled_dot_product_attention", id="02.1-compared-with-torch"),
    pytest.param("apply_rope", lab02.check_apply_rope, squared_angles, "should depend only on the distance m - n",
                 id="02.3-relative-positions"),
])
def test_safety_net_behind_the_reference(monkeypatch, name, check, wrong, phrase):
    """The last lines of 02.1 and 02.3 catch what the comparison with llmlab's reference cannot: here the reference
    itself is patched to a wrong function (unscaled attention; a rotation by θ², which depends on absolute positions),
    so only torch's own attention and the relative-position property can tell."""
    monkeypatch.setattr(reference, name, wrong)
    expect(check(wrong), phrase)


# --- 02.4: multi-head attention --------------------------------------------------------------------------


class Variant(reference.MultiHeadSelfAttention):
    """The reference, written in steps, so that each mistake below overrides exactly one of them."""

    def heads(self, x):
        q, k, v = (reference.split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.rotary:
            n = x.shape[1]
            q, k = reference.apply_rope(q, self.angles[:n]), reference.apply_rope(k, self.angles[:n])
        return q, k, v

    def mask(self, x):
        return reference.causal_mask(x.shape[1], device=x.device)

    def keep(self, weights):
        self.last_weights = weights.detach()

    def forward(self, x, keep_weights=False):
        out, weights = reference.scaled_dot_product_attention(*self.heads(x), self.mask(x))
        if keep_weights:
            self.keep(weights)
        return self.out(reference.merge_heads(out))


class NoMask(Variant):
    def mask(self, x):
        return None


class MaskOnCpu(Variant):
    def mask(self, x):
        n = x.shape[1]
        return torch.ones(n, n, dtype=torch.bool).tril()  # no device=x.device


class ReshapedHeads(Variant):
    def heads(self, x):
        batch, n, _ = x.shape  # (batch, n, d) reshaped straight to (batch, heads, n, d_head) mixes positions into the heads
        return tuple(t.reshape(batch, self.n_heads, n, -1) for t in self.qkv(x).chunk(3, dim=-1))


class InterleavedHeads(Variant):
    def heads(self, x):
        batch, n, _ = x.shape  # head h gets features h, h + heads, …: positions stay apart, the heads do not match
        return tuple(t.view(batch, n, -1, self.n_heads).permute(0, 3, 1, 2) for t in self.qkv(x).chunk(3, dim=-1))


class WeightsNotKept(Variant):
    def keep(self, weights):
        pass


class WeightsNotDetached(Variant):
    def keep(self, weights):
        self.last_weights = weights


class WeightsAveragedOverHeads(Variant):
    def keep(self, weights):
        self.last_weights = weights.mean(1).detach()


class WeightsTransposed(Variant):
    def keep(self, weights):
        self.last_weights = weights.transpose(-2, -1).detach()


class ReturnsWeightsToo(Variant):
    def forward(self, x, keep_weights=False):
        return super().forward(x, keep_weights=True), self.last_weights


class HeadsNotMerged(Variant):
    def forward(self, x, keep_weights=False):
        out, weights = reference.scaled_dot_product_attention(*self.heads(x), self.mask(x))
        return out


class Renamed(nn.Module):
    """The given __init__ changed: the fused projection is called ``projection`` instead of ``qkv``."""

    def __init__(self, d_model, n_heads, bias=True, rotary=False, max_positions=2048):
        super().__init__()
        self.n_heads = n_heads
        self.projection = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, keep_weights=False):
        q, k, v = (reference.split_heads(t, self.n_heads) for t in self.projection(x).chunk(3, dim=-1))
        out, _ = reference.scaled_dot_product_attention(q, k, v, reference.causal_mask(x.shape[1], device=x.device))
        return self.out(reference.merge_heads(out))


@pytest.mark.parametrize("module, phrase", [
    pytest.param(reference.MultiHeadSelfAttention, None, id="reference"),
    pytest.param(Variant, None, id="reference-in-steps"),
    pytest.param(Renamed, "cannot copy the reference weights into your module (keep the given __init__)", id="renamed-layer"),
    pytest.param(ReturnsWeightsToo, "the module's output should be a torch.Tensor", id="returns-weights-too"),
    pytest.param(HeadsNotMerged, "(attention maps (batch, n, d_model) to the same shape)", id="heads-not-merged"),
    pytest.param(NoMask, "earlier positions change when a later token changes: apply the causal mask", id="no-mask"),
    pytest.param(ReshapedHeads, "the head split or merge mixes positions", id="head-split-mixes-positions"),
    pytest.param(InterleavedHeads, "output differs from the reference by up to", id="head-split-mixes-features"),
    pytest.param(WeightsNotKept, "self.last_weights should hold the attention weights", id="weights-not-stored"),
    pytest.param(WeightsAveragedOverHeads, "(batch, heads, n, n): one matrix per head", id="weights-wrong-shape"),
    pytest.param(WeightsNotDetached, "store the weights with .detach()", id="weights-not-detached"),
    pytest.param(WeightsTransposed, "the output is right but last_weights differ", id="weights-wrong"),
])
def test_multi_head_check(module, phrase):
    expect(lab02.check_multi_head_attention(module), phrase)


def test_mask_left_on_the_cpu_is_named_for_the_gpu(monkeypatch):
    """A mask made without device=x.device works on the CPU only. The meta device stands in for a GPU: like CUDA, it
    refuses to mix its tensors with CPU ones."""
    assert lab02.check_multi_head_attention(MaskOnCpu)  # on the CPU alone nothing is wrong
    monkeypatch.setattr(lab02, "devices", lambda: [torch.device("cpu"), torch.device("meta")])
    expect(lab02.check_multi_head_attention(MaskOnCpu), "runs on the CPU but fails on meta")


GPT2_COMPARISON = {  # mistake: (module, phrase of check_against_gpt2, None where it passes)
    "reference": (reference.MultiHeadSelfAttention, None),
    "renamed-layer": (Renamed, "cannot copy GPT-2's weights into your module"),
    "returns-weights-too": (ReturnsWeightsToo, "the module's output should be a torch.Tensor"),
    "heads-not-merged": (HeadsNotMerged, "the output has shape (2, 4, 12, 16), expected (2, 12, 64)"),
    "no-mask": (NoMask, "output differs from the GPT-2 attention block"),
    "weights-not-stored": (WeightsNotKept, "the output matches GPT-2 but last_weights do not hold the same attention weights"),
}


@pytest.mark.parametrize("mistake", GPT2_COMPARISON)
def test_gpt2_comparison(mistake):
    module, phrase = GPT2_COMPARISON[mistake]
    expect(lab02.check_against_gpt2(module), phrase)
