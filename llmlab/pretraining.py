"""Pretraining a small character-level GPT on Tiny Shakespeare (Lab 3).

``pretrain(settings)`` puts the pieces together: the corpus and batches of ``llmlab.lm``, the
GPT of ``llmlab.model`` and the loop of ``llmlab.training``, with checkpoints so that a run
resumes where it was interrupted. ``benchmark`` is what ``python -m llmlab.bench pretrain`` runs.

The isoFLOP study of Lab 3, in the order it runs: ``steps_for_budget`` (how long a size trains
to spend a compute budget C = 6·N·D), ``isoflop_run`` (one size at one budget),
``isoflop_study`` (every size at every budget), ``isoflop_frontier`` (per budget, the minimum of a
parabola of loss against ln N) and ``frontier_fit`` (N_opt = k·C^a across budgets).

The same run from the command line, in one process or data-parallel in N (Chapter 3, "More than one GPU"):

    python -m llmlab.pretraining --preset smoke
    torchrun --standalone --nproc_per_node=N -m llmlab.pretraining --preset smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llmlab.costs import training_flops, transformer_matrix_parameters
from llmlab.lm import (
    CharCorpus,
    HeldOutLoss,
    random_windows,
    shakespeare_corpus,
    validation_loss,
)
from llmlab.metrics import perplexity
from llmlab.model import GPT, Block, GPTConfig
from llmlab.optimizers import muon_groups
from llmlab.presets import PRESET_NAMES, lab_settings
from llmlab.runtime import (
    describe_machine,
    pick_device,
    pick_precision,
    preset_name,
    seed_everything,
)
from llmlab.training import (
    History,
    adamw_groups,
    data_parallel_processes,
    start_process_group,
    stop_process_group,
    train,
)

# The settings that define a run: a checkpoint written with other values of these is not resumed.
RUN_KEYS = ("context", "d_model", "n_heads", "n_layers", "dropout", "rotary", "bias", "batch_size", "steps",
            "learning_rate", "warmup_steps", "weight_decay", "betas", "clip_norm", "characters")

# What a preset that leaves these out trains with: GPT-2's architecture, AdamW and a cosine decay to 10 % of the peak.
# They join a checkpoint's run settings only where a preset sets them, so older checkpoints still resume.
RECIPE_DEFAULTS = {"tie_weights": True, "activation": "gelu", "zero_init_projections": False,
                   "logit_softcap": None, "optimizer": "adamw", "muon_learning_rate": None,
                   "muon_weight_decay": 0.0, "schedule": "cosine", "decay_fraction": None,
                   "floor_ratio": 0.1}


def run_settings(settings: dict, seed: int) -> dict:
    """What a checkpoint records of the run that wrote it; a later run (a resume, Lab 5 loading Lab 3's model) compares
    this against its own to tell whether the checkpoint is the run it wants."""
    return {key: settings.get(key) for key in RUN_KEYS} | {key: settings[key] for key in RECIPE_DEFAULTS if key in settings} \
        | {"seed": seed}


def recipe(settings: dict, name: str):
    """A recipe setting of ``settings``, or what a preset without it trains with (``RECIPE_DEFAULTS``)."""
    return settings.get(name, RECIPE_DEFAULTS[name])


def baseline_settings(settings: dict) -> dict:
    """The settings with GPT-2's recipe (``RECIPE_DEFAULTS``) and the preset's ``baseline`` values (the batch,
    steps and rates it trained with before it took the speedrun's changes), where it has them."""
    return settings | RECIPE_DEFAULTS | settings.get("baseline", {})


def model_config(settings: dict, vocab_size: int) -> GPTConfig:
    return GPTConfig(
        vocab_size=vocab_size, context=settings["context"], d_model=settings["d_model"], n_heads=settings["n_heads"],
        n_layers=settings["n_layers"], dropout=settings["dropout"], rotary=settings["rotary"], bias=settings["bias"],
        tie_weights=recipe(settings, "tie_weights"), activation=recipe(settings, "activation"),
        zero_init_projections=recipe(settings, "zero_init_projections"), logit_softcap=recipe(settings, "logit_softcap"),
    )


def parameter_groups(settings: dict, model: GPT) -> list[dict]:
    """AdamW for every parameter (``training.adamw_groups``), or, with ``optimizer="muon"``, Muon for the
    hidden matrices at ``muon_learning_rate`` (decay ``muon_weight_decay``) and AdamW for the rest at ``learning_rate``."""
    name = recipe(settings, "optimizer")
    if name == "adamw":
        return adamw_groups(model, settings["learning_rate"], settings["weight_decay"])
    if name == "muon":
        return muon_groups(model, settings["learning_rate"], settings["muon_learning_rate"], settings["weight_decay"],
                           muon_weight_decay=recipe(settings, "muon_weight_decay"))
    raise ValueError(f"optimizer must be 'adamw' or 'muon', got {name!r}")


def decay_steps(settings: dict) -> int | None:
    """The trapezoidal schedule's decay, ``decay_fraction`` of the steps (at least 1); None for the cosine."""
    schedule = recipe(settings, "schedule")
    if schedule == "cosine":
        return None
    if schedule != "trapezoidal":
        raise ValueError(f"schedule must be 'cosine' or 'trapezoidal', got {schedule!r}")
    return max(1, round(settings["steps"] * settings["decay_fraction"]))


def proportional_warmup(settings: dict, steps: int) -> int:
    """A warm-up that is the same fraction of ``steps`` as ``warmup_steps`` is of the preset's ``steps`` (at least 1)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return max(1, round(steps * settings["warmup_steps"] / settings["steps"]))


def micro_batch_size(batch_size: int, processes: int = 1, accumulation_steps: int = 1) -> int:
    """The windows each process puts through the model at once when ``batch_size`` windows make one optimiser step."""
    if batch_size < 1 or processes < 1 or accumulation_steps < 1:
        raise ValueError(f"batch_size, processes and accumulation_steps must be at least 1, "
                         f"got {batch_size}, {processes} and {accumulation_steps}")
    if batch_size % (processes * accumulation_steps):
        raise ValueError(f"batch_size {batch_size} does not split evenly into {processes} process(es) × {accumulation_steps} "
                         f"accumulation step(s): use a multiple of {processes * accumulation_steps}")
    return batch_size // (processes * accumulation_steps)


class ShardedWindows:
    """This process's micro-batches of random training windows, cut from one batch per optimiser step.

    Every process draws the step's ``batch_size`` windows with its own copy of the same seeded
    generator, so all draw the same windows; process ``rank`` of ``processes`` keeps its share
    and hands it to ``train`` in ``accumulation_steps`` micro-batches, one per call. One process
    with the whole batch therefore sees exactly the windows that N processes see together, and
    the generator's state between two steps is the same in every process (what a checkpoint saves).
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, context: int, generator: torch.Generator, device: torch.device,
                 processes: int = 1, rank: int = 0, accumulation_steps: int = 1):
        self.micro_batch = micro_batch_size(batch_size, processes, accumulation_steps)
        share = batch_size // processes
        self.ids, self.batch_size, self.context, self.generator, self.device = ids, batch_size, context, generator, device
        self.mine = slice(rank * share, (rank + 1) * share)
        self.waiting: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.waiting:  # a new optimiser step: draw the whole batch (small index arithmetic), keep this process's share
            inputs, targets = random_windows(self.ids, self.batch_size, self.context, self.generator)
            self.waiting = list(zip(inputs[self.mine].split(self.micro_batch), targets[self.mine].split(self.micro_batch)))
        inputs, targets = self.waiting.pop(0)
        return inputs.to(self.device), targets.to(self.device)


def pretrain(settings: dict, device: torch.device | None = None, corpus: CharCorpus | None = None, seed: int = 0,
             checkpoint_path: str | Path | None = None, resume: bool = False, stop_after_step: int | None = None,
             description: str = "pretraining", block_cls=Block, accumulation_steps: int = 1) -> tuple[GPT, History, CharCorpus]:
    """Train a character-level GPT on Tiny Shakespeare with the given preset settings.

    The validation loss during training is measured on ``eval_windows`` windows spread evenly
    over the validation split, the same ones at every evaluation. ``block_cls`` builds the
    model's blocks (Lab 3 trains with the learner's own); gradients are clipped to
    ``settings["clip_norm"]`` (1.0 if unset).

    ``settings["batch_size"]`` windows make one optimiser step whatever runs it: under torchrun
    (``python -m llmlab.pretraining``) each of N processes takes a 1/N share of every batch
    (``ShardedWindows``), and ``accumulation_steps`` splits a process's share further into
    micro-batches. Either way the step averages the gradients of the same windows, so the
    learning rate and the rest of the recipe need no change.
    """
    device = device or pick_device()
    corpus = corpus or shakespeare_corpus(settings.get("characters"))
    rank, processes = data_parallel_processes()
    seed_everything(seed)
    model = GPT(model_config(settings, corpus.tokenizer.vocab_size), block_cls=block_cls)  # the same initial weights everywhere
    if rank > 0:
        torch.manual_seed(seed + 1_000 * rank)  # but each process its own dropout masks (process 0 keeps a one-process run's)
    data_generator = torch.Generator().manual_seed(seed + 1)
    windows = ShardedWindows(corpus.train, settings["batch_size"], settings["context"], data_generator, device,
                             processes=processes, rank=rank, accumulation_steps=accumulation_steps)
    validation = HeldOutLoss(corpus.val, settings["context"], max_windows=settings["eval_windows"])
    history = train(
        model,
        next_batch=windows,
        steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        device=device,
        precision=pick_precision(device),
        parameter_groups=parameter_groups(settings, model),
        floor_ratio=recipe(settings, "floor_ratio"),
        decay_steps=decay_steps(settings),
        evaluate=lambda: {"val_loss": validation(model)},
        eval_every=settings["eval_every"],
        warmup_steps=settings["warmup_steps"],
        weight_decay=settings["weight_decay"],
        betas=tuple(settings["betas"]),
        clip_norm=settings.get("clip_norm", 1.0),
        description=description,
        checkpoint_path=checkpoint_path,
        checkpoint_every=settings.get("checkpoint_every"),
        resume=resume,
        data_generator=data_generator,
        stop_after_step=stop_after_step,
        # the batch is the whole step's, so a run may resume with another number of processes or micro-batches
        run_settings=run_settings(settings, seed),
        checkpoint_metadata={"alphabet": corpus.tokenizer.alphabet, "processes": processes, "accumulation_steps": accumulation_steps},
        accumulation_steps=accumulation_steps,
    )
    return model, history, corpus


# --- the isoFLOP study ------------------------------------------------------------------------------------


def matrix_parameters(settings: dict, vocab_size: int) -> int:
    """Chapter 3's N for the model these settings build: 12·L·d² + V·d."""
    return transformer_matrix_parameters(settings["n_layers"], settings["d_model"], vocab_size)


def steps_for_budget(flops: float, parameters: int, tokens_per_step: int) -> int:
    """The whole number of optimiser steps whose 6·N·D comes closest to ``flops`` (at least one)."""
    if flops <= 0 or parameters <= 0 or tokens_per_step <= 0:
        raise ValueError(f"flops, parameters and tokens_per_step must be positive, got {flops}, {parameters}, {tokens_per_step}")
    return max(1, round(flops / (6 * parameters * tokens_per_step)))


def sized(settings: dict, d_model: int, n_layers: int) -> dict:
    """The settings with another width and depth; one head per 32 channels (at least one)."""
    n_heads = max(1, d_model // 32)
    if d_model % n_heads or (d_model // n_heads) % 2:
        raise ValueError(f"d_model={d_model} does not split into {n_heads} heads of an even size")
    return {**settings, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads}


def isoflop_run(settings: dict, d_model: int, n_layers: int, flops: float, device: torch.device, corpus: CharCorpus,
                seed: int = 0) -> dict:
    """Train one size for the steps that spend ``flops``, with the preset's recipe and a proportional warm-up.

    Returns the size, N, steps, the compute actually spent (6·N·D) and the validation loss at the
    end, on the preset's ``eval_windows`` validation windows (the same for every run).
    """
    run = sized(settings, d_model, n_layers)
    parameters = matrix_parameters(run, corpus.tokenizer.vocab_size)
    tokens_per_step = run["batch_size"] * run["context"]
    steps = steps_for_budget(flops, parameters, tokens_per_step)
    run.update(steps=steps, warmup_steps=proportional_warmup(settings, steps), eval_every=steps)
    started = time.perf_counter()
    _, history, _ = pretrain(run, device, corpus, seed=seed, description=f"C={flops:.1e}: d_model {d_model}, {n_layers} layers")
    return {"budget": flops, "d_model": d_model, "n_layers": n_layers, "parameters": parameters, "steps": steps,
            "flops": training_flops(parameters, steps * tokens_per_step), "val_loss": history.evals[-1]["val_loss"],
            "seconds": time.perf_counter() - started}


def isoflop_study(settings: dict, device: torch.device, corpus: CharCorpus) -> list[dict]:
    """Every size of ``scaling_sizes`` ([d_model, n_layers] pairs) at every budget of ``scaling_budgets`` (FLOPs)."""
    if len(settings["scaling_sizes"]) < 3:
        raise ValueError(f"a parabola needs at least 3 sizes per budget, got {len(settings['scaling_sizes'])}")
    return [isoflop_run(settings, d_model, n_layers, flops, device, corpus)
            for flops in settings["scaling_budgets"] for d_model, n_layers in settings["scaling_sizes"]]


def fit_parabola(parameters, losses) -> np.ndarray:
    """Least-squares coefficients (a, b, c) of loss ≈ a·x² + b·x + c with x = ln N."""
    if len(parameters) != len(losses) or len(set(parameters)) < 3:
        raise ValueError(f"need at least 3 distinct sizes, one loss each, got {len(parameters)} sizes and {len(losses)} losses")
    return np.polyfit(np.log(np.asarray(parameters, dtype=float)), np.asarray(losses, dtype=float), 2)


def parabola_minimum(parameters, losses) -> float | None:
    """The N at the minimum of the parabola fitted to loss against ln N (it may lie outside the sizes tried);
    None when the fitted parabola opens downwards and so has no minimum."""
    a, b, _ = fit_parabola(parameters, losses)
    return math.exp(-b / (2 * a)) if a > 0 else None


def fit_power_law(budgets, optimal_parameters) -> tuple[float, float]:
    """(a, k) of N_opt = k·C^a, a least-squares line through (ln C, ln N_opt)."""
    if len(budgets) != len(optimal_parameters) or len(set(budgets)) < 2:
        raise ValueError(f"need at least 2 distinct budgets, one N_opt each, got {len(budgets)} and {len(optimal_parameters)}")
    if min(budgets) <= 0 or min(optimal_parameters) <= 0:
        raise ValueError("budgets and optimal sizes must be positive")
    exponent, intercept = np.polyfit(np.log(budgets), np.log(optimal_parameters), 1)
    return float(exponent), float(math.exp(intercept))


def isoflop_frontier(results: list[dict]) -> list[dict]:
    """Per budget: the loss-optimal N (``parabola_minimum``, None if there is none), the range of sizes tried
    and the best size trained."""
    frontier = []
    for budget in sorted({result["budget"] for result in results}):
        runs = [result for result in results if result["budget"] == budget]
        sizes = [run["parameters"] for run in runs]
        best = min(runs, key=lambda run: run["val_loss"])
        frontier.append({"budget": budget, "optimal_parameters": parabola_minimum(sizes, [run["val_loss"] for run in runs]),
                         "smallest": min(sizes), "largest": max(sizes), "best_trained_parameters": best["parameters"]})
    return frontier


def frontier_fit(frontier: list[dict]) -> tuple[float, float] | None:
    """``fit_power_law`` through the budgets whose profile has a minimum; None if fewer than two have one."""
    points = [(point["budget"], point["optimal_parameters"]) for point in frontier if point["optimal_parameters"] is not None]
    return fit_power_law(*zip(*points)) if len(points) >= 2 else None


def benchmark(preset: str, milestones=(2.5, 2.2, 2.0, 1.9, 1.88)) -> dict:
    """Train Lab 3's model with a preset and print seconds to each validation-loss milestone and the final loss."""
    settings = lab_settings("03_pretraining", preset)
    device = pick_device()
    process_started = time.perf_counter()
    corpus = shakespeare_corpus(settings.get("characters"))
    model, history, _ = pretrain(settings, device, corpus, description=f"pretrain ({preset})")
    validation = validation_loss(corpus.val, settings["context"])
    final_loss = validation(model)
    tokens = settings["steps"] * settings["batch_size"] * settings["context"]
    report = {
        "preset": preset,
        "machine": describe_machine(device),
        "parameters": model.parameter_count(),
        "training_seconds": history.eval_seconds[-1],
        "seconds_since_start": time.perf_counter() - process_started,
        "milestones": {str(m): history.first_time_at_most("val_loss", m) for m in milestones},
        "val_loss_last_eval": history.evals[-1]["val_loss"],
        "val_loss_final": final_loss,
        "final_eval_tokens": validation.tokens,
        "training_tokens": tokens,
        # N as Chapter 3 counts it: the weights in matrix products
        "training_flops_6ND": training_flops(transformer_matrix_parameters(settings["n_layers"], settings["d_model"],
                                                                           corpus.tokenizer.vocab_size), tokens),
    }
    print(f"bench pretrain | preset {preset} | {report['machine']} | {report['parameters']:,} parameters | {settings['steps']} steps")
    for milestone, seconds in report["milestones"].items():
        shown = f"{seconds:6.1f} s" if seconds is not None else "   not reached"
        print(f"  val loss ≤ {milestone:<5}: {shown}")
    print(f"  training wall time: {report['training_seconds']:.1f} s (process: {report['seconds_since_start']:.1f} s)")
    print(f"  val loss at the last evaluation ({settings['eval_windows']} windows of {settings['context']}): {report['val_loss_last_eval']:.4f}")
    print(f"  val loss, final, on the whole validation split ({report['final_eval_tokens']:,} characters, "
          f"each with ≥ {validation.window - validation.stride + 1} before it): {final_loss:.4f} (perplexity {perplexity(final_loss):.2f})")
    print(json.dumps(report))
    return report


# --- the command line: one process, or data-parallel under torchrun ------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m llmlab.pretraining``: Lab 3's ``pretrain`` from a terminal, alone or as one of torchrun's N processes."""
    parser = argparse.ArgumentParser(
        prog="python -m llmlab.pretraining",
        description="Pretrain Lab 3's GPT on Tiny Shakespeare. Data-parallel on N GPUs (or N CPU processes): "
                    "torchrun --standalone --nproc_per_node=N -m llmlab.pretraining [options]")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None, help="default: as LLMLAB_PRESET, else gpu with CUDA, else cpu")
    parser.add_argument("--checkpoint", type=Path, default=None, help="save checkpoints here (process 0 writes them)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if that file exists")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the preset's; the warm-up keeps its share)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per optimiser step, all processes together (default: the preset's)")
    parser.add_argument("--accumulation-steps", type=int, default=1, help="micro-batches per process and optimiser step")
    parser.add_argument("--stop-after-step", type=int, default=None, help="stop after this step, as an interruption would")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    if arguments.resume and arguments.checkpoint is None:
        parser.error("--resume needs --checkpoint PATH")
    # torchrun tells each process its rank and the number of processes; a plain `python -m` run is process 0 of 1.
    processes, is_main = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0
    preset = arguments.preset or preset_name()
    settings = lab_settings("03_pretraining", preset)
    try:
        if arguments.steps is not None:
            settings.update(steps=arguments.steps, warmup_steps=proportional_warmup(settings, arguments.steps))
        if arguments.batch_size is not None:
            settings["batch_size"] = arguments.batch_size
        # Checked before the processes meet, so that each stops with this message rather than wait for the others.
        micro_batch = micro_batch_size(settings["batch_size"], processes, arguments.accumulation_steps)
        device = start_process_group()
    except ValueError as error:
        # Every process says it: torchrun stops the others as soon as the first one exits, so process 0 might not get to.
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        backend = f" ({torch.distributed.get_backend()})" if processes > 1 else ""
        if is_main:
            print(f"pretraining | preset {preset} | {processes} process(es){backend} on {describe_machine(device)} | "
                  f"{settings['batch_size']} windows per step = {processes} process(es) × {arguments.accumulation_steps} "
                  f"micro-batch(es) of {micro_batch} | {settings['steps']} steps")
        started = time.perf_counter()
        _, history, _ = pretrain(settings, device, seed=arguments.seed, checkpoint_path=arguments.checkpoint, resume=arguments.resume,
                                 stop_after_step=arguments.stop_after_step, description=f"pretraining ({preset})",
                                 accumulation_steps=arguments.accumulation_steps)
        if is_main:
            report = {"preset": preset, "processes": processes, "accumulation_steps": arguments.accumulation_steps,
                      "micro_batch": micro_batch, "last_step": history.steps[-1], "training_loss": history.losses[-1],
                      "val_loss": history.evals[-1]["val_loss"] if history.evals else None,
                      "seconds": time.perf_counter() - started}
            validation = f"{report['val_loss']:.6f}" if report["val_loss"] is not None else "not measured"
            print(f"step {report['last_step']}: training loss {report['training_loss']:.6f} (mean over the processes), "
                  f"last validation loss {validation}, {report['seconds']:.1f} s in this run (corpus, model and training)")
            print(json.dumps(report))
    finally:
        stop_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
