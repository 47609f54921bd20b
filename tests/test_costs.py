"""What things cost: Chapter 3's compute accounting (6ND, GPU-hours, compute-optimal sizes) and Chapter 1's token bill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmlab import costs as compute
from llmlab.metrics import token_cross_entropy
from llmlab.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent


def test_training_flops_is_six_n_d():
    assert compute.training_flops(1e9, 2e10) == pytest.approx(1.2e20, rel=1e-12)
    assert compute.training_flops(3, 5) == 90.0
    for parameters, tokens in ((0, 10), (10, 0), (-1, 10)):
        with pytest.raises(ValueError, match="must be positive"):
            compute.training_flops(parameters, tokens)


def test_compute_optimal_tokens_and_parameters_are_inverse():
    assert compute.compute_optimal_tokens(70e9) == pytest.approx(1.4e12)
    assert compute.compute_optimal_tokens(1e6, tokens_per_parameter=100) == pytest.approx(1e8)
    # C = 6 N (20 N) = 120 N^2, so a budget of 120e18 FLOPs buys exactly one billion parameters.
    assert compute.compute_optimal_parameters(120e18) == pytest.approx(1e9)
    for parameters in (1e6, 7e9, 70e9):
        budget = compute.training_flops(parameters, compute.compute_optimal_tokens(parameters))
        assert compute.compute_optimal_parameters(budget) == pytest.approx(parameters)
    with pytest.raises(ValueError, match="must be positive"):
        compute.compute_optimal_parameters(0)
    with pytest.raises(ValueError, match="must be positive"):
        compute.compute_optimal_parameters(1e20, tokens_per_parameter=-1)


def test_gpu_hours_cost_and_days_by_hand():
    # 3.6e15 FLOPs at 1e12 FLOP/s is 3600 s = 1 hour at full utilisation, 2 hours at half.
    assert compute.gpu_hours(3.6e15, 1e12, 1.0) == pytest.approx(1.0)
    assert compute.gpu_hours(3.6e15, 1e12, 0.5) == pytest.approx(2.0)
    assert compute.training_cost(3.6e16, 1e12, 1.0, price_per_gpu_hour=2.5) == pytest.approx(25.0)
    # 48 GPU-hours on 2 GPUs is one day.
    assert compute.wall_clock_days(48 * 3.6e15, 1e12, 1.0, n_gpus=2) == pytest.approx(1.0)
    for utilisation in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"fraction in \(0, 1\]"):
            compute.gpu_hours(1e18, 1e12, utilisation)
    with pytest.raises(ValueError, match="n_gpus must be at least 1"):
        compute.wall_clock_days(1e18, 1e12, 0.5, n_gpus=0)


def test_the_peaks_in_the_code_are_the_ones_the_chapters_cite():
    """Chapters 3 and 6 quote the datasheet peaks in prose; the code computes with PEAK_DENSE_FLOPS: they must agree."""
    chapter_3 = (ROOT / "book" / "03_pretraining.md").read_text(encoding="utf-8")
    chapter_6 = (ROOT / "book" / "06_business.md").read_text(encoding="utf-8")
    for name, peak in compute.PEAK_DENSE_FLOPS.items():
        gpu, precision = name.split(" (")[0].split()[0], name.split("(")[1].rstrip(")")
        quoted = f"{peak / 1e12:,.0f} TFLOPS ({precision}) for the {gpu}"
        assert quoted in chapter_3, f"Chapter 3 does not quote {name} as {quoted!r}"
    assert f"dense bf16 peak of {compute.PEAK_DENSE_FLOPS['H100 SXM (bf16)'] / 1e12:.0f} TFLOP/s" in chapter_6


def test_chinchilla_sanity_check():
    """6ND for Chinchilla (70B parameters, 1.4T tokens) is within 3% of the 5.76e23 FLOPs Hoffmann et al. report."""
    estimate = compute.training_flops(70e9, 1.4e12)
    assert estimate == pytest.approx(5.76e23, rel=0.03)
    assert compute.compute_optimal_tokens(70e9) == pytest.approx(1.4e12)  # Chinchilla is 20 tokens per parameter


def test_six_n_d_matches_pytorch_flop_counter():
    """A forward + backward pass of the llmlab GPT costs 6ND for its matrix weights plus the attention scores."""
    layers, width, vocab, context, batch = 2, 32, 11, 8, 3
    model = GPT(GPTConfig(vocab_size=vocab, context=context, d_model=width, n_heads=2, n_layers=layers))
    tokens = torch.randint(0, vocab, (batch, context), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        token_cross_entropy(model(tokens, keep_weights=True), tokens).backward()
    matrix_parameters = compute.transformer_matrix_parameters(layers, width, vocab)
    assert matrix_parameters == layers * 12 * width**2 + vocab * width
    attention_scores = 3 * layers * 4 * context * width * tokens.numel()
    expected = compute.training_flops(matrix_parameters, tokens.numel()) + attention_scores
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)
    # The forward pass alone is a third of it: 2N per token plus Chapter 2's 4 n^2 d per layer and sequence.
    with FlopCounterMode(display=False) as forward_counter, torch.no_grad():
        model(tokens, keep_weights=True)
    forward_expected = 2 * matrix_parameters * tokens.numel() + layers * 4 * context * width * tokens.numel()
    assert forward_counter.get_total_flops() == pytest.approx(forward_expected, rel=1e-9)


def test_monthly_cost_and_table():
    # 100k requests × (200 in, 50 out) tokens = 20M in, 5M out; at $1 / $4 per million: 20 + 20 = $40
    assert compute.monthly_cost(100_000, 200, 50, 1.0, 4.0) == pytest.approx(40.0)
    table = compute.cost_table(100_000, {"bpe": (200, 50), "chars": (800, 200)}, {"cheap": (1.0, 4.0), "dear": (10.0, 40.0)})
    assert table.loc["bpe", "dear"] == pytest.approx(400.0)
    assert table.loc["chars", "cheap"] == pytest.approx(160.0)
    with pytest.raises(ValueError, match="negative"):
        compute.monthly_cost(-1, 1, 1, 1, 1)


def test_prefill_and_request_gpu_seconds_by_hand():
    # 2 × 1e9 parameters × 1,000 prompt tokens = 2e12 FLOPs at half of 1e15 FLOP/s: 0.004 s.
    assert compute.prefill_seconds(1_000, 1e9, 1e15, 0.5) == pytest.approx(0.004)
    # The prefill is the forward third of 6ND: the same tokens trained would take three times as long.
    assert 3 * compute.prefill_seconds(1_000, 1e9, 1e15, 0.5) == pytest.approx(
        3600 * compute.gpu_hours(compute.training_flops(1e9, 1_000), 1e15, 0.5))
    # Plus 300 generated tokens at a server rate of 1,500 tokens/s: 0.2 s more.
    assert compute.request_gpu_seconds(1_000, 300, 1e9, 1e15, 0.5, 1_500) == pytest.approx(0.204)
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\]"):
        compute.prefill_seconds(1_000, 1e9, 1e15, 0.0)
    with pytest.raises(ValueError, match="decoding rate"):
        compute.request_gpu_seconds(1_000, 300, 1e9, 1e15, 0.5, 0)
