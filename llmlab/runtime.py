"""Where a lab runs: preset, device, precision, seeds and the versions it ran with."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmlab.gpu_time import gpu_time_line
from llmlab.memory_records import gpu_memory_line
from llmlab.presets import check_preset, lab_settings


def preset_name() -> str:
    """The preset asked for in LLMLAB_PRESET, else gpu with a CUDA GPU, else cpu."""
    name = os.environ.get("LLMLAB_PRESET", "").strip().lower()
    if not name:
        return "gpu" if torch.cuda.is_available() else "cpu"
    try:
        return check_preset(name)
    except ValueError as error:
        raise ValueError(f"LLMLAB_PRESET: {error}") from None


def pick_device() -> torch.device:
    """CUDA when present, else CPU. Apple MPS only on request (LLMLAB_ALLOW_MPS=1).

    MPS has trained silently wrong in other courses' labs, so it is never chosen
    behind the learner's back.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("LLMLAB_ALLOW_MPS") == "1" and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """How matrix products run: the autocast dtype (None = full fp32) and whether a loss scaler is needed."""

    dtype: torch.dtype | None
    needs_loss_scaling: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def pick_precision(device: torch.device) -> Precision:
    """bf16 on GPUs of compute capability ≥ 8.0; fp16 + loss scaling below; else fp32.

    A T4 is 7.5 and has no fast bf16.
    """
    if device.type != "cuda":
        return Precision(None, False)
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def autocast(device: torch.device, precision: Precision):
    """A context that runs the forward pass in the chosen precision (a no-op for fp32)."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler that is active only where fp16 needs it (otherwise it passes gradients through)."""
    return torch.amp.GradScaler(device.type, enabled=precision.needs_loss_scaling)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch so a CPU run repeats exactly; returns a torch generator for data sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class LabRun:
    """What a lab prints first and last: preset, device, precision, versions, elapsed time."""

    lab: str
    preset: str
    device: torch.device
    precision: Precision
    config: dict
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def checkpoint(self, name: str) -> Path:
        """Where this lab's run ``name`` keeps its checkpoint at this preset (see :func:`checkpoint_path`)."""
        return checkpoint_path(self.lab, name, self.preset)

    def summary(self) -> str:
        return (
            f"{self.lab}: preset {self.preset!r} on {describe_machine(self.device)}, {self.precision.name}; "
            f"{self.elapsed():.1f} s since start_lab"
        )


def _processor_name() -> str:
    """The processor's model name where Linux reports it (/proc/cpuinfo), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device | None = None) -> str:
    """What a measurement ran on, in one line: the GPU's name, or the processor, its cores and torch's threads."""
    device = device if device is not None else pick_device()
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    if device.type == "cpu":
        return f"cpu: {_processor_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return device.type


def library_versions() -> dict[str, str]:
    """Versions of the libraries the labs depend on (those that are importable)."""
    import importlib.metadata as metadata

    versions = {"python": sys.version.split()[0]}
    for name in ("llmlab", "torch", "numpy", "transformers", "datasets", "matplotlib", "tqdm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def runs_folder(lab: str) -> Path:
    """The folder where lab ``lab`` keeps checkpoints and saved models: ``runs/<lab>``, or ``$LLMLAB_RUNS/<lab>``.

    On Colab, set ``LLMLAB_RUNS`` to a folder of your Google Drive (after ``drive.mount``) and a
    long run survives a disconnect: re-running its cell continues from the last checkpoint.
    """
    folder = Path(os.environ.get("LLMLAB_RUNS") or "runs").expanduser() / lab
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shown_path(path) -> str:
    """``path`` as a lab prints it: inside the runs folder, from that folder's name (``runs/03_pretraining/…``, or
    ``$LLMLAB_RUNS/03_pretraining/…`` when that variable chose the folder), so that a page shows where the file is
    without the paths of the machine that ran it (a temporary folder, a home directory)."""
    path = Path(path)
    root_text = os.environ.get("LLMLAB_RUNS")
    root = Path(root_text or "runs").expanduser()
    for candidate in (path, path.resolve()):
        for base in (root, root.resolve()):
            try:
                inside = candidate.relative_to(base)
            except ValueError:
                continue
            return str(Path("$LLMLAB_RUNS" if root_text else "runs") / inside)
    return str(path)


def checkpoint_path(lab: str, name: str, preset: str) -> Path:
    """``<runs folder>/<name>-<preset>.safetensors``: one file per run and preset, so a smoke run never meets a cpu checkpoint."""
    return runs_folder(lab) / f"{name}-{check_preset(preset)}.safetensors"


def start_lab(lab: str, seed: int = 0) -> tuple[dict, LabRun]:
    """Pick the preset, device and precision for a lab, seed everything and print what was chosen.

    The settings come from ``llmlab.presets.LAB_PRESETS[lab]``.
    Returns (settings, run) where run.summary() reports the elapsed time at the end.
    """
    name = preset_name()
    config = lab_settings(lab, name)
    device = pick_device()
    if name == "gpu" and device.type != "cuda":
        print("note: preset 'gpu' on a machine without CUDA; it will run, slowly, on", device.type)
    precision = pick_precision(device)
    seed_everything(seed)
    run = LabRun(lab=lab, preset=name, device=device, precision=precision, config=config)
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    print(f"{lab} | preset {name} | device {describe_machine(device)} | precision {precision.name} | seed {seed}")
    print(f"versions: {versions}")
    print("settings:", ", ".join(f"{k}={v}" for k, v in config.items()))
    # At every preset: no gpu run has recorded its time yet, and a reader of a cpu run decides from it whether to use Colab.
    print("time:", gpu_time_line(lab))  # an estimate from FLOPs: nothing is measured here
    if name == "gpu":
        print("memory:", gpu_memory_line(lab))  # recorded numbers: nothing is measured here
    return config, run


def measure_seconds(fn, device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, waiting for the GPU to finish each call."""
    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
