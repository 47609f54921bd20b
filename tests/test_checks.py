"""The self-checks pass correct code, name the typical mistakes, and never raise."""

from __future__ import annotations

import math

import torch
from torch import nn

from llmlab import attention as reference
from llmlab import checks


def not_done(*args, **kwargs):
    raise NotImplementedError("Exercise 02.1 (x): write your code here")


def test_reference_implementations_pass():
    assert checks.check_scaled_dot_product_attention(reference.scaled_dot_product_attention)
    assert checks.check_causal_mask(reference.causal_mask)
    assert checks.check_apply_rope(reference.apply_rope)
    assert checks.check_multi_head_attention(reference.MultiHeadSelfAttention)
    assert checks.check_against_gpt2(reference.MultiHeadSelfAttention)


def test_unfinished_exercise_says_so():
    result = checks.check_causal_mask(not_done)
    assert not result and "not implemented yet" in result.message
    assert repr(result).startswith("[FAIL] causal_mask:")


def test_attention_mistakes_are_named():
    def unscaled(q, k, v, mask=None):
        return reference.scaled_dot_product_attention(q * math.sqrt(q.shape[-1]), k, v, mask)

    def wrong_axis(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        weights = torch.softmax(scores, dim=-2)
        return weights @ v, weights

    def mask_after_softmax(q, k, v, mask=None):
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        if mask is not None:
            weights = weights * mask
        return weights @ v, weights

    def output_only(q, k, v, mask=None):
        return reference.scaled_dot_product_attention(q, k, v, mask)[0]

    def crashes(q, k, v, mask=None):
        return q @ v  # wrong shapes: raises inside the check

    expectations = {
        unscaled: "sqrt(d_k)",
        wrong_axis: "dim=-1",
        mask_after_softmax: "sum to 1",
        output_only: "return a pair",
        crashes: "raised RuntimeError",
    }
    for implementation, phrase in expectations.items():
        result = checks.check_scaled_dot_product_attention(implementation)
        assert not result and phrase in result.message, (implementation.__name__, result.message)


def test_mask_mistakes_are_named():
    cases = {
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu()): "future",
        (lambda n: torch.ones(n, n).tril()): "boolean",
        (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1)): "itself",
        (lambda n: ~torch.ones(n, n, dtype=torch.bool).tril()): "swapped",
    }
    for implementation, phrase in cases.items():
        result = checks.check_causal_mask(implementation)
        assert not result and phrase in result.message, result.message


def test_rope_mistakes_are_named():
    assert "rotate-half" in checks.check_apply_rope(checks._rotate_half_layout).message
    assert "-θ" in checks.check_apply_rope(lambda x, angles: reference.apply_rope(x, -angles)).message
    assert "length" in checks.check_apply_rope(lambda x, angles: 2 * reference.apply_rope(x, angles)).message


class NoMask(reference.MultiHeadSelfAttention):
    def forward(self, x, keep_weights=False):
        q, k, v = (reference.split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.rotary:
            n = x.shape[1]
            q, k = reference.apply_rope(q, self.angles[:n]), reference.apply_rope(k, self.angles[:n])
        out, _ = reference.scaled_dot_product_attention(q, k, v)
        return self.out(reference.merge_heads(out))


class WrongHeadSplit(reference.MultiHeadSelfAttention):
    def forward(self, x, keep_weights=False):
        batch, n, d_model = x.shape
        # Reshaping to (batch, heads, n, d_head) directly scrambles positions across heads.
        q, k, v = (t.reshape(batch, self.n_heads, n, -1) for t in self.qkv(x).chunk(3, dim=-1))
        out, _ = reference.scaled_dot_product_attention(q, k, v, reference.causal_mask(n))
        return self.out(out.reshape(batch, n, d_model))


def test_multi_head_mistakes_are_named():
    assert "causal mask" in checks.check_multi_head_attention(NoMask).message
    assert "head split" in checks.check_multi_head_attention(WrongHeadSplit).message
    assert not checks.check_against_gpt2(NoMask)

    class Renamed(nn.Module):
        def __init__(self, d_model, n_heads, bias=True, rotary=False, max_positions=2048):
            super().__init__()
            self.projection = nn.Linear(d_model, 3 * d_model)

        def forward(self, x, keep_weights=False):
            return x

    result = checks.check_multi_head_attention(Renamed)
    assert not result and "keep the given __init__" in result.message


def test_check_output_is_deterministic():
    first = repr(checks.check_scaled_dot_product_attention(reference.scaled_dot_product_attention))
    second = repr(checks.check_scaled_dot_product_attention(reference.scaled_dot_product_attention))
    assert first == second


def test_lab3_checks_pass_references_and_name_mistakes():
    import torch.nn.functional as F

    from llmlab.model import GPT
    from llmlab.pretraining import causal_lm_loss
    from llmlab.training import cosine_learning_rate

    assert checks.check_causal_lm_loss(causal_lm_loss)
    unshifted = checks.check_causal_lm_loss(lambda logits, tokens: F.cross_entropy(logits.flatten(0, 1), tokens.flatten()))
    assert not unshifted and "tokens[:, 1:]" in unshifted.message
    summed = checks.check_causal_lm_loss(
        lambda logits, tokens: F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum"))
    assert not summed and "mean" in summed.message

    assert checks.check_learning_rate_schedule(cosine_learning_rate)
    no_floor = checks.check_learning_rate_schedule(lambda s, t, p, w, f=0.1: cosine_learning_rate(s, t, p, w, 0.0))
    assert not no_floor and "cosine decay" in no_floor.message
    off_by_one = checks.check_learning_rate_schedule(lambda s, t, p, w, f=0.1: p * s / w if s < w else cosine_learning_rate(s, t, p, w, f))
    assert not off_by_one and "warm-up" in off_by_one.message

    assert checks.check_training_flops(lambda config, tokens: 6 * GPT(config).parameter_count() * tokens)
    untied = checks.check_training_flops(
        lambda config, tokens: 6 * (GPT(config).parameter_count() + config.vocab_size * config.d_model) * tokens)
    assert not untied and "shares its matrix" in untied.message
