"""A training loop you can read top to bottom: sample a batch, forward, loss, backward, step.

Around that core: a warm-up + cosine learning-rate schedule, gradient clipping,
mixed precision where the GPU supports it, periodic evaluation, a progress bar,
and checkpoints that resume exactly where a run was interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmlab.checkpoint import load_checkpoint, save_checkpoint
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
    """Losses per step and evaluation results per evaluation step, for plotting and for resuming."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)  # training wall time at each evaluation

    def eval_series(self, key: str) -> list[float]:
        return [result[key] for result in self.evals]

    def first_time_at_most(self, key: str, threshold: float) -> float | None:
        """Wall seconds of training until ``key`` first reached ``threshold`` or lower (None if it never did)."""
        for seconds, result in zip(self.eval_seconds, self.evals):
            if result[key] <= threshold:
                return seconds
        return None


def adamw_with_decay_on_matrices(model: torch.nn.Module, learning_rate: float, weight_decay: float, betas=(0.9, 0.99)):
    """AdamW that decays matrices (weights of linear layers and embeddings) but not biases and norm gains."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in parameters if p.dim() >= 2]
    others = [p for p in parameters if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


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
    betas: tuple[float, float] = (0.9, 0.99),
    clip_norm: float = 1.0,
    description: str = "training",
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    data_generator: torch.Generator | None = None,
    stop_after_step: int | None = None,
    checkpoint_metadata: dict | None = None,
) -> History:
    """Train ``model`` for ``steps`` optimiser steps with AdamW and a warm-up + cosine schedule.

    ``next_batch()`` returns (inputs, targets) on ``device``; the model returns
    (logits, loss) when given targets. ``evaluate()`` runs every ``eval_every``
    steps and at the end, in eval mode without gradients.

    With ``checkpoint_path`` the run saves a checkpoint every ``checkpoint_every``
    steps and at the end; ``resume=True`` continues from that file if it exists.
    Give the ``torch.Generator`` that ``next_batch`` draws from as ``data_generator``
    so that a resumed run sees exactly the batches an uninterrupted run would.
    ``stop_after_step`` ends the run early (after that step), as an interruption would.
    """
    precision = precision or pick_precision(device)
    warmup_steps = max(1, steps // 20) if warmup_steps is None else warmup_steps
    model.to(device).train()
    optimizer = adamw_with_decay_on_matrices(model, learning_rate, weight_decay, betas)
    scaler = grad_scaler(device, precision)
    history, first_step, seconds_before = History(), 0, 0.0

    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        first_step, rng, saved = load_checkpoint(checkpoint_path, model, optimizer)
        history = History(**saved["history"])
        seconds_before = saved.get("training_seconds", 0.0)
        if scaler.is_enabled() and "grad_scaler" in saved:
            scaler.load_state_dict(saved["grad_scaler"])
        torch.set_rng_state(rng["torch"])
        if data_generator is not None:
            data_generator.set_state(rng["data"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
        print(f"resumed from {Path(checkpoint_path).name} at step {first_step}")

    started = time.perf_counter()

    def training_seconds() -> float:
        return seconds_before + time.perf_counter() - started

    def save(next_step: int) -> None:
        rng = {"torch": torch.get_rng_state()}
        if data_generator is not None:
            rng["data"] = data_generator.get_state()
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        metadata = {"history": asdict(history), "training_seconds": training_seconds(), **(checkpoint_metadata or {})}
        if scaler.is_enabled():
            metadata["grad_scaler"] = scaler.state_dict()  # the fp16 loss scale, so a resumed run keeps it
        save_checkpoint(checkpoint_path, model, optimizer, next_step, rng, metadata)

    def run_evaluation(step: int) -> None:
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            result = evaluate()
        model.train()
        history.eval_steps.append(step)
        history.evals.append(result)
        history.eval_seconds.append(training_seconds())

    last_step = steps - 1 if stop_after_step is None else min(steps - 1, stop_after_step)
    progress = tqdm(range(first_step, last_step + 1), desc=description, initial=first_step, total=steps, leave=True)
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
        if checkpoint_path is not None and (step == last_step or (checkpoint_every and (step + 1) % checkpoint_every == 0)):
            save(step + 1)
    progress.close()
    model.eval()
    return history
