"""Grade a folder of submitted labs, offline, with a judge that no submission can reach.

    python -m llmlab.grade SUBMISSIONS --lab 03 --out gradebook.csv [--lms canvas|moodle] [--only STUDENT]
                           [--force] [--workers N] [--no-sandbox]

How a submission is judged. Its code runs in a process of its own, in a sandbox
(llmlab.course.sandbox: bubblewrap, no network, a scratch folder, limits, the lab's reference
implementations withheld), where it holds nothing the grade depends on. The checks run in the
grader's worker, a process the submission never ran code in: each exercise's check, on the
learner's own inputs (variant 0) and on hidden variants, calls the learner's function or class
through llmlab.checks.remote, so what crosses is data (tensors and numbers, llmlab.checks.wire)
and the verdict is computed here. Printing a PASS line, patching llmlab or the checks, or
registering hooks changes only the submission's own process, which decides nothing.

What an instructor gets, next to ``--out``:

- ``gradebook.csv``: one row per student (id, submission file, status, points per exercise,
  total, maximum, flags, and whether the sandbox was on); ``--lms canvas`` or ``--lms moodle``
  also writes the file that LMS's gradebook imports (``gradebook_canvas.csv``,
  ``gradebook_moodle.csv``: Moodle's grading worksheet, with each student's feedback);
- ``gradebook_feedback/STUDENT.txt``: what the student sees: points per exercise, and for a failed
  exercise the message of their own self-check or the error their code raised;
- ``gradebook_report/STUDENT.txt``: for the instructor only: hidden-variant results, flags (a
  reference implementation used, a hand-printed PASS line), cell errors, the sandbox's last words;
- ``gradebook_results/STUDENT.json``: the raw result, so a second run skips what it already
  graded (``--force`` grades all again, ``--only STUDENT`` one student).

Submissions are found in the layouts LMS bulk downloads use (llmlab.course.submissions).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from llmlab.course import sandbox
from llmlab.course.notebooks import exercise_of, exercises_by_lab, lab_key, solution_paths
from llmlab.course.submissions import Submission, collect

HIDDEN_VARIANTS = (1, 2)       # variant 0 is the learner's own self-check
CELL_SECONDS = 60              # a cell of the submission running longer is interrupted; the notebook runs on
EXERCISE_SECONDS = 60          # the check of one exercise, all its variants, may wait this long for the learner's code
NOTEBOOK_SECONDS = 300         # running the whole notebook before the checks, at most
MAX_STARTS = 3                 # a submission whose process stops answering runs again for the next exercise, this often


@dataclass
class Exercise:
    id: str
    title: str
    points: int
    name: str  # what the self-check cell passes to the check: the learner's function or class


@dataclass
class Grade:
    student: str
    submission: str = ""
    status: str = "graded"                      # graded, or why it could not be
    points: dict[str, float] = field(default_factory=dict)
    feedback: dict[str, str] = field(default_factory=dict)   # what the student reads
    report: dict[str, str] = field(default_factory=dict)     # what only the instructor reads: hidden variants, errors
    flags: list[str] = field(default_factory=list)            # instructor only
    sandboxed: bool = True
    sha256: str = ""
    notes: list[str] = field(default_factory=list)            # instructor only: cell errors, the sandbox's last words

    @property
    def total(self) -> float:
        return sum(self.points.values())


@dataclass
class Options:
    cell_seconds: float = CELL_SECONDS
    exercise_seconds: float = EXERCISE_SECONDS
    notebook_seconds: float = NOTEBOOK_SECONDS
    sandboxed: bool = True
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    threads: int = 1


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
    import ast

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


FAKE_PASS = re.compile(r"\[PASS\]")


def static_flags(notebook) -> list[str]:
    """What an instructor should look at without running anything: a code cell that prints a PASS line by hand."""
    flags = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            source = "\n".join(line for line in cell.source.splitlines() if not line.strip().startswith("#"))
            if FAKE_PASS.search(source) and "check_" not in source:
                flags.append("a code cell prints a '[PASS]' line itself (it earns nothing: the grader does not read output)")
    return sorted(set(flags))


def cell_errors(notebook, errors: dict[int, str]) -> dict[str, str]:
    """For each exercise id: the first error its cell raised in the sandbox (code cells counted as the learner process does)."""
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    found = {}
    for index, cell in enumerate(code_cells):
        exercise = exercise_of(cell)
        if exercise is not None and index in errors:
            found[exercise.get("id")] = f"its cell: {errors[index]}"
    return found


# --- one submission's process --------------------------------------------------------------------


class LearnerProcess:
    """The submission's notebook, run in the sandbox, and the channel to its objects."""

    def __init__(self, notebook_path: Path, lab: str, course: Path, options: Options, slot: int):
        from llmlab.checks.remote import Channel

        self.options = options
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        os.set_inheritable(request_read, True)
        os.set_inheritable(reply_write, True)
        arguments = sandbox.command(notebook_path, course, options.cell_seconds, slot, options.sandboxed)
        # The learner process reads requests on fd 3 and writes replies on fd 4.
        # Without a sandbox the submission works in a folder of its own beside its notebook, and imports the withheld copy.
        scratch = None if options.sandboxed else Path(tempfile.mkdtemp(prefix="scratch-", dir=notebook_path.parent))
        environment = sandbox.environment(options.threads, scratch, None if options.sandboxed else course)
        self.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env=environment, cwd=scratch or tempfile.gettempdir(),
                                        pass_fds=(3, 4), preexec_fn=_child_setup(request_read, reply_write, options.limits))
        os.close(request_read)
        os.close(reply_write)
        # Unbuffered replies: select() must see every byte that has not been read yet.
        self.channel = Channel(os.fdopen(request_write, "wb"), os.fdopen(reply_read, "rb", buffering=0))
        self.last_words = b""
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        for chunk in iter(lambda: self.process.stderr.read(4096), b""):
            self.last_words = (self.last_words + chunk)[-4000:]

    def wait_ready(self) -> dict[int, str]:
        """The cells' errors once the notebook has run; raises LearnerTimeout or ChannelBroken."""
        from llmlab.checks import wire
        from llmlab.checks.remote import ChannelBroken, start_deadline

        start_deadline(self.channel, self.options.notebook_seconds)
        try:
            self.channel.wait_readable()
            header, _ = wire.read_message(self.channel.replies)
        except (EOFError, OSError, wire.WireError) as error:
            raise ChannelBroken(f"{type(error).__name__}: {error}") from None
        if not header.get("ready"):
            raise ChannelBroken("the submission's process did not report its cells")
        return {int(index): str(text)[:300] for index, text in header.get("errors", [])}

    def lookup(self, name: str):
        from llmlab.checks.remote import start_deadline

        start_deadline(self.channel, self.options.exercise_seconds)
        value, _ = self.channel.request({"op": "lookup", "name": name})
        return value

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        for stream in (self.channel.requests, self.channel.replies):
            try:
                stream.close()
            except OSError:
                pass

    def why_it_stopped(self) -> str:
        code = self.process.poll()
        words = self.last_words.decode("utf-8", errors="replace").strip().splitlines()
        if code is not None and code < 0:
            return f"killed by signal {-code}" + (" (more memory or CPU time than allowed?)" if -code in (9, 24) else "")
        return words[-1][:200] if words else "it stopped answering"


def _child_setup(request_read: int, reply_write: int, limits: sandbox.Limits):
    apply = sandbox.apply_limits(limits)

    def setup() -> None:
        import fcntl

        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (request_read, reply_write)]  # out of the way of 3 and 4 first
        os.dup2(high[0], 3)
        os.dup2(high[1], 4)
        apply()

    return setup


# --- judging -------------------------------------------------------------------------------------


def judge_exercise(exercise: Exercise, code) -> dict:
    """Run the exercise's check on the learner's object ``code`` (remote or not): own inputs, then the hidden variants."""
    from llmlab.checks import check_for
    from llmlab.checks.core import variant

    check = check_for(exercise.id)
    own = check(code)
    hidden = []
    for number in HIDDEN_VARIANTS:
        with variant(number):
            hidden.append(bool(check(code)))
    return {"passed": bool(own), "message": own.message, "hidden_passed": sum(hidden), "hidden_total": len(hidden)}


def grade_submission(submission: Submission, lab: str, exercises: list[Exercise], options: Options, course: Path,
                     slot: int = 0) -> Grade:
    """One submission, end to end: read it, run it in the sandbox, judge each exercise here."""
    from llmlab.checks.remote import ChannelBroken, LearnerTimeout

    path = submission.path
    grade = Grade(submission.student, path.name if path else "", sandboxed=options.sandboxed,
                  sha256=hashlib.sha256(path.read_bytes()).hexdigest() if path else "")
    grade.points = {exercise.id: 0.0 for exercise in exercises}
    if path is None:
        grade.status = submission.problem
        return grade
    notebook, problem = read_submission(path)
    if notebook is None:
        grade.status = problem
        return grade
    grade.flags = static_flags(notebook)
    present = {exercise_of(cell)["id"] for cell in notebook.cells if cell.cell_type == "code" and exercise_of(cell)}
    work = Path(tempfile.mkdtemp(prefix="llmlab-submission-"))
    try:
        copy = work / "notebook.ipynb"
        nbformat.write(notebook, copy)  # as nbformat read it: version 4, whatever version was submitted
        copy.chmod(0o644)
        learner, errors, starts = None, {}, 0
        for exercise in exercises:
            if exercise.id not in present:
                grade.feedback[exercise.id] = "the exercise cell is missing (deleted, or its metadata was changed)"
                continue
            if learner is None and starts == MAX_STARTS:
                grade.feedback[exercise.id] = (f"not checked: your notebook's process stopped answering {MAX_STARTS} times "
                                               "while earlier exercises were checked")
                continue
            if learner is None:  # the first exercise, or the one after an exercise that stopped the process
                starts += 1
                learner = LearnerProcess(copy, lab, course, options, slot)
                try:
                    raised = learner.wait_ready()
                    errors = cell_errors(notebook, raised)
                    if starts == 1:  # the instructor's report: which code cells raised what
                        grade.notes += [f"code cell {index}: {text}" for index, text in sorted(raised.items())]
                except LearnerTimeout:
                    grade.status = f"stopped: the notebook did not finish within {options.notebook_seconds:g} s"
                    learner.stop()
                    return grade
                except ChannelBroken:
                    grade.status = f"the submission's process died while running the notebook ({learner.why_it_stopped()})"
                    learner.stop()
                    return grade
            outcome = _judge_one(learner, exercise, options)
            if outcome.get("stopped"):
                learner.stop()
                learner = None
            _record(grade, exercise, outcome, errors.get(exercise.id, ""))
        if learner is not None:
            learner.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return grade


def _judge_one(learner: LearnerProcess, exercise: Exercise, options: Options) -> dict:
    from llmlab.checks.core import ReferenceWithheld
    from llmlab.checks.remote import ChannelBroken, LearnerTimeout, RemoteError, start_deadline

    try:
        code = learner.lookup(exercise.name)
    except NameError:
        return {"found": False}
    except RemoteError:
        return {"found": False}
    except LearnerTimeout:
        return {"found": True, "stopped": True, "timeout": True}
    except ChannelBroken:
        return {"found": True, "stopped": True, "broken": learner.why_it_stopped()}
    start_deadline(learner.channel, options.exercise_seconds)
    try:
        return {"found": True, **judge_exercise(exercise, code)}
    except ReferenceWithheld as withheld:
        return {"found": True, "withheld": withheld.where or str(withheld)}
    except LearnerTimeout:
        return {"found": True, "stopped": True, "timeout": True}
    except ChannelBroken:
        return {"found": True, "stopped": True, "broken": learner.why_it_stopped()}


def _record(grade: Grade, exercise: Exercise, outcome: dict, error: str) -> None:
    """Points, the student's feedback and the instructor's report for one exercise."""
    if not outcome.get("found"):
        grade.feedback[exercise.id] = f"no '{exercise.name}' defined after running the notebook (a syntax error, or renamed?)"
    elif outcome.get("withheld"):
        grade.feedback[exercise.id] = "uses the course's reference implementation, which earns no points"
        grade.flags.append(f"{exercise.id}: calls or wraps the course's reference ({outcome['withheld']})")
    elif outcome.get("timeout"):
        grade.feedback[exercise.id] = "your code did not finish within the time limit (an endless loop?)"
    elif outcome.get("broken"):
        grade.feedback[exercise.id] = "your code stopped the notebook's process while it was checked"
        grade.report[exercise.id] = f"the learner process stopped: {outcome['broken']}"
    elif outcome["passed"] and outcome["hidden_passed"] == outcome["hidden_total"]:
        grade.points[exercise.id] = float(exercise.points)
        grade.feedback[exercise.id] = "passed"
    elif outcome["passed"]:
        grade.feedback[exercise.id] = "passed your self-check, but not the grader's other inputs: make it work for any shapes and values"
    else:
        grade.feedback[exercise.id] = f"failed your self-check: {outcome['message']}"
    if "hidden_total" in outcome:
        grade.report[exercise.id] = (f"self-check {'passed' if outcome['passed'] else 'failed'}; hidden variants passed: "
                                     f"{outcome['hidden_passed']} of {outcome['hidden_total']}")
    if error and grade.points[exercise.id] == 0:
        grade.feedback[exercise.id] += f" ({error})"


# --- the folder ----------------------------------------------------------------------------------

_WORKER: dict = {}


def _start_worker(slots, lab: str, sandboxed: bool) -> None:
    """A grading worker: its slot (its sandbox user) and the lab's course copy, references withheld."""
    _WORKER["slot"] = slots.get()
    folder = Path(tempfile.mkdtemp(prefix="llmlab-course-"))
    _WORKER["course"] = sandbox.withheld_course(lab, folder)
    folder.chmod(0o755)


def _grade_in_worker(submission: Submission, lab: str, exercises: list[Exercise], options: Options) -> Grade:
    return grade_submission(submission, lab, exercises, options, _WORKER["course"], _WORKER["slot"])


def grade_folder(folder: Path, lab: str, out: Path, force: bool = False, workers: int | None = None, only: str | None = None,
                 lms: str | None = None, options: Options | None = None, assignment: str | None = None) -> list[Grade]:
    """Grade every submission of ``folder`` (or only student ``only``), write the gradebook and the feedback."""
    import multiprocessing

    options = options or Options()
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of submissions")
    exercises = lab_exercises(lab)
    submissions = collect(folder)
    if only is not None:
        if only not in {submission.student for submission in submissions}:
            raise ValueError(f"no submission of student {only!r} in {folder}")
    results_folder = out.with_name(out.stem + "_results")
    results_folder.mkdir(parents=True, exist_ok=True)

    def stored(submission: Submission) -> Grade | None:
        saved_path = results_folder / (_safe(submission.student) + ".json")
        if force or (only is not None and submission.student == only) or not saved_path.is_file():
            return None
        saved = json.loads(saved_path.read_text())
        if submission.path is None or saved.get("sha256") != hashlib.sha256(submission.path.read_bytes()).hexdigest():
            return None
        return Grade(**saved)

    grades: dict[str, Grade] = {}
    to_grade = []
    for submission in submissions:
        previous = stored(submission)
        if previous is not None:
            grades[submission.student] = previous
        else:
            to_grade.append(submission)
    if workers == 0 and to_grade:  # judged here, one submission after another: for a few submissions, or to debug
        options.threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        course = sandbox.withheld_course(lab, Path(tempfile.mkdtemp(prefix="llmlab-course-")))
        course.parent.chmod(0o755)
        for submission in to_grade:
            grades[submission.student] = grade = grade_submission(submission, lab, exercises, options, course)
            (results_folder / (_safe(submission.student) + ".json")).write_text(json.dumps(asdict(grade), indent=1))
        shutil.rmtree(course.parent, ignore_errors=True)
        to_grade = []
    workers = max(1, min(workers or os.cpu_count() or 1, len(to_grade) or 1))
    options.threads = max(1, (os.cpu_count() or 1) // workers)
    # A worker that dies (it should not: the judge reads only data) breaks the pool for every submission still in it.
    # Those are graded again, each in a pool of its own, so that one submission never costs the others their grades.
    for round_workers, batches in ((workers, [to_grade]), (1, None)):
        if batches is None:
            batches = [[submission] for submission in to_grade]
        left = []
        for batch in filter(None, batches):
            context = multiprocessing.get_context("spawn")  # a fresh process: nothing inherited from the caller's state
            slots = context.Manager().Queue()
            for slot in range(round_workers):
                slots.put(slot)
            with ProcessPoolExecutor(max_workers=round_workers, mp_context=context, initializer=_start_worker,
                                     initargs=(slots, lab, options.sandboxed)) as pool:
                futures = {submission.student: pool.submit(_grade_in_worker, submission, lab, exercises, options)
                           for submission in batch}
                for submission in batch:
                    try:
                        grade = futures[submission.student].result()
                    except BrokenProcessPool:
                        if round_workers > 1:
                            left.append(submission)
                            continue
                        grade = _failed(submission, exercises, "the grader's worker died while grading it")
                    except Exception as error:  # the grader's own fault: said in the row, the others go on
                        grade = _failed(submission, exercises, f"the grader failed ({type(error).__name__}: {error})"[:300])
                    (results_folder / (_safe(submission.student) + ".json")).write_text(json.dumps(asdict(grade), indent=1))
                    grades[submission.student] = grade
        to_grade = left
        if not to_grade:
            break
    ordered = [grades[submission.student] for submission in submissions]
    write_outputs(out, ordered, exercises, submissions, lms, assignment or f"Lab {lab}")
    return ordered


def _failed(submission: Submission, exercises: list[Exercise], status: str) -> Grade:
    return Grade(submission.student, submission.path.name if submission.path else "", status,
                 points={exercise.id: 0.0 for exercise in exercises})


def _safe(student: str) -> str:
    """A student id as a file name."""
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", student)[:120] or "_"


def write_outputs(out: Path, grades: list[Grade], exercises: list[Exercise], submissions: list[Submission], lms: str | None,
                  assignment: str = "Lab") -> None:
    from llmlab.course import submissions as layouts

    maximum = sum(exercise.points for exercise in exercises)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "submission", "status", *[exercise.id for exercise in exercises], "total", "maximum",
                         "flags", "sandbox"])
        for grade in grades:
            writer.writerow([grade.student, grade.submission, grade.status, *[f"{grade.points.get(e.id, 0):g}" for e in exercises],
                             f"{grade.total:g}", maximum, "; ".join(grade.flags),
                             "on" if grade.sandboxed else "OFF: the submission ran without a sandbox"])
    feedback_folder, report_folder = out.with_name(out.stem + "_feedback"), out.with_name(out.stem + "_report")
    feedback_folder.mkdir(parents=True, exist_ok=True)
    report_folder.mkdir(parents=True, exist_ok=True)
    for grade in grades:
        (feedback_folder / (_safe(grade.student) + ".txt")).write_text(feedback_text(grade, exercises), encoding="utf-8")
        lines = [f"{grade.student} ({grade.submission}): {grade.status}, {grade.total:g} of {maximum} points",
                 *[f"  {e.id}: {grade.report.get(e.id, 'not checked')}" for e in exercises],
                 *[f"  flag: {flag}" for flag in grade.flags], *[f"  note: {note}" for note in grade.notes],
                 f"  sandbox: {'on' if grade.sandboxed else 'OFF'}"]
        (report_folder / (_safe(grade.student) + ".txt")).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if lms:
        layouts.write_lms_gradebook(lms, out.with_name(f"{out.stem}_{lms}.csv"), grades, submissions, maximum,
                                    {grade.student: feedback_text(grade, exercises) for grade in grades}, assignment)


def feedback_text(grade: Grade, exercises: list[Exercise]) -> str:
    """What the student receives: status, points per exercise and why; no flags, no hidden-variant details."""
    maximum = sum(exercise.points for exercise in exercises)
    lines = [f"{grade.submission or grade.student}: {grade.status}, {grade.total:g} of {maximum} points"]
    lines += [f"  {e.id} ({e.title}, {e.points} point{'s' if e.points != 1 else ''}): {grade.points.get(e.id, 0):g} — "
              f"{grade.feedback.get(e.id, 'not graded')}" for e in exercises]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m llmlab.grade", description="Grade a folder of submitted lab notebooks.")
    parser.add_argument("submissions", type=Path, help="a folder: notebooks, per-student folders, or an LMS bulk download")
    parser.add_argument("--lab", required=True, help="the lab's key, e.g. 03, or 04b for Chapter 4's second lab")
    parser.add_argument("--out", type=Path, default=Path("gradebook.csv"))
    parser.add_argument("--lms", choices=("canvas", "moodle"), default=None, help="also write the gradebook file this LMS imports")
    parser.add_argument("--assignment", default=None, help="the Canvas gradebook's column for this lab (default: 'Lab NN')")
    parser.add_argument("--only", default=None, metavar="STUDENT", help="grade only this student again (an id of the gradebook)")
    parser.add_argument("--force", action="store_true", help="grade again what was graded before")
    parser.add_argument("--workers", type=int, default=None,
                        help="submissions graded at once (default: one per core; 0: one at a time, judged in this process)")
    parser.add_argument("--cell-timeout", type=float, default=CELL_SECONDS, help="seconds before one cell is interrupted")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="address space of each submission's process")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="where bubblewrap cannot run: run submissions without one (they can then read and write your files)")
    arguments = parser.parse_args(argv)
    reason = sandbox.unavailable_reason()
    if reason and not arguments.no_sandbox:
        print(f"error: no sandbox: {reason}.\nSubmissions would run with your permissions; to grade anyway, trusting every "
              "submission, add --no-sandbox.", file=sys.stderr)
        return 2
    if arguments.no_sandbox:
        print(f"WARNING: grading WITHOUT a sandbox{f' ({reason})' if reason else ''}: each submission runs with your "
              "permissions and could read or change your files. The gradebook says so in its 'sandbox' column.")
    options = Options(cell_seconds=arguments.cell_timeout, sandboxed=not arguments.no_sandbox,
                      limits=sandbox.Limits(memory_gb=arguments.memory_gb))
    started = time.monotonic()
    grades = grade_folder(arguments.submissions, normalised_lab(arguments.lab), arguments.out, arguments.force,
                          arguments.workers, arguments.only, arguments.lms, options, arguments.assignment)
    print(f"graded {len(grades)} submissions of lab {arguments.lab} in {time.monotonic() - started:.0f} s: {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
