"""What things cost: training compute (FLOPs, GPU-hours, money) and the token bill of a hosted model.

Chapter 3 derives the compute formulas, Chapter 1 and Lab 1 the token bill, Chapter 6 uses both.
The estimates are deliberately simple and stated as formulas with named assumptions, so a
reader can change an assumption and see the consequence. Prices are always arguments, never a
vendor's current price list.
"""

from __future__ import annotations

# --- training compute (Chapter 3) ----------------------------------------------------------------


def transformer_matrix_parameters(n_layers: int, d_model: int, vocab_size: int) -> int:
    """N as Chapter 3 counts it for 6·N·D: the weights that take part in matrix products.

    Per block the four attention matrices (4·d²) and the two MLP matrices of a 4·d-wide MLP
    (8·d²), plus the output layer (V·d). Embedding look-ups, biases and norm gains cost no
    matrix product and are left out; the output layer counts once, tied to the embedding or not.
    """
    return n_layers * 12 * d_model * d_model + vocab_size * d_model


def training_flops(parameters: float, tokens: float) -> float:
    """C ≈ 6·N·D: about 2 FLOPs per parameter per token forward and 4 backward.

    Kaplan et al. 2020, §2.1.
    """
    if parameters <= 0 or tokens <= 0:
        raise ValueError(
            f"parameters and tokens must be positive, got {parameters} and {tokens}")
    return 6.0 * parameters * tokens


def compute_optimal_tokens(parameters: float, tokens_per_parameter: float = 20.0) -> float:
    """Training tokens for a compute-optimal model: about 20 per parameter (Hoffmann et al. 2022)."""
    if parameters <= 0 or tokens_per_parameter <= 0:
        raise ValueError(f"parameters and tokens per parameter must be positive, got {parameters} and {tokens_per_parameter}")
    return tokens_per_parameter * parameters


def gpu_hours(flops: float, peak_flops_per_second: float, utilisation: float) -> float:
    """Hours of one accelerator delivering ``utilisation`` × its peak.

    ``utilisation`` is the model FLOPs utilisation (MFU).
    """
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


def compute_optimal_parameters(flops: float,
                               tokens_per_parameter: float = 20.0) -> float:
    """The model size that spends ``flops`` compute-optimally.

    C = 6·N·(k·N), so N = sqrt(C / 6k).
    """
    if flops <= 0 or tokens_per_parameter <= 0:
        raise ValueError("flops and tokens_per_parameter must be positive, "
                         f"got {flops} and {tokens_per_parameter}")
    return (flops / (6.0 * tokens_per_parameter)) ** 0.5


def wall_clock_days(flops: float, peak_flops_per_second: float, utilisation: float, n_gpus: int) -> float:
    """Calendar days for a run spread over ``n_gpus`` accelerators (assumes the work divides evenly)."""
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be at least 1, got {n_gpus}")
    return gpu_hours(flops, peak_flops_per_second, utilisation) / n_gpus / 24.0


# --- the token bill of a hosted model (Chapter 1, Lab 1) ------------------------------------------


def monthly_cost(requests_per_month: float, input_tokens_per_request: float, output_tokens_per_request: float,
                 price_per_million_input: float, price_per_million_output: float) -> float:
    """Dollars per month: tokens read and written per request, times volume, times the price per million tokens."""
    for name, value in (("requests_per_month", requests_per_month), ("input_tokens_per_request", input_tokens_per_request),
                        ("output_tokens_per_request", output_tokens_per_request),
                        ("price_per_million_input", price_per_million_input), ("price_per_million_output", price_per_million_output)):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    input_millions = requests_per_month * input_tokens_per_request / 1e6
    output_millions = requests_per_month * output_tokens_per_request / 1e6
    return input_millions * price_per_million_input + output_millions * price_per_million_output


def cost_table(requests_per_month: float, tokens_per_request: dict[str, tuple[float, float]], prices: dict[str, tuple[float, float]]):
    """A pandas table of monthly cost: one row per tokenizer (input, output tokens per request), one column per price point."""
    import pandas as pd

    rows = {
        tokenizer: {price_name: monthly_cost(requests_per_month, tokens_in, tokens_out, price_in, price_out)
                    for price_name, (price_in, price_out) in prices.items()}
        for tokenizer, (tokens_in, tokens_out) in tokens_per_request.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index")


# --- serving a model yourself (Chapter 5, Lab 5) -----------------------------------------------


def cost_per_million_tokens(tokens_per_second: float, price_per_hour: float) -> float:
    """Money per million generated tokens for a machine rented at ``price_per_hour``
    that sustains ``tokens_per_second``.

    Only the machine's time is counted, at full load; idle hours, engineers and the
    rest of a product come on top (Chapter 6).
    """
    if tokens_per_second <= 0 or price_per_hour < 0:
        raise ValueError("tokens_per_second must be positive and price_per_hour not "
                         f"negative, got {tokens_per_second} and {price_per_hour}")
    return price_per_hour / (tokens_per_second * 3600) * 1e6


def prefill_seconds(prompt_tokens: float, parameters: float, peak_flops_per_second: float, utilisation: float) -> float:
    """Seconds of one accelerator to prefill a prompt: about 2·N FLOPs per prompt token (the forward
    pass's matrix products; the attention scores are left out), at ``utilisation`` × the peak.

    Prefill processes the whole prompt in one pass, so it is limited by arithmetic, not by memory
    as decoding is; ``utilisation`` is the model FLOPs utilisation the server sustains (an assumption).
    """
    if prompt_tokens < 0 or parameters <= 0 or peak_flops_per_second <= 0:
        raise ValueError(f"need prompt tokens >= 0 and positive parameters and peak, got {prompt_tokens}, "
                         f"{parameters} and {peak_flops_per_second}")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation is a fraction in (0, 1], got {utilisation}")
    return 2.0 * parameters * prompt_tokens / (peak_flops_per_second * utilisation)


def request_gpu_seconds(prompt_tokens: float, output_tokens: float, parameters: float, peak_flops_per_second: float,
                        prefill_utilisation: float, decode_tokens_per_second: float) -> float:
    """One request's share of a GPU's time: its prefill (``prefill_seconds``) plus its generated tokens
    at the server's decoding throughput.

    ``decode_tokens_per_second`` is the server's total rate across its whole batch (for example a share
    of ``inference.memory_bound_tokens_per_second``), so each generated token takes 1 / rate seconds
    of the GPU. The two phases are counted one after the other, as if they never overlapped.
    """
    if output_tokens < 0 or decode_tokens_per_second <= 0:
        raise ValueError(f"need output tokens >= 0 and a positive decoding rate, got {output_tokens} "
                         f"and {decode_tokens_per_second}")
    return (prefill_seconds(prompt_tokens, parameters, peak_flops_per_second, prefill_utilisation)
            + output_tokens / decode_tokens_per_second)
