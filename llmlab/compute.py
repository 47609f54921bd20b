"""Compute accounting for training runs: FLOPs, GPU-hours and money (Chapter 3).

The estimates are deliberately simple and stated as formulas with named
assumptions, so a reader can change an assumption and see the consequence.
"""

from __future__ import annotations


def training_flops(parameters: float, tokens: float) -> float:
    """C ≈ 6·N·D: about 2 FLOPs per parameter per token forward and 4 backward (Kaplan et al. 2020, §2.1)."""
    if parameters <= 0 or tokens <= 0:
        raise ValueError(f"parameters and tokens must be positive, got {parameters} and {tokens}")
    return 6.0 * parameters * tokens


def compute_optimal_tokens(parameters: float, tokens_per_parameter: float = 20.0) -> float:
    """Training tokens for a compute-optimal model: about 20 per parameter (Hoffmann et al. 2022)."""
    if parameters <= 0 or tokens_per_parameter <= 0:
        raise ValueError(f"parameters and tokens per parameter must be positive, got {parameters} and {tokens_per_parameter}")
    return tokens_per_parameter * parameters


def gpu_hours(flops: float, peak_flops_per_second: float, utilisation: float) -> float:
    """Hours of one accelerator delivering ``utilisation`` × its peak (model FLOPs utilisation, MFU)."""
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation is a fraction in (0, 1], got {utilisation}")
    return flops / (peak_flops_per_second * utilisation) / 3600.0


def training_cost(flops: float, peak_flops_per_second: float, utilisation: float, price_per_gpu_hour: float) -> float:
    """Money for a run: GPU-hours × price per GPU-hour (all assumptions are the caller's)."""
    return gpu_hours(flops, peak_flops_per_second, utilisation) * price_per_gpu_hour


# Peak dense tensor-core throughput from NVIDIA's datasheets, in FLOP/s (no structured sparsity):
# T4 65 TFLOPS fp16 (mixed precision), A100 312 TFLOPS bf16, H100 SXM 989 TFLOPS bf16
# (the H100 datasheet lists 1,979 "with sparsity"; dense is half of that).
PEAK_DENSE_FLOPS = {"T4 (fp16)": 65e12, "A100 (bf16)": 312e12, "H100 SXM (bf16)": 989e12}


def compute_optimal_parameters(flops: float, tokens_per_parameter: float = 20.0) -> float:
    """The model size that spends ``flops`` compute-optimally: C = 6·N·(k·N), so N = sqrt(C / 6k)."""
    if flops <= 0 or tokens_per_parameter <= 0:
        raise ValueError(f"flops and tokens_per_parameter must be positive, got {flops} and {tokens_per_parameter}")
    return (flops / (6.0 * tokens_per_parameter)) ** 0.5


def wall_clock_days(flops: float, peak_flops_per_second: float, utilisation: float, n_gpus: int) -> float:
    """Calendar days for a run spread over ``n_gpus`` accelerators (assumes the work divides evenly)."""
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be at least 1, got {n_gpus}")
    return gpu_hours(flops, peak_flops_per_second, utilisation) / n_gpus / 24.0
