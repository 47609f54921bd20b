"""The course's one training loop, readable top to bottom: batch, forward, loss, backward, clip, step.

Around that core: a warm-up + cosine learning-rate schedule (or a trapezoidal one: warm-up,
constant, linear decay), AdamW or Muon for the hidden matrices (``llmlab.optimizers``), gradient clipping (the norm before
clipping is recorded), mixed precision where the GPU supports it, periodic evaluation, a
progress bar, and checkpoints that resume exactly where a run was interrupted. Every lab trains
with it: the character models of Lab 1, the reversal task of Lab 2, the GPT of Lab 3 and the
intent classifiers of Lab 4.

The same loop trains data-parallel across processes started by ``torchrun``
(``start_process_group``, then ``train`` as usual): each process computes gradients on its own
share of every batch and PyTorch's DistributedDataParallel averages them before the step.
Gradient accumulation (``accumulation_steps``) splits a batch into micro-batches that fit in
memory. Without a process group the loop runs exactly as it always has.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from llmlab.checkpoint import load_checkpoint, save_checkpoint
from llmlab.metrics import token_cross_entropy
from llmlab.optimizers import MuonWithAdamW
from llmlab.progress import tqdm
from llmlab.runtime import Precision, autocast, grad_scaler, pick_device, pick_precision, shown_path


def cosine_learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int,
                         floor_ratio: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to
    ``floor_ratio · peak`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = floor_ratio * peak
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def trapezoidal_learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, decay_steps: int,
                              floor_ratio: float = 0.0) -> float:
    """Warm-up, stable, decay: linear warm-up to ``peak``, ``peak`` held, then a straight line down to
    ``floor_ratio · peak`` over the last ``decay_steps`` steps (reached at ``total_steps``).

    Unlike the cosine, the rate stays at its peak for most of the run; the decay at the end is what
    brings the loss down (Hägele et al. 2024), and decaying to zero does best (Bergsma et al. 2025).
    """
    if not 0 < decay_steps <= total_steps:
        raise ValueError(f"decay_steps must be between 1 and total_steps ({total_steps}), got {decay_steps}")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start) / decay_steps)
    return peak - (1 - floor_ratio) * peak * progress


@dataclass
class History:
    """What a run measured, per step and per evaluation, for plotting and for resuming."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # before clipping
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


def adamw_groups(model: torch.nn.Module, learning_rate: float,
                 weight_decay: float) -> list[dict]:
    """Decay matrices (weights of linear layers and embeddings) but not biases and norm
    gains, all at one peak rate."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in parameters if p.dim() >= 2],
         "weight_decay": weight_decay, "peak_learning_rate": learning_rate},
        {"params": [p for p in parameters if p.dim() < 2],
         "weight_decay": 0.0, "peak_learning_rate": learning_rate},
    ]


def next_token_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """The default loss: ``batch`` is (inputs, targets) and the model maps inputs to logits over the targets' classes."""
    inputs, targets = batch
    return token_cross_entropy(model(inputs), targets)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_norm: float) -> float:
    """One optimiser step from a loss: clear old gradients, backward, clip, step. Returns the gradient norm before clipping.

    The order matters: gradients accumulate unless cleared, and clipping must come after the
    backward pass and before the step. With fp16 the scaler scales the loss up before the
    backward pass (so small gradients do not round to zero) and the gradients back down before
    clipping; it skips the step when a gradient overflowed.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return clip_and_step(optimizer, scaler, clip_norm)


def clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_norm: float) -> float:
    """The second half of ``backward_and_step``, once the gradients are in ``.grad``: unscale, clip, step.

    Returns the gradient norm before clipping.
    """
    scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
    gradient_norm = torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return gradient_norm.item()


# --- data parallelism: several processes, one model ----------------------------------------------------


def data_parallel_processes() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) unless a torch.distributed process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def start_process_group() -> torch.device:
    """Join the process group that ``torchrun`` describes in its environment; returns this process's device.

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (and where to meet, MASTER_ADDR
    and MASTER_PORT) in every process it starts. With CUDA each process drives one GPU, the one
    numbered by its LOCAL_RANK, and the processes talk over NCCL; on the CPU they use gloo. Started
    without torchrun (no WORLD_SIZE) nothing is joined and the device is ``pick_device()``'s.
    """
    if "WORLD_SIZE" not in os.environ:
        return pick_device()
    if torch.cuda.is_available():
        processes_here, gpus = int(os.environ["LOCAL_WORLD_SIZE"]), torch.cuda.device_count()
        if processes_here > gpus:
            raise ValueError(f"torchrun starts {processes_here} processes on this machine but it has {gpus} GPU(s), "
                             f"one per process: use --nproc_per_node={gpus} or fewer")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device


def stop_process_group() -> None:
    """Leave the process group, if one was joined (the counterpart of ``start_process_group``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def accumulate_gradients(model: torch.nn.Module, next_batch: Callable[[], Any], loss_fn,
                         device: torch.device, precision: Precision,
                         scaler: torch.amp.GradScaler,
                         accumulation_steps: int = 1) -> float:
    """Forward and backward over ``accumulation_steps`` micro-batches.

    Returns their mean loss. Each micro-batch's loss is divided by
    ``accumulation_steps`` before its backward pass, so the gradients that add up in
    ``.grad`` are those of the mean loss over all micro-batches, as if they had been one
    batch. Under DistributedDataParallel each backward pass would also average the
    gradients across processes; ``no_sync`` skips that on all but the last micro-batch,
    since averaging the sum once gives the same result. The loss returned is the mean
    over the processes too, so every process logs the same number.
    """
    step_loss = 0.0
    for micro_step in range(accumulation_steps):
        batch = next_batch()
        communicate = (micro_step == accumulation_steps - 1
                       or not isinstance(model, DistributedDataParallel))
        with contextlib.nullcontext() if communicate else model.no_sync():
            with autocast(device, precision):
                loss = loss_fn(model, batch) / accumulation_steps
            scaler.scale(loss).backward()
        step_loss = step_loss + loss.detach()
    _, processes = data_parallel_processes()
    if processes > 1:
        dist.all_reduce(step_loss)  # a sum over the processes
        step_loss = step_loss / processes
    return step_loss.item()


class SettingsMismatch(ValueError):
    """A checkpoint was written by a run with other settings."""


def _check_same_run(path, saved: dict | None, current: dict | None) -> None:
    if not current:
        return
    saved = saved or {}
    differences = [f"{key} {saved.get(key, 'unset')!r} there, {current.get(key, 'unset')!r} here"
                   for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if differences:
        raise SettingsMismatch(f"checkpoint {Path(path).name} was written with other settings ({'; '.join(differences[:4])}): "
                               "delete it, or resume with the settings it was written with")


def train(
    model: torch.nn.Module,
    next_batch: Callable[[], Any],
    steps: int,
    learning_rate: float,
    device: torch.device,
    precision: Precision | None = None,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] = next_token_loss,
    parameter_groups: list[dict] | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
    eval_every: int = 100,
    warmup_steps: int | None = None,
    floor_ratio: float = 0.1,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.99),
    clip_norm: float = 1.0,
    description: str = "training",
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    data_generator=None,
    stop_after_step: int | None = None,
    run_settings: dict | None = None,
    checkpoint_metadata: dict | None = None,
    accumulation_steps: int = 1,
    decay_steps: int | None = None,
) -> History:
    """Train ``model`` for ``steps`` optimiser steps with AdamW (or Muon) and a warm-up + cosine (or trapezoidal) schedule.

    ``next_batch()`` returns a batch on ``device`` and ``loss_fn(model, batch)`` its mean loss
    (by default the cross-entropy of ``model(inputs)`` against ``targets``). AdamW decays only
    matrices, at one peak rate ``learning_rate``; ``parameter_groups`` (dicts with ``params``,
    ``weight_decay`` and ``peak_learning_rate``) replaces that, e.g. to give a new head a higher
    rate than a pretrained body. Each group's rate follows the schedule from its own peak down to
    ``floor_ratio`` of it; with ``decay_steps`` the schedule is ``trapezoidal_learning_rate`` instead of
    the cosine. Groups marked ``"algorithm": "muon"`` (``optimizers.muon_groups``) make the optimiser
    ``optimizers.MuonWithAdamW``: Muon for those, AdamW for the rest. ``evaluate()`` runs every ``eval_every`` steps and at the end, in eval
    mode without gradients.

    With ``checkpoint_path`` the run saves a checkpoint every ``checkpoint_every`` steps and at
    the end; ``resume=True`` continues from that file if it exists. ``run_settings`` (what
    defines the run: model shape, data, schedule) is stored in the checkpoint, and resuming from
    one written with other settings stops with an error that names the differences. Give the
    ``torch.Generator`` that ``next_batch`` draws from (or any object with ``get_state()``
    returning a tensor and ``set_state(tensor)``, such as ``intents.BatchSchedule``) as
    ``data_generator`` so that a resumed run sees exactly the batches an uninterrupted run would. ``stop_after_step`` ends the run
    early (after that step), as an interruption would.

    ``accumulation_steps`` > 1 calls ``next_batch()`` that many times per step and adds up the
    gradients of these micro-batches before the one optimiser step (``accumulate_gradients``).
    When a torch.distributed process group is running (``start_process_group``), every process
    calls ``train`` with its own share of the data in ``next_batch``: the model is wrapped in
    DistributedDataParallel, which averages the gradients across processes during the backward
    pass, the losses recorded are means over the processes, process 0 alone shows the progress
    bar and writes the checkpoint (with every process's random states), and on ``resume`` every
    process reads it.
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be at least 1, got {accumulation_steps}")
    precision = precision or pick_precision(device)
    warmup_steps = max(1, steps // 20) if warmup_steps is None else warmup_steps
    model.to(device).train()
    groups = parameter_groups if parameter_groups is not None else adamw_groups(model, learning_rate, weight_decay)
    uses_muon = any(group.get("algorithm") == "muon" for group in groups)
    optimizer = (MuonWithAdamW if uses_muon else torch.optim.AdamW)(groups, lr=learning_rate, betas=betas)
    scaler = grad_scaler(device, precision)
    history, first_step, seconds_before = History(), 0, 0.0
    rank, processes = data_parallel_processes()
    is_main = rank == 0  # the process that prints and writes checkpoints

    def own(name: str) -> str:
        """The name of this process's random state in a checkpoint: process 0's under the plain name, as in a one-process run."""
        return name if rank == 0 else f"{name}.rank{rank}"

    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        first_step, rng, saved = load_checkpoint(checkpoint_path, model, optimizer, before_loading=lambda metadata: _check_same_run(
            checkpoint_path, metadata.get("run_settings"), run_settings))
        history = History(**saved["history"])
        seconds_before = saved.get("training_seconds", 0.0)
        if scaler.is_enabled() and "grad_scaler" in saved:
            scaler.load_state_dict(saved["grad_scaler"])
        # A checkpoint of fewer processes has no random state for this one: it keeps its own (same batches, other dropout masks).
        if own("torch") in rng:
            torch.set_rng_state(rng[own("torch")])
        if data_generator is not None:
            data_generator.set_state(rng["data"])  # the same in every process
        if device.type == "cuda" and own("cuda") in rng:
            torch.cuda.set_rng_state(rng[own("cuda")], device)
        if is_main:
            print(f"resumed from {shown_path(checkpoint_path)} at step {first_step} of {steps} (delete that file to train from scratch)")

    # Wrapped after loading, so every process starts from the same weights; the optimiser keeps the model's own parameters.
    trained = DistributedDataParallel(model) if processes > 1 else model
    started = time.perf_counter()

    def training_seconds() -> float:
        return seconds_before + time.perf_counter() - started

    def save(next_step: int) -> None:
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        if processes > 1:  # every process gets here at the same step, so gathering their random states is safe
            every_process = [None] * processes
            dist.all_gather_object(every_process, rng)
            rng = {f"{name}.rank{r}" if r else name: state for r, states in enumerate(every_process) for name, state in states.items()}
        if not is_main:
            return
        if data_generator is not None:
            rng["data"] = data_generator.get_state()
        metadata = {"history": asdict(history), "training_seconds": training_seconds(), "run_settings": run_settings or {},
                    **(checkpoint_metadata or {})}
        if scaler.is_enabled():
            metadata["grad_scaler"] = scaler.state_dict()  # the fp16 loss scale, so a resumed run keeps it
        save_checkpoint(checkpoint_path, model, optimizer, next_step, rng, metadata)  # the unwrapped model: it loads into a plain GPT

    def run_evaluation(step: int) -> None:
        # Every process evaluates its identical copy of the model, so all return the same History.
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            result = evaluate()
        model.train()
        history.eval_steps.append(step)
        history.evals.append(result)
        history.eval_seconds.append(training_seconds())

    last_step = steps - 1 if stop_after_step is None else min(steps - 1, stop_after_step)
    progress = tqdm(range(first_step, last_step + 1), desc=description, initial=first_step, total=steps, leave=True,
                    disable=not is_main)
    for step in progress:
        for group in optimizer.param_groups:
            peak = group.get("peak_learning_rate", learning_rate)
            if decay_steps is None:
                group["lr"] = cosine_learning_rate(
                    step, steps, peak, warmup_steps, floor_ratio
                )
            else:
                group["lr"] = trapezoidal_learning_rate(
                    step, steps, peak, warmup_steps, decay_steps, floor_ratio
                )
        optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(trained, next_batch, loss_fn, device, precision, scaler,
                                    accumulation_steps)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; "
                                     "lower the learning rate or check the data")
        gradient_norm = clip_and_step(optimizer, scaler, clip_norm)
        history.steps.append(step)
        history.losses.append(loss)
        history.grad_norms.append(gradient_norm)
        if evaluate is not None and (step % eval_every == 0 or step == steps - 1):
            run_evaluation(step)
            progress.set_postfix(
                loss=f"{loss:.3f}", **{k: f"{v:.3f}" for k, v in history.evals[-1].items()})
        elif step % 10 == 0:
            progress.set_postfix(loss=f"{loss:.3f}")
        if checkpoint_path is not None and (
                step == last_step
                or (checkpoint_every and (step + 1) % checkpoint_every == 0)):
            save(step + 1)
    progress.close()
    if processes > 1:
        dist.barrier()  # no process returns before process 0 has written the last checkpoint
    model.eval()
    return history
