"""Lab 3's pretraining, data-parallel under torchrun on the CPU (gloo, 2 processes).

Each torchrun below starts `python -m llmlab.pretraining` twice, as a learner would on two GPUs.
The checks: two processes with half the batch each compute what one process computes with the
whole batch; gradient accumulation changes nothing but rounding; a data-parallel run stopped
part-way and resumed ends where an uninterrupted one ends; bad input stops with a one-line error.

The equalities need dropout 0, which the smoke preset has: with dropout each process would draw
its own masks and the runs would differ by design.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmlab.checkpoint import load_checkpoint
from llmlab.lm import shakespeare_corpus
from llmlab.model import GPT
from llmlab.presets import lab_settings
from llmlab.pretraining import main, micro_batch_size, model_config, pretrain, proportional_warmup

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH = 10, 16
SMOKE = lab_settings("03_pretraining", "smoke")
# What `--preset smoke --steps 10 --batch-size 16` makes of the preset (pretraining.main).
SETTINGS = {**SMOKE, "steps": STEPS, "warmup_steps": proportional_warmup(SMOKE, STEPS), "batch_size": BATCH}
assert SETTINGS["dropout"] == 0.0, "the equalities below need a preset without dropout"


def torchrun(*options: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m llmlab.pretraining --preset smoke ...`, on the CPU.

    --standalone lets torchrun pick a free port for the processes to meet on, so runs never clash.
    CUDA is hidden so that the processes use gloo on the CPU even on a machine with one GPU.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "llmlab.pretraining", "--preset", "smoke", *options]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return result


def checked_torchrun(*options: str) -> subprocess.CompletedProcess:
    result = torchrun(*options)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def saved_run(path: Path) -> tuple[int, GPT, dict]:
    """(steps done, model, metadata) of a checkpoint, loaded into a plain GPT as Lab 5 loads Lab 3's."""
    model = GPT(model_config(SETTINGS, 65))
    step, _, metadata = load_checkpoint(path, model)
    return step, model, metadata


def largest_weight_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def pretrain_in_one_thread(**options):
    """``pretrain`` in this process with one thread, as each of torchrun's processes runs: quicker for a model this small,
    and not slowed down by other work on the machine competing for the cores that torch's threads wait on."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pretrain(SETTINGS, torch.device("cpu"), shakespeare_corpus(), **options)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process():
    """The reference: one process, the whole batch of 16 windows per step."""
    model, history, _ = pretrain_in_one_thread(description="one process")
    return model, history


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Two processes, 8 windows each per step, written to a checkpoint by process 0."""
    path = tmp_path_factory.mktemp("ddp") / "two.safetensors"
    result = checked_torchrun("--steps", str(STEPS), "--batch-size", str(BATCH), "--checkpoint", str(path))
    return path, result


def test_two_processes_with_half_the_batch_each_match_one_process_with_all_of_it(one_process, two_processes):
    model, history = one_process
    path, result = two_processes
    step, ddp_model, metadata = saved_run(path)
    assert step == STEPS and metadata["processes"] == 2 and metadata["run_settings"]["batch_size"] == BATCH
    assert metadata["history"]["losses"] == pytest.approx(history.losses, abs=1e-5)
    assert metadata["history"]["evals"][-1]["val_loss"] == pytest.approx(history.evals[-1]["val_loss"], abs=1e-5)
    assert largest_weight_gap(model, ddp_model) < 1e-5
    # Logs from process 0 only: one header, one report, one progress bar.
    assert result.stdout.count("pretraining | preset smoke | 2 process(es) (gloo)") == 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["processes"] == 2
    assert result.stderr.count(f"| 0/{STEPS} [00:00<?, ?it/s]") == 1  # the bar's first drawing, before any step


def test_gradient_accumulation_matches_the_whole_batch(one_process, tmp_path):
    model, history = one_process
    # One process, 4 micro-batches of 4 windows...
    accumulated, accumulated_history, _ = pretrain_in_one_thread(accumulation_steps=4, description="4 micro-batches")
    assert accumulated_history.losses == pytest.approx(history.losses, abs=1e-5)
    assert largest_weight_gap(model, accumulated) < 1e-5
    # ...and 2 processes × 2 micro-batches of 4, where DistributedDataParallel must skip its all-reduce on the first (no_sync).
    path = tmp_path / "accumulated.safetensors"
    checked_torchrun("--steps", str(STEPS), "--batch-size", str(BATCH), "--accumulation-steps", "2", "--checkpoint", str(path))
    _, ddp_model, metadata = saved_run(path)
    assert metadata["accumulation_steps"] == 2
    assert metadata["history"]["losses"] == pytest.approx(history.losses, abs=1e-5)
    assert largest_weight_gap(model, ddp_model) < 1e-5


def test_a_stopped_data_parallel_run_resumes_to_the_same_end(two_processes, tmp_path):
    """Stopped after step 4 (the state a kill right after that checkpoint leaves), then resumed by two new processes."""
    uninterrupted_path, _ = two_processes
    path = tmp_path / "stopped.safetensors"
    options = ("--steps", str(STEPS), "--batch-size", str(BATCH), "--checkpoint", str(path))
    checked_torchrun(*options, "--stop-after-step", "4")
    assert saved_run(path)[0] == 5
    resumed = checked_torchrun(*options, "--resume")
    assert resumed.stdout.count("resumed from") == 1  # said once, by process 0
    step, model, metadata = saved_run(path)
    _, uninterrupted, uninterrupted_metadata = saved_run(uninterrupted_path)
    assert step == STEPS and metadata["history"]["steps"] == list(range(STEPS))
    assert metadata["history"]["losses"] == pytest.approx(uninterrupted_metadata["history"]["losses"], abs=1e-6)
    assert metadata["history"]["evals"][-1]["val_loss"] == pytest.approx(uninterrupted_metadata["history"]["evals"][-1]["val_loss"], abs=1e-6)
    assert largest_weight_gap(model, uninterrupted) < 1e-6


def test_a_batch_that_does_not_split_is_a_one_line_error(monkeypatch, capsys):
    """The check comes before the processes meet, so torchrun's variables are all it needs: process 1 of 2 is pretended here."""
    for variable, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(variable, value)
    assert main(["--preset", "smoke", "--batch-size", "15"]) == 2
    assert capsys.readouterr().err == ("python -m llmlab.pretraining: error: batch_size 15 does not split evenly into "
                                       "2 process(es) × 1 accumulation step(s): use a multiple of 2\n")
    assert not torch.distributed.is_initialized()
    # the same check for micro-batches, in a plain one-process run
    for variable in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(variable)
    assert main(["--preset", "smoke", "--batch-size", "16", "--accumulation-steps", "3"]) == 2
    assert capsys.readouterr().err == ("python -m llmlab.pretraining: error: batch_size 16 does not split evenly into "
                                       "1 process(es) × 3 accumulation step(s): use a multiple of 3\n")
    assert micro_batch_size(16, 2, 4) == 2
    with pytest.raises(ValueError, match="at least 1, got 0, 2 and 1"):
        micro_batch_size(0, 2)


def test_more_processes_than_gpus_is_a_one_line_error(monkeypatch, capsys):
    """What torchrun --nproc_per_node=2 on a one-GPU machine meets. No GPU is needed to check the check: CUDA is
    pretended (it is never touched, since the check comes first) and torchrun's variables are set as it would set them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for variable, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(variable, value)
    assert main(["--preset", "smoke", "--batch-size", "16"]) == 2
    assert capsys.readouterr().err == ("python -m llmlab.pretraining: error: torchrun starts 2 processes on this machine but "
                                       "it has 1 GPU(s), one per process: use --nproc_per_node=1 or fewer\n")
    assert not torch.distributed.is_initialized()
