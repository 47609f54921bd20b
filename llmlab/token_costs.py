"""What tokens cost: turn token counts and per-million-token prices into a monthly bill.

Prices are always arguments. Lab 1 states them as illustrative parameters,
never as a vendor's current price list.
"""

from __future__ import annotations


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
