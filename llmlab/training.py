"""A training loop you can read top to bottom: sample a batch, forward, loss, backward, step."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from llmlab.progress import tqdm

from llmlab.runtime import Precision, autocast, grad_scaler, pick_precision


def cosine_learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, floor_ratio: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to ``floor_ratio · peak`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = floor_ratio * peak
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


@dataclass
class History:
    """Losses per step and evaluation results per evaluation step, for plotting."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)

    def eval_series(self, key: str) -> list[float]:
        return [result[key] for result in self.evals]


def train(
    model: torch.nn.Module,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    learning_rate: float,
    device: torch.device,
    precision: Precision | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
    eval_every: int = 100,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    clip_norm: float = 1.0,
    description: str = "training",
) -> History:
    """Train ``model`` for ``steps`` optimiser steps with AdamW and a warm-up + cosine schedule.

    ``next_batch()`` returns (inputs, targets) on ``device``; the model returns
    (logits, loss) when given targets. ``evaluate()`` is called every
    ``eval_every`` steps and at the end, in eval mode without gradients.
    """
    precision = precision or pick_precision(device)
    warmup_steps = max(1, steps // 20) if warmup_steps is None else warmup_steps
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scaler = grad_scaler(device, precision)
    history = History()

    def run_evaluation(step: int) -> None:
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            result = evaluate()
        model.train()
        history.eval_steps.append(step)
        history.evals.append(result)

    progress = tqdm(range(steps), desc=description, leave=True)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = cosine_learning_rate(step, steps, learning_rate, warmup_steps)
        inputs, targets = next_batch()
        with autocast(device, precision):
            _, loss = model(inputs, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        scaler.step(optimizer)
        scaler.update()
        history.steps.append(step)
        history.losses.append(loss.item())
        if evaluate is not None and (step % eval_every == 0 or step == steps - 1):
            run_evaluation(step)
            progress.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in history.evals[-1].items()})
    model.eval()
    return history
