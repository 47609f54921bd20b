"""Grade a folder of submitted labs, offline, in one command.

    python -m llmlab.grade SUBMISSIONS_DIR --lab 03 --out gradebook.csv [--force] [--workers N]

Each submission runs in its own process and its own Jupyter kernel, at the smoke preset, with a
time limit, a memory cap and (where the OS allows: Linux, run as root) no network. The grader
grades the learner's *code*, not their printed output: the function or class an exercise cell
defines (found through the exercise id in the cell's metadata and the name its self-check
cell passes to the check) goes through the lab's check and through hidden variants of it, run
on other random inputs. Nothing a submission does (a crash, an endless loop, a syntax error,
deleted cells, a file that is not a notebook, megabytes of output) stops the run or costs
another submission its result: each gets a row with its reason.

Writes ``gradebook.csv`` (one row per submission: status, points per exercise id, total,
flags), a feedback file per submission in ``<out stem>_feedback/`` and the raw results in
``<out stem>_results/``, which let a second run skip what it already graded (``--force``
grades again). The feedback gives the message of the learner's own self-check, and for the
hidden variants only how many passed: their inputs stay hidden.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from llmlab.course.notebooks import ROOT, exercises_by_lab, exercise_of, lab_key, solution_paths

HIDDEN_VARIANTS = (1, 2)       # variant 0 is the learner's own self-check
CELL_TIMEOUT_SECONDS = 60      # one cell longer than this is interrupted; the notebook runs on
RESULT_PREFIX = "LLMLAB GRADE "


@dataclass
class Exercise:
    id: str
    title: str
    points: int
    name: str  # what the self-check cell passes to the check: the learner's function or class


@dataclass
class Grade:
    submission: str
    status: str = "graded"                      # graded, or why it could not be
    points: dict[str, float] = field(default_factory=dict)
    feedback: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    sha256: str = ""

    @property
    def total(self) -> float:
        return sum(self.points.values())


# --- what a lab asks for ---------------------------------------------------------------------


def lab_notebook(lab: str) -> Path:
    matches = [path for path in solution_paths() if lab_key(path.name) == lab]
    if not matches:
        raise ValueError(f"no lab {lab!r}; labs: {', '.join(lab_key(path.name) for path in solution_paths())}")
    return matches[0]


def normalised_lab(lab: str) -> str:
    """"3" → "03", "4b" → "04b": the lab key as the notebooks name it."""
    return lab.zfill(3) if lab[-1:].isalpha() else lab.zfill(2)


def checked_name(check_source: str) -> str | None:
    """The name a self-check cell passes to its check: ``checks.check_x(NAME)`` → NAME."""
    try:
        tree = ast.parse(check_source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("check_") \
                and node.args and isinstance(node.args[0], ast.Name):
            return node.args[0].id
    return None


def lab_exercises(lab: str) -> list[Exercise]:
    """The exercises of a lab, from its solution notebook's metadata and self-check cells."""
    path = lab_notebook(lab)
    cells = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    found = []
    for position, cell in enumerate(cells):
        exercise = exercise_of(cell)
        if exercise is not None:
            name = checked_name(cells[position + 1].source)
            found.append(Exercise(exercise["id"], exercise["title"], int(exercise["points"]), name))
    assert [e.id for e in found] == [e["id"] for e in exercises_by_lab()[path.name]]
    return found


# --- looking at a submission without running it --------------------------------------------------


def read_submission(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """(notebook, "") or (None, why it cannot be graded)."""
    data = path.read_bytes()
    if not data.strip():
        return None, "empty file"
    try:
        notebook = nbformat.reads(data.decode("utf-8", errors="replace"), as_version=4)
    except Exception as error:  # not JSON, or JSON that is not a notebook
        return None, f"not a notebook ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    return notebook, ""


INTEGRITY_RULES = [
    (re.compile(r"^\s*(from\s+llmlab|import\s+llmlab)", re.M), "imports llmlab in an exercise cell (the reference implementations live there)"),
    (re.compile(r"check_\w+\s*\("), "calls a self-check inside an exercise cell"),
]
FAKE_PASS = re.compile(r"\[PASS\]")


def integrity_flags(notebook, exercises: list[Exercise]) -> list[str]:
    """What an instructor should look at: reference code imported or checks called in an exercise cell, a printed fake PASS."""
    flags = []
    wanted = {exercise.id for exercise in exercises}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.strip().startswith("#"))
        exercise = exercise_of(cell)
        if exercise is not None and exercise.get("id") in wanted:
            flags += [f"{exercise['id']}: {why}" for rule, why in INTEGRITY_RULES if rule.search(source)]
        if FAKE_PASS.search(source) and "check_" not in source:
            flags.append("a code cell prints a '[PASS]' line itself")
    return sorted(set(flags))


# --- running a submission ----------------------------------------------------------------------


def grading_cell(exercises: list[Exercise], seconds_per_exercise: float) -> str:
    """The cell appended to a submission: grade the objects it defined, print one JSON line."""
    names = {exercise.id: exercise.name for exercise in exercises}
    return (f"from llmlab.course.grading import grade_in_kernel as __grade\n"
            f"__grade({names!r}, globals(), {seconds_per_exercise!r})")


class ExerciseTimeout(BaseException):
    """Raised by the alarm in the kernel when one exercise's check runs too long; a BaseException, so no check catches it."""


def _within(seconds: float, function, *args):
    """``function(*args)``, or ExerciseTimeout after ``seconds`` (Unix: an interval timer in the kernel's main thread)."""
    def stop(signum, frame):
        raise ExerciseTimeout

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return function(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def grade_in_kernel(names: dict[str, str], namespace: dict, seconds_per_exercise: float = CELL_TIMEOUT_SECONDS) -> None:
    """Run inside the submission's kernel: each exercise's object through its check and the hidden variants.

    An exercise whose code runs longer than ``seconds_per_exercise`` (an endless loop) scores
    nothing and the others are still graded.
    """
    from llmlab.checks import check_for
    from llmlab.checks.core import variant

    def all_variants(check, code):
        own = check(code)
        hidden = []
        for number in HIDDEN_VARIANTS:
            with variant(number):
                hidden.append(bool(check(code)))
        return own, hidden

    results = {}
    for exercise_id, name in names.items():
        if name not in namespace:
            results[exercise_id] = {"found": False}
            continue
        try:
            own, hidden = _within(seconds_per_exercise, all_variants, check_for(exercise_id), namespace[name])
        except ExerciseTimeout:
            results[exercise_id] = {"found": True, "passed": False, "hidden_passed": 0, "hidden_total": len(HIDDEN_VARIANTS),
                                    "message": f"the check did not finish within {seconds_per_exercise:g} s (an endless loop?)"}
            continue
        results[exercise_id] = {"found": True, "passed": bool(own), "message": own.message, "hidden_passed": sum(hidden),
                                "hidden_total": len(hidden)}
    print(RESULT_PREFIX + json.dumps(results))


def _limit_memory(gigabytes: float):
    def apply():
        limit = int(gigabytes * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.setsid()
    return apply


def network_cut_available() -> bool:
    """True where ``unshare --net`` works here (Linux, enough privileges), so submissions run with no network."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up"], capture_output=True)
    return probe.returncode == 0


def run_worker(notebook_path: Path, lab: str, time_limit: float, memory_gb: float, cut_network: bool,
               cell_timeout: float = CELL_TIMEOUT_SECONDS, threads: int = 1) -> tuple[dict | None, str]:
    """Execute one submission in a child process; (results, "") or (None, why not)."""
    command = [sys.executable, "-m", "llmlab.course.grading", "_run", str(notebook_path), lab, str(cell_timeout)]
    if cut_network:
        command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "grading", *command]
    # threads: the cores each worker may use, so that workers side by side do not oversubscribe the machine
    env = {**os.environ, "LLMLAB_PRESET": "smoke", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "LLMLAB_RUNS": str(notebook_path.parent / "runs")}  # checkpoints of its own: no submission resumes another's run
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=_limit_memory(memory_gb), cwd=notebook_path.parent)
    try:
        stdout, stderr = process.communicate(timeout=time_limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the child leads a process group of its own: its kernel goes too
        process.communicate()
        return None, f"stopped after the time limit of {time_limit:.0f} s"
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):]), ""
    if "MemoryError" in stderr or process.returncode in (-signal.SIGKILL, 137):
        return None, f"stopped: more memory than the cap of {memory_gb:g} GB"
    if "DeadKernelError" in stderr:
        return None, "the kernel died while running the notebook (a cell exited Python or crashed it)"
    tail = (stderr.strip().splitlines() or ["no output"])[-1][:200]
    return None, f"the notebook could not be run ({tail})"


def first_error(cell) -> str:
    """The first error a code cell printed, as one line ("" if none)."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            value = (output.get("evalue") or "").strip().splitlines()
            return f"{output.get('ename')}: {value[0][:160]}" if value else output.get("ename", "")
    return ""


def exercise_errors(cells, cell_timeout: float) -> dict[str, str]:
    """For each exercise id: the first error of its cell or of its self-check cell (the next code cell)."""
    code_cells = [cell for cell in cells if cell.cell_type == "code"]
    errors = {}
    for position, cell in enumerate(code_cells):
        exercise = exercise_of(cell)
        if exercise is None:
            continue
        for where, candidate in (("its cell", cell), ("its self-check cell", code_cells[position + 1] if position + 1 < len(code_cells) else None)):
            error = first_error(candidate) if candidate is not None else ""
            if error:
                if error.startswith("KeyboardInterrupt"):
                    error = f"stopped after the cell time limit of {cell_timeout:g} s (an endless loop?)"
                errors[exercise["id"]] = f"{where}: {error}"
                break
    return errors


def execute_and_grade(notebook_path: str, lab: str, cell_timeout: float = CELL_TIMEOUT_SECONDS) -> None:
    """The child process: run the submission top to bottom in a fresh kernel, then the grading cell."""
    from nbclient import NotebookClient

    exercises = lab_exercises(lab)
    notebook = nbformat.read(notebook_path, as_version=4)
    notebook.cells = [cell for cell in notebook.cells if cell.cell_type in ("code", "markdown", "raw")]
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    notebook.cells.append(nbformat.v4.new_code_cell(grading_cell(exercises, cell_timeout)))
    grading = notebook.cells[-1]

    def timeout_of(cell) -> float:  # the grading cell may use the time of one cell per exercise
        return cell_timeout * (len(exercises) + 1) if cell is grading else cell_timeout

    client = NotebookClient(notebook, timeout_func=timeout_of, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True, resources={"metadata": {"path": str(Path(notebook_path).parent)}})
    client.execute()
    last = notebook.cells[-1]
    for output in last.get("outputs", []):
        if output.get("output_type") == "stream":
            for line in output["text"].splitlines():
                if line.startswith(RESULT_PREFIX):
                    results = json.loads(line[len(RESULT_PREFIX):])
                    for exercise_id, error in exercise_errors(notebook.cells[:-1], cell_timeout).items():
                        results.setdefault(exercise_id, {"found": False})["error"] = error
                    print(RESULT_PREFIX + json.dumps(results))
                    return
    errors = [o for o in last.get("outputs", []) if o.get("output_type") == "error"]
    print(f"grading cell failed: {errors[0]['ename'] if errors else 'no output'}", file=sys.stderr)


# --- one submission, end to end ---------------------------------------------------------------


def grade_submission(path: Path, lab: str, exercises: list[Exercise], time_limit: float, memory_gb: float,
                     cut_network: bool, cell_timeout: float = CELL_TIMEOUT_SECONDS, threads: int = 1) -> Grade:
    grade = Grade(path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    grade.points = {exercise.id: 0.0 for exercise in exercises}
    notebook, problem = read_submission(path)
    if notebook is None:
        grade.status = problem
        return grade
    grade.flags = integrity_flags(notebook, exercises)
    present = {exercise_of(cell)["id"] for cell in notebook.cells if cell.cell_type == "code" and exercise_of(cell)}
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "submission.ipynb"
        copy.write_bytes(path.read_bytes())
        results, problem = run_worker(copy, lab, time_limit, memory_gb, cut_network, cell_timeout, threads)
    if results is None:
        grade.status = problem
        return grade
    for exercise in exercises:
        result = results.get(exercise.id, {"found": False})
        if exercise.id not in present:
            grade.feedback[exercise.id] = "the exercise cell is missing (deleted, or its metadata was changed)"
        elif not result["found"]:
            grade.feedback[exercise.id] = f"no '{exercise.name}' defined after running the notebook (a syntax error, or renamed?)"
        elif result["passed"] and result["hidden_passed"] == result["hidden_total"]:
            grade.points[exercise.id] = float(exercise.points)
            grade.feedback[exercise.id] = f"passed, and {result['hidden_passed']} of {result['hidden_total']} hidden variants"
        else:
            grade.feedback[exercise.id] = (f"{'passed' if result['passed'] else 'failed'} your self-check: {result['message']}; "
                                           f"hidden variants passed: {result['hidden_passed']} of {result['hidden_total']}")
        if result.get("error") and grade.points[exercise.id] == 0:
            grade.feedback[exercise.id] += f" ({result['error']})"
    return grade


# --- the folder -------------------------------------------------------------------------------


def grade_folder(folder: Path, lab: str, out: Path, force: bool = False, workers: int | None = None,
                 time_limit: float = 300, memory_gb: float = 8.0, cell_timeout: float = CELL_TIMEOUT_SECONDS) -> list[Grade]:
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of submissions")
    exercises = lab_exercises(lab)
    results_folder = out.with_name(out.stem + "_results")
    feedback_folder = out.with_name(out.stem + "_feedback")
    results_folder.mkdir(parents=True, exist_ok=True)
    feedback_folder.mkdir(parents=True, exist_ok=True)
    cut_network = network_cut_available()
    workers = workers or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // workers)
    submissions = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))

    def one(path: Path) -> Grade:
        stored = results_folder / (path.name + ".json")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if stored.is_file() and not force:
            saved = json.loads(stored.read_text())
            if saved.get("sha256") == digest:
                return Grade(**saved)
        grade = grade_submission(path, lab, exercises, time_limit, memory_gb, cut_network, cell_timeout, threads)
        stored.write_text(json.dumps(asdict(grade), indent=1))
        return grade

    with ThreadPoolExecutor(max_workers=workers) as pool:
        grades = list(pool.map(one, submissions))
    write_gradebook(out, grades, exercises)
    for grade in grades:
        lines = [f"{grade.submission}: {grade.status}, {grade.total:g} of {sum(e.points for e in exercises)} points"]
        lines += [f"  {exercise.id} ({exercise.title}, {exercise.points} point{'s' if exercise.points != 1 else ''}): {grade.points.get(exercise.id, 0):g} — "
                  f"{grade.feedback.get(exercise.id, 'not graded')}" for exercise in exercises]
        lines += [f"  flag: {flag}" for flag in grade.flags]
        (feedback_folder / (grade.submission + ".txt")).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if not cut_network:
        print("note: the network could not be cut here (unshare unavailable or not permitted); submissions ran with it")
    return grades


def write_gradebook(out: Path, grades: list[Grade], exercises: list[Exercise]) -> None:
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", "status", *[exercise.id for exercise in exercises], "total", "maximum", "flags"])
        maximum = sum(exercise.points for exercise in exercises)
        for grade in grades:
            writer.writerow([grade.submission, grade.status, *[f"{grade.points.get(e.id, 0):g}" for e in exercises],
                             f"{grade.total:g}", maximum, "; ".join(grade.flags)])


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_run"]:  # the child process of run_worker
        execute_and_grade(argv[1], argv[2], float(argv[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m llmlab.grade", description="Grade a folder of submitted lab notebooks.")
    parser.add_argument("submissions", type=Path)
    parser.add_argument("--lab", required=True, help="the lab's key, e.g. 03, or 04b for Chapter 4's second lab")
    parser.add_argument("--out", type=Path, default=Path("gradebook.csv"))
    parser.add_argument("--force", action="store_true", help="grade again what was graded before")
    parser.add_argument("--workers", type=int, default=None, help="submissions graded at once (default: one per core)")
    parser.add_argument("--time-limit", type=float, default=300, help="seconds per submission")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="memory cap per submission (address space)")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_SECONDS, help="seconds before one cell is interrupted")
    arguments = parser.parse_args(argv)
    grades = grade_folder(arguments.submissions, normalised_lab(arguments.lab), arguments.out, arguments.force, arguments.workers,
                          arguments.time_limit, arguments.memory_gb, arguments.cell_timeout)
    print(f"graded {len(grades)} submissions of lab {arguments.lab}: {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
