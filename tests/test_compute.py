"""Compute accounting of Chapter 3: 6ND, GPU-hours, cost, compute-optimal sizes, and the Chinchilla sanity check."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmlab import compute
from llmlab.model import GPT, GPTConfig


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


def test_peak_throughputs_are_the_dense_datasheet_figures():
    assert compute.PEAK_DENSE_FLOPS == {"T4 (fp16)": 65e12, "A100 (bf16)": 312e12, "H100 SXM (bf16)": 989e12}
    # The H100 datasheet lists 1,979 TFLOPS with 2:4 sparsity; dense is half.
    assert compute.PEAK_DENSE_FLOPS["H100 SXM (bf16)"] == pytest.approx(1979e12 / 2, rel=1e-3)


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
        _, loss = model(tokens, tokens, keep_weights=True)
        loss.backward()
    matrix_parameters = layers * 12 * width**2 + vocab * width
    attention_scores = 3 * layers * 4 * context * width * tokens.numel()
    expected = compute.training_flops(matrix_parameters, tokens.numel()) + attention_scores
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)
    # The forward pass alone is a third of it: 2N per token plus Chapter 2's 4 n^2 d per layer and sequence.
    with FlopCounterMode(display=False) as forward_counter, torch.no_grad():
        model(tokens, keep_weights=True)
    forward_expected = 2 * matrix_parameters * tokens.numel() + layers * 4 * context * width * tokens.numel()
    assert forward_counter.get_total_flops() == pytest.approx(forward_expected, rel=1e-9)
