"""LoRA written out (Hu et al., 2021, arXiv:2106.09685): a frozen linear layer plus a trainable low-rank update.

    W' = W + (α / r) · B A,    B ∈ R^{d×r} (starts at zero),  A ∈ R^{r×k} (starts random)

so training touches r·(d + k) numbers instead of d·k, and at the start W' = W exactly.
``peft`` implements the same thing; ``tests/test_intents.py`` checks that the two agree.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lora_parameter_count(d_out: int, d_in: int, r: int) -> int:
    """Trainable numbers of one LoRA update of a d_out × d_in weight: r·(d_out + d_in)."""
    return r * (d_out + d_in)


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) · x Aᵀ Bᵀ`` with ``base`` frozen.

    A is (r, in_features), B is (out_features, r).
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"the rank r must be at least 1, got {r}")
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.r = r
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        # the same start as peft: A like a default nn.Linear, B zero,
        # so the update starts at exactly zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two thin products (x Aᵀ is r wide) instead of forming the full d×k matrix B A
        return (self.base(x)
                + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling)

    def merged_weight(self) -> torch.Tensor:
        """W + (α/r)·B A: the update folded in, so serving costs nothing extra."""
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A)
