"""``make gpu-check``: every solution at the gpu preset on a CUDA machine, with its wall time and peak GPU memory.

    python -m llmlab.course.gpu_check [--t4-ratio R] [--output runs/gpu-check.md] [solutions/NN_name.ipynb ...]

Each solution (all of ``solutions/`` by default, in order, so that Lab 5 finds the model Lab 3 trained) runs
through ``llmlab.course.notebooks.execute(path, "gpu")``, the run that
``python -m llmlab.course.notebooks execute … --preset gpu`` makes: the notebook's committed outputs are
replaced by this run's, and its metadata records the preset, the machine and the seconds. Then ``make labs``.
Per lab this records:

- **wall time**: what ``execute`` measured, from the kernel's start to its last cell;
- **peak GPU memory**, as torch's allocator saw it inside the notebook's kernel:
  ``torch.cuda.max_memory_allocated`` (the most that tensors held at once, what ``llmlab.memory`` estimates) and
  ``torch.cuda.max_memory_reserved`` (what the allocator held from the driver). The kernel is another process,
  so it reports them itself: the run gets a temporary ``IPYTHONDIR`` whose startup file (``PEAK_RECORDER``)
  writes both to a JSON file after every cell. The CUDA context (a few hundred MB) is in neither number.
- the lab's estimate from ``llmlab.memory``, as ``llmlab.memory_records`` keeps it (what ``start_lab`` prints), to set
  beside the peak.

The card may not be a T4. ``--t4-ratio R`` adds a column "T4 time ≈ R × the measured time": R is the
caller's statement of how much slower a T4 is for these labs, and the table says which R was used; without it
there is no T4 column. The table is printed and written to ``--output`` (Markdown) and beside it as JSON.
Without CUDA the command stops at once with a one-line error and runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from llmlab.course import notebooks

GIB = 2**30
DEFAULT_OUTPUT = notebooks.ROOT / "runs" / "gpu-check.md"
PEAK_FILE_VARIABLE = "LLMLAB_GPU_PEAK_FILE"
STARTUP_NAME = "00-llmlab-gpu-peak.py"

# The IPython startup file each notebook's kernel runs (from the temporary IPYTHONDIR). It imports nothing
# new: torch is read only if the notebook imported it, and CUDA only if the notebook initialised it.
PEAK_RECORDER = f'''\
"""Written by llmlab.course.gpu_check: after every cell, torch's peak GPU memory so far, into ${PEAK_FILE_VARIABLE}."""
import json as _json
import os as _os
import sys as _sys

_llmlab_cells = [0]


def _llmlab_record_gpu_peak(*_arguments):
    _llmlab_cells[0] += 1
    record = {{"cells": _llmlab_cells[0], "cuda_initialized": False}}
    torch = _sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        record.update(cuda_initialized=True, device=torch.cuda.get_device_name(),
                      max_allocated=torch.cuda.max_memory_allocated(), max_reserved=torch.cuda.max_memory_reserved())
    path = _os.environ["{PEAK_FILE_VARIABLE}"]
    with open(path + ".partial", "w") as handle:
        _json.dump(record, handle)
    _os.replace(path + ".partial", path)


get_ipython().events.register("post_run_cell", _llmlab_record_gpu_peak)
'''


@dataclass
class LabResult:
    """One solution's gpu run: seconds, peak memory in bytes (None when the kernel never initialised CUDA), or its error."""

    lab: str
    seconds: float | None = None
    cells: int | None = None
    device: str | None = None
    max_allocated: int | None = None
    max_reserved: int | None = None
    error: str | None = None


def no_cuda_message() -> str | None:
    """None on a machine where torch sees a CUDA GPU, else the one line that ``make gpu-check`` stops with."""
    import torch

    if torch.cuda.is_available():
        return None
    return (f"make gpu-check needs a CUDA GPU, and torch {torch.__version__} sees none (torch.cuda.is_available() is "
            "False): run it on a GPU machine with a CUDA build of torch (make gpu-check KEEP_TORCH=1 keeps one in .venv)")


@contextlib.contextmanager
def _environment(**variables: str):
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_solution(path: Path, cell_timeout: int, preset: str = "gpu") -> LabResult:
    """Run one solution with ``notebooks.execute`` (outputs and run metadata written back) and read its kernel's peak."""
    with tempfile.TemporaryDirectory(prefix="llmlab-gpu-check-") as folder:
        startup = Path(folder) / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / STARTUP_NAME).write_text(PEAK_RECORDER, encoding="utf-8")
        peak_file = Path(folder) / "peak.json"
        with _environment(IPYTHONDIR=folder, **{PEAK_FILE_VARIABLE: str(peak_file)}):
            seconds = notebooks.execute(path, preset, timeout=cell_timeout)
        if not peak_file.is_file():
            raise RuntimeError(f"{path.name} ran, but its kernel wrote no peak-memory record: the IPython startup file "
                               f"{STARTUP_NAME} did not run (is the kernel IPython's, and does it honour IPYTHONDIR?)")
        record = json.loads(peak_file.read_text(encoding="utf-8"))
    return LabResult(path.stem, seconds, record["cells"], record.get("device"), record.get("max_allocated"),
                     record.get("max_reserved"))


def _gib(nbytes: int | None) -> str:
    return "CUDA unused" if nbytes is None else f"{nbytes / GIB:.2f} GiB"


def _estimate(lab: str) -> str:
    from llmlab.memory_records import NOT_ESTIMATED, recorded_gpu_memory_estimate

    return "not estimated" if lab in NOT_ESTIMATED else f"{recorded_gpu_memory_estimate(lab).total_gib:.2f} GiB"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def format_table(results: list[LabResult], machine: str, torch_version: str, date: str, t4_ratio: float | None = None) -> str:
    """The Markdown report: where it ran, then one row per lab (a failed lab shows its error)."""
    if t4_ratio is not None and t4_ratio <= 0:
        raise ValueError(f"t4_ratio must be positive, got {t4_ratio}")
    lines = [f"gpu preset, every solution, on {machine}; torch {torch_version}; {date}.", ""]
    if t4_ratio is not None:
        lines += [f"T4 time: the measured time × {t4_ratio:g}, a ratio stated by whoever ran the check, not a measurement.", ""]
    header = ["lab", "wall time"] + (["T4 time (estimated)"] if t4_ratio is not None else []) + \
             ["peak allocated", "peak reserved", "estimate (llmlab.memory)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for result in results:
        if result.error is not None:
            cells = [result.lab, f"failed: {result.error}"] + [""] * (len(header) - 2)
        else:
            t4 = [_minutes(result.seconds * t4_ratio)] if t4_ratio is not None else []
            cells = [result.lab, _minutes(result.seconds), *t4,
                     _gib(result.max_allocated), _gib(result.max_reserved), _estimate(result.lab)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}".replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.course.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="solutions to run (default: every one in solutions/)")
    parser.add_argument("--t4-ratio", type=float, default=None,
                        help="add a T4 column: how many times slower a T4 is than this GPU for these labs (your estimate)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"the Markdown table (default {DEFAULT_OUTPUT})")
    parser.add_argument("--cell-timeout", type=int, default=3600, help="seconds one cell may run (default 3600)")
    arguments = parser.parse_args(argv)
    if arguments.t4_ratio is not None and arguments.t4_ratio <= 0:
        parser.error(f"--t4-ratio must be positive, got {arguments.t4_ratio}")
    problem = no_cuda_message()
    if problem:
        raise SystemExit(problem)
    paths = arguments.notebooks or notebooks.solution_paths()
    missing = [str(path) for path in paths if not Path(path).is_file()]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")

    import torch

    from llmlab.runtime import describe_machine

    # A fresh folder for the checkpoints, shared by this run's notebooks: nothing resumes from an older run.
    os.environ["LLMLAB_RUNS"] = tempfile.mkdtemp(prefix="llmlab-runs-")
    print(f"checkpoints of this run: {os.environ['LLMLAB_RUNS']}")
    results = []
    for path in paths:
        path = Path(path).resolve()
        print(f"{path.name}: running at the gpu preset ...", flush=True)
        try:
            result = run_solution(path, arguments.cell_timeout)
        except Exception as error:  # the other labs still run; the table and the exit status report this one
            result = LabResult(path.stem, error=_one_line(error))
        results.append(result)
        print(f"{path.name}: " + (f"failed: {result.error}" if result.error else
                                  f"{result.seconds:.0f} s, peak allocated {_gib(result.max_allocated)}"), flush=True)
    table = format_table(results, describe_machine(), torch.__version__, datetime.date.today().isoformat(), arguments.t4_ratio)
    print("\n" + table)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(table, encoding="utf-8")
    arguments.output.with_suffix(".json").write_text(json.dumps(
        {"machine": describe_machine(), "torch": torch.__version__, "t4_ratio": arguments.t4_ratio,
         "labs": [asdict(result) for result in results]}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {arguments.output} and {arguments.output.with_suffix('.json')}; the solutions' outputs are this run's: "
          "run `make labs`, then commit")
    failed = [result.lab for result in results if result.error]
    if failed:
        print(f"{len(failed)} lab(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
