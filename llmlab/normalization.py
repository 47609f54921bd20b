"""Normalisation written out: LayerNorm and RMSNorm, each token normalised over its own features.

    LayerNorm(x) = γ ⊙ (x − μ) / √(σ² + ε) + β     μ, σ²: mean and variance of x's d features
    RMSNorm(x)   = γ ⊙ x / √(mean(x²) + ε)

γ (the gain) and β (the bias) are learned vectors of d numbers: after the normalisation the
layer can scale and shift every feature again, so normalising takes nothing away that the
network needs. The statistics are those of one token's vector, never of a batch, so a token's
output does not depend on what else is in the batch (Chapter 3 shows what goes wrong with
batch statistics). ``tests/test_normalization.py`` checks both against ``torch.nn``.
"""

from __future__ import annotations

import torch


def layer_norm(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension (Ba et al., 2016): centre, divide by the standard deviation, scale, shift."""
    mean = x.mean(dim=-1, keepdim=True)
    variance = x.var(dim=-1, keepdim=True, unbiased=False)  # the biased variance, as torch.nn.LayerNorm uses
    normalised = (x - mean) / torch.sqrt(variance + eps)
    return normalised * gain + (bias if bias is not None else 0)


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension (Zhang and Sennrich, 2019): no centring and no bias, only the root mean square."""
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * gain
