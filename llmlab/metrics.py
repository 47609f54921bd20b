"""How well a language model predicts: cross-entropy in nats and perplexity, as Chapter 1 defines them."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of -ln p(target) over all positions, in nats; ``logits`` (..., vocab), ``targets`` (...) of token ids."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} need one more (vocabulary) dimension than targets {tuple(targets.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)).item()


def perplexity(mean_cross_entropy: float) -> float:
    """exp(mean cross-entropy in nats): the number of equally likely choices the model is as unsure as."""
    return math.exp(mean_cross_entropy)


def perplexity_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Perplexity of a model's predictions ``logits`` for the true next tokens ``targets``."""
    return perplexity(cross_entropy(logits, targets))
