"""The few plots the labs share, so every lab draws them the same way."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def attention_heatmap(weights: torch.Tensor, ax=None, query_labels=None, key_labels=None, title: str = "", colorbar: bool = True):
    """Draw one (n_queries, n_keys) attention matrix: rows are queries, columns the keys they read."""
    weights = weights.detach().float().cpu().numpy()
    if weights.ndim != 2:
        raise ValueError(f"expected one attention matrix of shape (n_queries, n_keys), got shape {weights.shape}")
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(weights.max())))
    ax.set_xlabel("key position (what is read)")
    ax.set_ylabel("query position (who reads)")
    if query_labels is not None:
        ax.set_yticks(range(len(query_labels)), labels=query_labels, fontsize=7)
    if key_labels is not None:
        ax.set_xticks(range(len(key_labels)), labels=key_labels, fontsize=7)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def smooth(values, window: int) -> np.ndarray:
    """Moving average over ``window`` points (the first points average what exists so far)."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    averaged = (cumulative[window:] - cumulative[:-window]) / window
    head = cumulative[1:window] / np.arange(1, window)
    return np.concatenate([head, averaged])


def loss_curves(histories: dict, ax=None, log_scale: bool = True, window: int = 20):
    """Training loss of one or more runs ({label: History}), lightly smoothed so the trend is readable."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for label, history in histories.items():
        ax.plot(history.steps, smooth(history.losses, window), label=label)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"training loss (moving average of {window})")
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
