"""Every lab through the real grader: its solution earns every point, its references earn none.

For each lab, two submissions cut to the set-up, import and exercise cells: the solution, and one
whose every exercise cell is ``checks.use_reference("NN.k")``. The first shows that each kind of
exercise crosses the grader's protocol (Lab 1's dictionaries keyed by tuples, Lab 4b's collator,
Lab 5's model lent by the judge, Lab 6's dataclass…); the second that the lab's references are
withheld in the sandbox, so that using them earns 0 and a flag.
"""

from __future__ import annotations

import os

import nbformat
import pytest

from llmlab.course import grading, sandbox
from llmlab.course.notebooks import exercise_of, lab_key, solution_paths

NO_SANDBOX = sandbox.unavailable_reason()
if NO_SANDBOX and os.environ.get("LLMLAB_SANDBOX_TEST") == "required":  # .ci/run installed bubblewrap: it must work
    raise RuntimeError(f"LLMLAB_SANDBOX_TEST=required, but there is no sandbox: {NO_SANDBOX}")
pytestmark = pytest.mark.skipif(NO_SANDBOX is not None, reason=f"no sandbox here: {NO_SANDBOX}")


@pytest.fixture(autouse=True)
def own_sandbox_users(monkeypatch):
    """Other sandbox users than tests/test_grading.py's: that file checks that no process of its users outlives its
    grading, and under xdist these gradings may run at the same moment in another worker."""
    monkeypatch.setattr(sandbox, "FIRST_UID", sandbox.FIRST_UID + 100)


def _minimal(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    notebook.cells = code[:2] + [cell for position, cell in enumerate(code)
                                 if exercise_of(cell) is not None or (position and exercise_of(code[position - 1]) is not None)]
    return notebook


@pytest.mark.parametrize("path", solution_paths(), ids=lambda p: p.name)
def test_the_solution_earns_every_point_and_the_references_none(path, tmp_path):
    lab = lab_key(path.name)
    folder = tmp_path / "submissions"
    folder.mkdir()
    nbformat.write(_minimal(path), folder / "solution.ipynb")
    references = _minimal(path)
    exercises = grading.lab_exercises(lab)
    for cell in references.cells:
        exercise = exercise_of(cell)
        if exercise is not None:
            cell.source = f"checks.use_reference({exercise['id']!r})"
    nbformat.write(references, folder / "references.ipynb")
    grades = {grade.student: grade for grade in grading.grade_folder(folder, lab, tmp_path / "gradebook.csv", workers=0)}
    solution, given_up = grades["solution"], grades["references"]
    assert solution.status == "graded" and solution.points == {e.id: float(e.points) for e in exercises}, solution
    assert not solution.flags
    assert given_up.status == "graded" and given_up.total == 0, given_up
    assert [flag.split(":")[0] for flag in given_up.flags] == [e.id for e in exercises], given_up.flags
