"""Finding each student's notebook in what an instructor downloads, and the gradebook files an LMS imports.

Three layouts, told apart by their names (a folder may mix them):

- plain: ``FOLDER/STUDENT.ipynb``, or a folder per student, ``FOLDER/STUDENT/anything.ipynb``;
- Canvas ("Download Submissions"): ``doejane_4711_883344_02_attention.ipynb``, that is
  ``sortablename[_LATE]_USERID_SUBMISSIONID_originalname``, where a resubmission's original
  name ends in ``-1``, ``-2``…; the student is the Canvas user id;
- Moodle ("Download all submissions"): a folder per student, ``Jane Doe_1234567_assignsubmission_file``
  (older versions end in ``_assignsubmission_file_``), holding the files; the student is the
  participant id.

Gradebook files (:func:`write_lms_gradebook`): Canvas's gradebook import (a CSV of Student, ID,
SIS User ID, SIS Login ID, Section and one column for the assignment), and Moodle's offline
grading worksheet (Identifier "Participant N", Full name, Grade, Maximum Grade, Feedback comments),
which Moodle's "Upload grading worksheet" reads.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

CANVAS_FILE = re.compile(r"^(?P<name>[a-z0-9]+?)_(?:(?P<late>LATE)_)?(?P<user>\d+)_(?P<submission>\d+)_(?P<original>.+)$")
MOODLE_FOLDER = re.compile(r"^(?P<name>.+)_(?P<participant>\d+)_assignsubmission_(?:file|onlinetext)_?$")


@dataclass
class Submission:
    student: str          # the id the gradebook uses: a file stem, a folder name, a Canvas user id, a Moodle participant id
    path: Path | None     # the notebook; None when the student's folder holds none
    name: str = ""        # the student's name where the layout gives one
    layout: str = "plain"
    late: bool = False
    problem: str = ""     # why there is nothing to grade, when path is None


def _notebooks(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.ipynb") if path.is_file() and ".ipynb_checkpoints" not in path.parts)


def _newest_resubmission(paths: list[Path]) -> Path:
    """Of Canvas's ``name.ipynb``, ``name-1.ipynb``, ``name-2.ipynb``…, the last one."""
    def attempt(path: Path) -> int:
        match = re.search(r"-(\d+)$", path.stem)
        return int(match.group(1)) if match else 0

    return max(paths, key=attempt)


def collect(folder: Path) -> list[Submission]:
    """One Submission per student in ``folder``, in a stable order; a student twice in the folder is an error."""
    folder = Path(folder)
    found: dict[str, Submission] = {}
    canvas: dict[str, list[tuple[Path, re.Match]]] = {}

    def add(submission: Submission) -> None:
        if submission.student in found:
            raise ValueError(f"student {submission.student!r} appears twice in {folder}: "
                             f"{found[submission.student].path} and {submission.path}")
        found[submission.student] = submission

    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            moodle = MOODLE_FOLDER.match(entry.name)
            notebooks = _notebooks(entry)
            student, name, layout = (f"Participant {moodle['participant']}", moodle["name"], "moodle") if moodle else \
                (entry.name, "", "plain")
            if not notebooks:
                add(Submission(student, None, name, layout, problem="no notebook in the student's folder"))
            elif len(notebooks) > 1:
                add(Submission(student, None, name, layout, problem="more than one notebook in the student's folder: "
                                                                   + ", ".join(path.name for path in notebooks[:4])))
            else:
                add(Submission(student, notebooks[0], name, layout))
            continue
        match = CANVAS_FILE.match(entry.name)
        if match and entry.suffix == ".ipynb":
            canvas.setdefault(match["user"], []).append((entry, match))
        elif entry.is_file():
            add(Submission(entry.stem, entry))
    for user, files in canvas.items():
        path = _newest_resubmission([path for path, _ in files])
        match = next(m for p, m in files if p == path)
        add(Submission(user, path, match["name"], "canvas", late=bool(match["late"])))
    return sorted(found.values(), key=lambda submission: submission.student)


def write_lms_gradebook(lms: str, path: Path, grades, submissions: list[Submission], maximum: int,
                        feedback: dict[str, str], assignment: str | None = None) -> None:
    """The gradebook file ``lms`` ("canvas" or "moodle") imports, one row per graded student of that layout (or any)."""
    by_student = {submission.student: submission for submission in submissions}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if lms == "canvas":
            # Canvas matches rows on ID; an assignment column whose name matches no assignment becomes a new one.
            writer.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", assignment or "Lab"])
            writer.writerow(["Points Possible", "", "", "", "", maximum])
            for grade in grades:
                submission = by_student[grade.student]
                writer.writerow([submission.name or grade.student, grade.student, "", "", "", f"{grade.total:g}"])
        elif lms == "moodle":
            writer.writerow(["Identifier", "Full name", "Grade", "Maximum Grade", "Feedback comments"])
            for grade in grades:
                submission = by_student[grade.student]
                writer.writerow([grade.student, submission.name, f"{grade.total:g}", maximum,
                                 feedback[grade.student].replace("\n", "<br>")])
        else:
            raise ValueError(f"unknown LMS {lms!r}: canvas or moodle")
