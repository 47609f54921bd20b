"""Tests for every formula of Chapter 2 ("Attention, the math") against llmlab.attention.

Each test compares the implementation with something independent of it: PyTorch's own
attention, automatic differentiation, a closed form written out by hand, or an invariance
that the chapter derives (relative positions under RoPE, permutation equivariance, ...).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from llmlab import attention


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def unmasked_self_attention(block: attention.MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The block's own projections, with every position allowed to see every other one."""
    q, k, v = (attention.split_heads(t, block.n_heads) for t in block.qkv(x).chunk(3, dim=-1))
    out, _ = attention.scaled_dot_product_attention(q, k, v)
    return block.out(attention.merge_heads(out))


# --- scaled dot-product attention (eq-attention) -------------------------------------------


@pytest.mark.parametrize("shape_q, shape_kv, d_v", [((2, 3, 5, 8), (2, 3, 5, 8), 8), ((1, 4, 3, 16), (1, 4, 7, 16), 6), ((6, 4), (9, 4), 3)])
def test_attention_matches_pytorch(shape_q, shape_kv, d_v):
    q = torch.randn(shape_q)
    k = torch.randn(shape_kv)
    v = torch.randn(*shape_kv[:-1], d_v)
    ours, weights = attention.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert weights.shape == (*shape_q[:-1], shape_kv[-2])


def test_attention_matches_closed_form_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[10.0], [20.0]])
    out, weights = attention.scaled_dot_product_attention(q, k, v)
    # scores 1/√2 and 0, so the first weight is 1 / (1 + e^{-1/√2}).
    w0 = 1.0 / (1.0 + math.exp(-1.0 / math.sqrt(2.0)))
    torch.testing.assert_close(weights, torch.tensor([[w0, 1.0 - w0]]))
    torch.testing.assert_close(out, torch.tensor([[10.0 * w0 + 20.0 * (1.0 - w0)]]))


def test_attention_weights_are_a_distribution():
    q, k, v = torch.randn(3, 2, 6, 8).unbind(0)
    _, weights = attention.scaled_dot_product_attention(q, k, v)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 6))


def test_causal_attention_matches_pytorch_is_causal():
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    ours, _ = attention.scaled_dot_product_attention(q, k, v, attention.causal_mask(7))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5)


def test_attention_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same feature size d_k"):
        attention.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 2))
    with pytest.raises(ValueError, match="same number of positions"):
        attention.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 2))


# --- why divide by √d_k (eq-variance) ---------------------------------------------------------


@pytest.mark.parametrize("d_k, var_q, var_k", [(16, 1.0, 1.0), (64, 1.0, 1.0), (64, 2.0, 2.0), (256, 0.5, 3.0)])
def test_dot_product_variance_matches_simulation(d_k, var_q, var_k):
    q = torch.randn(50_000, d_k) * math.sqrt(var_q)
    k = torch.randn(50_000, d_k) * math.sqrt(var_k)
    measured = (q * k).sum(-1).var().item()
    predicted = attention.dot_product_variance(d_k, var_q, var_k)
    assert predicted == d_k * var_q * var_k
    assert measured == pytest.approx(predicted, rel=0.03)


def test_llmlab_attention_scores_have_unit_variance_for_any_d_k():
    """Inside llmlab's attention, log w_ij − log w_ik = s_ij − s_ik: with the 1/√d_k scale its variance is 2 for every d_k."""
    generator = torch.Generator().manual_seed(0)
    for d_k in (4, 64, 1024):
        q = torch.randn(20_000, 1, d_k, generator=generator)
        k = torch.randn(20_000, 2, d_k, generator=generator)
        _, weights = attention.scaled_dot_product_attention(q, k, torch.zeros(20_000, 2, 1))
        score_gaps = weights[:, 0, 0].log() - weights[:, 0, 1].log()
        assert score_gaps.var().item() == pytest.approx(2.0, rel=0.05), d_k


def test_dot_product_variance_rejects_nonpositive_size():
    with pytest.raises(ValueError, match="d_k must be a positive integer"):
        attention.dot_product_variance(0)


def test_unscaled_softmax_saturates_and_scaled_does_not():
    q, k = torch.randn(1000, 1024), torch.randn(32, 1024)
    raw = q @ k.T
    unscaled = torch.softmax(raw, -1)
    scaled = torch.softmax(raw / 32.0, -1)
    assert unscaled.max(-1).values.mean() > 0.8
    assert scaled.max(-1).values.mean() < 0.4
    assert attention.attention_entropy(unscaled).mean() < attention.attention_entropy(scaled).mean() - 2.0


# --- softmax (eq-softmax, eq-softmax-stable, eq-softmax-grad) -----------------------------------


def test_stable_softmax_matches_definition_and_torch():
    s = torch.randn(4, 9, dtype=torch.float64)
    by_definition = s.exp() / s.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(attention.stable_softmax(s), by_definition)
    torch.testing.assert_close(attention.stable_softmax(s, dim=0), torch.softmax(s, dim=0))


def test_softmax_is_invariant_to_adding_a_constant():
    s = torch.randn(5, 7)
    for c in (-50.0, 3.0, 100.0):
        torch.testing.assert_close(attention.stable_softmax(s + c), attention.stable_softmax(s), atol=1e-6, rtol=1e-5)


def test_stable_softmax_survives_scores_that_overflow_the_naive_formula():
    big = torch.tensor([1000.0, 999.0, 998.0])
    assert torch.isnan(big.exp() / big.exp().sum()).all()
    stable = attention.stable_softmax(big)
    torch.testing.assert_close(stable, torch.softmax(torch.tensor([2.0, 1.0, 0.0]), -1))


def test_stable_softmax_shifts_each_row_by_its_own_maximum():
    # One shift for the whole batch would underflow the second row to 0 / 0.
    rows = torch.tensor([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1002.0]])
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0]), -1).expand(2, 3)
    torch.testing.assert_close(attention.stable_softmax(rows), expected)


def test_temperature_divides_the_scores_and_sets_sharpness():
    s = torch.tensor([2.0, 1.0, 0.5])
    for t in (0.25, 1.0, 4.0):
        torch.testing.assert_close(attention.stable_softmax(s, temperature=t), torch.softmax(s / t, -1))
    entropies = [attention.attention_entropy(attention.stable_softmax(s, temperature=t)) for t in (0.1, 1.0, 10.0)]
    assert entropies[0] < entropies[1] < entropies[2] < math.log(3)
    with pytest.raises(ValueError, match="temperature must be positive"):
        attention.stable_softmax(s, temperature=0.0)


def test_softmax_jacobian_matches_autograd():
    for scores in (torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64), torch.randn(6, dtype=torch.float64) * 3):
        expected = torch.autograd.functional.jacobian(lambda x: torch.softmax(x, -1), scores)
        torch.testing.assert_close(attention.softmax_jacobian(torch.softmax(scores, -1)), expected)


def test_softmax_jacobian_batches_and_rows_sum_to_zero():
    p = torch.softmax(torch.randn(3, 5, dtype=torch.float64), -1)
    jac = attention.softmax_jacobian(p)
    assert jac.shape == (3, 5, 5)
    torch.testing.assert_close(jac.sum(-1), torch.zeros(3, 5, dtype=torch.float64))
    torch.testing.assert_close(jac[1], torch.diag(p[1]) - torch.outer(p[1], p[1]))


def test_saturated_softmax_has_vanishing_gradient():
    s = torch.tensor([2.0, 1.0, 0.5])
    moderate = attention.softmax_jacobian(torch.softmax(s, -1)).abs().max()
    saturated = attention.softmax_jacobian(torch.softmax(10 * s, -1)).abs().max()
    assert moderate > 0.1
    assert saturated < 1e-3


def test_attention_entropy_closed_forms():
    assert attention.attention_entropy(torch.full((8,), 1 / 8)).item() == pytest.approx(math.log(8))
    assert attention.attention_entropy(torch.tensor([0.0, 1.0, 0.0])).item() == 0.0
    p = torch.tensor([0.5, 0.25, 0.25])
    assert attention.attention_entropy(p).item() == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))


# --- the causal mask -------------------------------------------------------------------------


def test_causal_mask_is_lower_triangular():
    expected = torch.tensor([[j <= i for j in range(4)] for i in range(4)])
    assert torch.equal(attention.causal_mask(4), expected)


def test_causal_mask_with_cached_keys_shifts_the_diagonal():
    # Two new queries at positions 3 and 4 of a 5-token sequence.
    expected = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    assert torch.equal(attention.causal_mask(2, 5), expected)
    with pytest.raises(ValueError, match="at least as many keys as queries"):
        attention.causal_mask(5, 3)


def test_mask_gives_future_positions_exactly_zero_weight():
    q, k, v = torch.randn(3, 6, 4).unbind(0)
    mask = attention.causal_mask(6)
    _, weights = attention.scaled_dot_product_attention(q, k, v, mask)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    assert weights[0, 0].item() == 1.0


@pytest.mark.parametrize("rotary", [False, True])
def test_later_tokens_do_not_change_earlier_outputs(rotary):
    block = attention.MultiHeadSelfAttention(16, 4, rotary=rotary)
    x = torch.randn(1, 6, 16)
    edited = x.clone()
    edited[0, -1] = torch.randn(16)
    with torch.no_grad():
        before, after = block(x), block(edited)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert (before[:, -1] - after[:, -1]).abs().max() > 1e-3


def test_kv_cache_step_equals_full_recomputation():
    # Last row of full causal attention == the newest query attending over all cached keys.
    q, k, v = torch.randn(3, 1, 9, 8).unbind(0)
    full, _ = attention.scaled_dot_product_attention(q, k, v, attention.causal_mask(9))
    step, _ = attention.scaled_dot_product_attention(q[:, -1:], k, v, attention.causal_mask(1, 9))
    torch.testing.assert_close(step, full[:, -1:])


# --- multi-head attention (eq-mha) -----------------------------------------------------------


def test_split_and_merge_heads_round_trip():
    x = torch.randn(2, 5, 12)
    heads = attention.split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    torch.testing.assert_close(heads[:, 1], x[..., 4:8])
    torch.testing.assert_close(attention.merge_heads(heads), x)
    with pytest.raises(ValueError, match="not divisible"):
        attention.split_heads(x, 5)


def test_multi_head_attention_matches_the_equation_head_by_head():
    d_model, n_heads, n = 12, 3, 5
    block = attention.MultiHeadSelfAttention(d_model, n_heads)
    x = torch.randn(1, n, d_model)
    w_q, w_k, w_v = block.qkv.weight.chunk(3, dim=0)
    b_q, b_k, b_v = block.qkv.bias.chunk(3)
    d_head = d_model // n_heads
    heads = []
    for h in range(n_heads):
        cols = slice(h * d_head, (h + 1) * d_head)
        q = x[0] @ w_q[cols].T + b_q[cols]
        k = x[0] @ w_k[cols].T + b_k[cols]
        v = x[0] @ w_v[cols].T + b_v[cols]
        scores = q @ k.T / math.sqrt(d_head)
        scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v)
    expected = torch.cat(heads, dim=-1) @ block.out.weight.T + block.out.bias
    with torch.no_grad():
        torch.testing.assert_close(block(x)[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rotary", [False, True])
def test_fused_and_explicit_paths_agree(rotary):
    block = attention.MultiHeadSelfAttention(16, 4, rotary=rotary)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block(x, keep_weights=True), atol=1e-5, rtol=1e-5)
    assert block.last_weights.shape == (2, 4, 10, 10)
    assert (block.last_weights.triu(1) == 0).all()


@pytest.mark.parametrize("d_model", [64, 768])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_is_4d2_plus_4d_for_any_number_of_heads(d_model, bias):
    expected = 4 * d_model**2 + (4 * d_model if bias else 0)
    assert attention.mha_parameter_count(d_model, bias) == expected
    for n_heads in (1, 2, 4, 8):
        module = attention.MultiHeadSelfAttention(d_model, n_heads, bias=bias)
        assert sum(p.numel() for p in module.parameters()) == expected


def test_parameter_count_for_gpt2_small_width():
    assert attention.mha_parameter_count(768) == 2_362_368


def test_multi_head_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="not divisible"):
        attention.MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, positions, d_model\)"):
        attention.MultiHeadSelfAttention(8, 2)(torch.randn(5, 8))


# --- positions: equivariance, sinusoids (eq-sinusoidal), RoPE (eq-rope-relative) ---------------


def test_attention_without_positions_is_permutation_equivariant():
    block = attention.MultiHeadSelfAttention(16, 4)
    x = torch.randn(1, 7, 16)
    perm = torch.randperm(7)
    with torch.no_grad():
        torch.testing.assert_close(unmasked_self_attention(block, x)[:, perm], unmasked_self_attention(block, x[:, perm]), atol=1e-6, rtol=1e-5)
        # The causal mask depends on order, so the masked block is not equivariant.
        assert (block(x)[:, perm] - block(x[:, perm])).abs().max() > 1e-3


def test_rope_breaks_permutation_equivariance():
    q, k, v = torch.randn(3, 1, 6, 8).unbind(0)
    angles = attention.rope_angles(6, 8)
    perm = torch.tensor([5, 3, 1, 0, 2, 4])

    def rope_attention(q, k, v):
        return attention.scaled_dot_product_attention(attention.apply_rope(q, angles), attention.apply_rope(k, angles), v)[0]

    assert (rope_attention(q, k, v)[:, perm] - rope_attention(q[:, perm], k[:, perm], v[:, perm])).abs().max() > 1e-3


def test_sinusoidal_positions_closed_form():
    table = attention.sinusoidal_positions(50, 16)
    for m in (0, 7, 49):
        for i in range(8):
            omega = 10000 ** (-2 * i / 16)
            assert table[m, 2 * i].item() == pytest.approx(math.sin(m * omega), abs=1e-5)
            assert table[m, 2 * i + 1].item() == pytest.approx(math.cos(m * omega), abs=1e-5)
    with pytest.raises(ValueError, match="even d_model"):
        attention.sinusoidal_positions(4, 7)


def test_sinusoidal_dot_product_depends_only_on_distance():
    table = attention.sinusoidal_positions(128, 64).double()
    omegas = 10000 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    for m, n in ((10, 13), (90, 93), (5, 60)):
        expected = torch.cos((m - n) * omegas).sum()
        assert (table[m] @ table[n]).item() == pytest.approx(expected.item(), abs=1e-4)


def test_rope_angles_closed_form():
    angles = attention.rope_angles(10, 8, base=100.0)
    assert angles.shape == (10, 4)
    for m in (0, 3, 9):
        for i in range(4):
            assert angles[m, i].item() == pytest.approx(m * 100.0 ** (-2 * i / 8), rel=1e-6)
    with pytest.raises(ValueError, match="even head size"):
        attention.rope_angles(4, 5)


def test_rope_in_two_dimensions_is_the_rotation_matrix():
    x = torch.tensor([[3.0, 1.0]]).expand(5, 2)
    angles = attention.rope_angles(5, 2)  # θ = 1 radian per position when d = 2
    rotated = attention.apply_rope(x, angles)
    for m in range(5):
        a = float(m)
        rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        torch.testing.assert_close(rotated[m], rotation @ x[m])


def test_rope_score_depends_only_on_relative_position():
    d, n = 32, 200
    # Angles in float64 from the closed form, so the only error left is float64 rounding.
    angles = torch.outer(torch.arange(n, dtype=torch.float64), 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d))
    q, k = torch.randn(2, d, dtype=torch.float64)
    rq = attention.apply_rope(q.expand(n, d), angles)
    rk = attention.apply_rope(k.expand(n, d), angles)
    scores = rq @ rk.T
    for offset in (-50, -1, 0, 3, 120):
        diagonal = scores.diagonal(offset)
        assert (diagonal.max() - diagonal.min()).item() < 1e-9
    # ...and does depend on the distance itself.
    assert abs(scores[0, 3] - scores[0, 7]) > 1e-3
    # Closed form for one pair: q · R((n - m)θ) k, summed over pairs.
    m, p = 11, 42
    expected = attention.apply_rope(k.view(1, d), angles[p - m : p - m + 1])[0] @ q
    assert scores[m, p].item() == pytest.approx(expected.item(), abs=1e-9)


def test_rope_relative_property_holds_with_the_library_float32_angles():
    d, n = 64, 512
    angles = attention.rope_angles(n, d)
    q, k = torch.randn(2, d)
    scores = attention.apply_rope(q.expand(n, d), angles) @ attention.apply_rope(k.expand(n, d), angles).T
    for offset in (-300, 0, 3, 400):
        diagonal = scores.diagonal(offset)
        # float32 angles of up to ~500 radians carry rounding of order 1e-5 rad.
        assert (diagonal.max() - diagonal.min()).item() < 1e-3 * (q.norm() * k.norm()).item()


def test_rope_preserves_length_and_is_identity_at_position_zero():
    x = torch.randn(2, 3, 16, 8)
    rotated = attention.apply_rope(x, attention.rope_angles(16, 8))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated[..., 0, :], x[..., 0, :])


def test_apply_rope_rejects_wrong_angle_shape():
    with pytest.raises(ValueError, match="angles must have shape"):
        attention.apply_rope(torch.randn(5, 8), attention.rope_angles(6, 8))


# --- cost: FLOPs and the KV cache ------------------------------------------------------------


def test_attention_flops_by_hand():
    # n = 10, d = 4: projections 2·4·10·4·4 = 1280, scores and mixing 2·2·10·10·4 = 1600.
    assert attention.attention_flops(10, 4) == {"projections": 1280, "scores_and_mixing": 1600, "total": 2880}


def test_attention_flops_match_the_matrix_products_they_count():
    n, d = 37, 24

    def matmul_flops(a_rows, inner, b_cols):
        return 2 * a_rows * inner * b_cols

    projections = 4 * matmul_flops(n, d, d)
    scores_and_mixing = matmul_flops(n, d, n) + matmul_flops(n, n, d)
    assert attention.attention_flops(n, d) == {"projections": projections, "scores_and_mixing": scores_and_mixing, "total": projections + scores_and_mixing}


@pytest.mark.parametrize("d", [64, 768, 1024])
def test_quadratic_terms_overtake_projections_past_n_equals_2d(d):
    at = attention.attention_flops(2 * d, d)
    assert at["scores_and_mixing"] == at["projections"]
    assert attention.attention_flops(2 * d + 1, d)["scores_and_mixing"] > attention.attention_flops(2 * d + 1, d)["projections"]
    assert attention.attention_flops(2 * d - 1, d)["scores_and_mixing"] < attention.attention_flops(2 * d - 1, d)["projections"]


def test_kv_cache_bytes_by_hand():
    # GPT-2 small shape: 2 (K, V) × 12 layers × 1024 positions × 768 features × 2 bytes.
    assert attention.kv_cache_bytes(12, 1024, 768) == 37_748_736
    assert attention.kv_cache_bytes(24, 1024, 1024, batch=8, bytes_per_value=4) == 2 * 24 * 1024 * 1024 * 8 * 4


def test_decoding_flops_by_hand():
    # d = 4, prompt 3, two new tokens: lengths 4 and 5.
    cached = (8 * 16 + 4 * 4 * 4) + (8 * 16 + 4 * 5 * 4)
    uncached = (8 * 4 * 16 + 4 * 16 * 4) + (8 * 5 * 16 + 4 * 25 * 4)
    assert attention.decoding_attention_flops(2, 4, prompt=3, cached=True) == cached == 400
    assert attention.decoding_attention_flops(2, 4, prompt=3, cached=False) == uncached == 1808


def test_cache_saves_more_the_longer_the_generation():
    ratios = [
        attention.decoding_attention_flops(n, 768, prompt=128, cached=False) / attention.decoding_attention_flops(n, 768, prompt=128, cached=True)
        for n in (1, 16, 256)
    ]
    assert 1 < ratios[0] < ratios[1] < ratios[2]


def test_grouped_query_attention_divides_the_kv_cache():
    # A 7B-class shape: 32 layers, width 4096, 32 query heads of 128 features, 4,096 tokens, fp16.
    full = attention.kv_cache_bytes(32, 4096, 4096, n_heads=32)
    assert full == 2 * 32 * 32 * 128 * 4096 * 2 == attention.kv_cache_bytes(32, 4096, 4096)
    assert attention.kv_cache_bytes(32, 4096, 4096, n_heads=32, n_kv_heads=8) == full // 4   # grouped-query
    assert attention.kv_cache_bytes(32, 4096, 4096, n_heads=32, n_kv_heads=1) == full // 32  # multi-query
    with pytest.raises(ValueError, match="n_kv_heads dividing n_heads"):
        attention.kv_cache_bytes(32, 4096, 4096, n_heads=32, n_kv_heads=5)
