"""The grader: a folder of submissions of one lab, each graded in its own kernel, whatever it does.

The folder test runs the real command on Lab 3 (the smoke preset) with one submission of each kind
an instructor meets: the solution, the untouched student lab, a partly correct one, one that kills
its kernel, one with an endless loop, one with a syntax error, one with a deleted exercise cell,
one that prints megabytes, one that copies the reference and fakes a PASS line, one that is not
JSON and an empty file; it checks every row's points and reasons.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import nbformat
import pytest

from llmlab.course import grading
from llmlab.course.notebooks import ROOT, exercise_of, exercises_by_lab, solution_paths

LAB = "03"
SOLUTION = ROOT / "solutions" / "03_pretraining.ipynb"
STUDENT_LAB = ROOT / "labs" / "03_pretraining.ipynb"
CELL_TIMEOUT = 30  # seconds: long enough for every cell of the smoke run, short enough to stop the endless loop soon


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _exercise_cell(notebook, exercise_id: str):
    return next(cell for cell in notebook.cells if cell.cell_type == "code" and (exercise_of(cell) or {}).get("id") == exercise_id)


def _write(notebook, folder: Path, name: str) -> None:
    nbformat.write(notebook, folder / name)


def _submissions(folder: Path) -> None:
    solution = _read(SOLUTION)
    _write(solution, folder, "solution.ipynb")
    _write(_read(STUDENT_LAB), folder, "untouched.ipynb")

    partial = _read(STUDENT_LAB)  # 03.1 and 03.3 solved; 03.2 forgets the warm-up; 03.4 and 03.5 not attempted
    for exercise_id in ("03.1", "03.3"):
        _exercise_cell(partial, exercise_id).source = _exercise_cell(solution, exercise_id).source
    _exercise_cell(partial, "03.2").source = (
        "def learning_rate_at(step, total_steps, peak, warmup_steps, floor_ratio=0.1):\n"
        "    floor = floor_ratio * peak\n"
        "    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, step / total_steps)))")
    _write(partial, folder, "partial.ipynb")

    crash = _read(SOLUTION)  # exits Python in the middle: the kernel dies
    crash.cells.insert(3, nbformat.v4.new_code_cell("import os\nos._exit(1)"))
    _write(crash, folder, "crash.ipynb")

    endless = _read(SOLUTION)  # 03.3 never returns: its self-check cell and its graded check are stopped
    cell = _exercise_cell(endless, "03.3")
    cell.source = cell.source.replace('    """6 · N · D', '    while True:\n        pass\n    """6 · N · D')
    _write(endless, folder, "endless.ipynb")

    # Two faults in one notebook (each run of the whole lab costs seconds): 03.5 does not parse, and the 03.2 cell is deleted.
    broken = _read(SOLUTION)
    cell = _exercise_cell(broken, "03.5")
    cell.source = cell.source.replace("def training_step(model, inputs, targets, optimizer, learning_rate, clip_norm):",
                                      "def training_step(model, inputs, targets, optimizer, learning_rate, clip_norm)")
    broken.cells.remove(_exercise_cell(broken, "03.2"))
    _write(broken, folder, "syntax_error_and_deleted_cell.ipynb")

    # The reference imported in an exercise cell, a PASS line printed by hand, and megabytes of output.
    copied = _read(SOLUTION)
    _exercise_cell(copied, "03.1").source = "from llmlab.lm import causal_lm_loss"
    copied.cells.insert(3, nbformat.v4.new_code_cell('print("[PASS] 03.1: all fine")'))
    copied.cells.insert(4, nbformat.v4.new_code_cell("for _ in range(50_000):\n    print('x' * 100)"))
    _write(copied, folder, "copied_and_loud.ipynb")

    (folder / "not_json.ipynb").write_text("this is a notebook, promise {")
    (folder / "empty.ipynb").write_bytes(b"")


FULL = {"03.1": 2, "03.2": 2, "03.3": 2, "03.4": 3, "03.5": 3}
EXPECTED_POINTS = {
    "solution.ipynb": FULL,
    "untouched.ipynb": dict.fromkeys(FULL, 0),
    "partial.ipynb": {"03.1": 2, "03.2": 0, "03.3": 2, "03.4": 0, "03.5": 0},
    "crash.ipynb": dict.fromkeys(FULL, 0),
    "endless.ipynb": {**FULL, "03.3": 0},
    "syntax_error_and_deleted_cell.ipynb": {**FULL, "03.2": 0, "03.5": 0},
    "copied_and_loud.ipynb": FULL,
    "not_json.ipynb": dict.fromkeys(FULL, 0),
    "empty.ipynb": dict.fromkeys(FULL, 0),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    _submissions(folder)
    out = tmp_path_factory.mktemp("grades") / "gradebook.csv"
    grades = grading.grade_folder(folder, LAB, out, workers=2, time_limit=400, cell_timeout=CELL_TIMEOUT)
    return folder, out, {grade.submission: grade for grade in grades}


def test_every_submission_gets_exactly_its_points(graded):
    _, _, grades = graded
    assert sorted(grades) == sorted(EXPECTED_POINTS)
    for name, points in EXPECTED_POINTS.items():
        assert grades[name].points == {key: float(value) for key, value in points.items()}, (name, grades[name])


def test_every_submission_gets_its_reason(graded):
    _, _, grades = graded
    executed = set(EXPECTED_POINTS) - {"crash.ipynb", "not_json.ipynb", "empty.ipynb"}
    assert all(grades[name].status == "graded" for name in executed)
    assert grades["crash.ipynb"].status.startswith("the kernel died")
    assert grades["not_json.ipynb"].status.startswith("not a notebook")
    assert grades["empty.ipynb"].status == "empty file"
    assert all(text.startswith("passed, and 2 of 2 hidden variants") for text in grades["solution.ipynb"].feedback.values())
    assert all("not implemented yet" in text for text in grades["untouched.ipynb"].feedback.values())
    partial = grades["partial.ipynb"].feedback
    assert partial["03.2"].startswith("failed your self-check:") and "warm" in partial["03.2"]
    assert "not implemented yet" in partial["03.4"]
    assert f"did not finish within {CELL_TIMEOUT} s" in grades["endless.ipynb"].feedback["03.3"]
    assert "its self-check cell: stopped after the cell time limit" in grades["endless.ipynb"].feedback["03.3"]
    broken = grades["syntax_error_and_deleted_cell.ipynb"].feedback
    assert broken["03.5"].startswith("no 'training_step' defined") and "its cell: SyntaxError" in broken["03.5"]
    assert broken["03.2"].startswith("the exercise cell is missing")


def test_integrity_flags(graded):
    _, _, grades = graded
    assert grades["copied_and_loud.ipynb"].flags == [
        "03.1: imports llmlab in an exercise cell (the reference implementations live there)",
        "a code cell prints a '[PASS]' line itself",
    ]
    assert all(not grades[name].flags for name in EXPECTED_POINTS if name != "copied_and_loud.ipynb")


def test_gradebook_and_feedback_files(graded):
    folder, out, _ = graded
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["submission", "status", *FULL, "total", "maximum", "flags"]
    by_name = {row["submission"]: row for row in rows}
    assert by_name["solution.ipynb"]["total"] == "12" and by_name["solution.ipynb"]["maximum"] == "12"
    assert by_name["partial.ipynb"]["total"] == "4" and by_name["partial.ipynb"]["03.2"] == "0"
    assert "prints a '[PASS]' line" in by_name["copied_and_loud.ipynb"]["flags"]
    feedback = (out.parent / "gradebook_feedback" / "partial.ipynb.txt").read_text()
    assert feedback.startswith("partial.ipynb: graded, 4 of 12 points")
    assert "03.3 (the 6·N·D estimate, 2 points): 2 — passed" in feedback


def test_a_second_run_skips_what_was_graded_unless_forced(graded, monkeypatch):
    folder, out, grades = graded

    def must_not_run(*args, **kwargs):
        raise AssertionError("graded again")

    monkeypatch.setattr(grading, "grade_submission", must_not_run)
    again = {grade.submission: grade for grade in grading.grade_folder(folder, LAB, out)}
    assert {name: grade.points for name, grade in again.items()} == {name: grade.points for name, grade in grades.items()}

    regraded = []
    monkeypatch.setattr(grading, "grade_submission", lambda path, *args, **kwargs: regraded.append(path.name) or grading.Grade(path.name))
    grading.grade_folder(folder, LAB, out.with_name("forced.csv"), force=True)
    assert sorted(regraded) == sorted(EXPECTED_POINTS)


# --- every lab ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", solution_paths(), ids=lambda p: p.name)
def test_every_lab_can_be_graded(path):
    """Each lab's exercises are found with the name its self-check passes, and the solution's code earns every point.

    The folder test above runs whole notebooks; here, to stay quick, only the solution's import cell
    and exercise cells run, in this process, before the grading cell's function."""
    lab = path.name.split("_")[0]
    exercises = grading.lab_exercises(lab)
    assert [e.id for e in exercises] == [e["id"] for e in exercises_by_lab()[path.name]]
    assert all(exercise.name for exercise in exercises), exercises
    cells = [cell for cell in _read(path).cells if cell.cell_type == "code"]
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(cells[1].source, namespace)  # the imports and start_lab
        for cell in cells:
            if exercise_of(cell) is not None:
                exec(cell.source, namespace)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        grading.grade_in_kernel({e.id: e.name for e in exercises}, namespace)
    line = printed.getvalue().strip().splitlines()[-1]
    results = json.loads(line.removeprefix(grading.RESULT_PREFIX))
    for exercise in exercises:
        result = results[exercise.id]
        assert result["passed"] and result["hidden_passed"] == result["hidden_total"] == 2, (exercise.id, result)


def test_unknown_lab_is_one_clear_line():
    with pytest.raises(ValueError, match="no lab '09'; labs: 01, 02"):
        grading.lab_exercises("09")
