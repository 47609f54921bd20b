"""Finding each student's notebook in LMS bulk downloads, and the gradebook files those LMSs import."""

from __future__ import annotations

import csv

import pytest

from llmlab.course.grading import Grade
from llmlab.course.submissions import collect, write_lms_gradebook


def _touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_canvas_files_are_students_by_user_id_newest_resubmission_first(tmp_path):
    _touch(tmp_path / "doejane_4711_883344_03_pretraining.ipynb")
    newest = _touch(tmp_path / "doejane_4711_883399_03_pretraining-2.ipynb")
    _touch(tmp_path / "doejane_4711_883355_03_pretraining-1.ipynb")
    late = _touch(tmp_path / "roelee_LATE_5150_883350_lab3.ipynb")
    found = {submission.student: submission for submission in collect(tmp_path)}
    assert sorted(found) == ["4711", "5150"]
    assert found["4711"].path == newest and found["4711"].name == "doejane" and found["4711"].layout == "canvas"
    assert found["5150"].path == late and found["5150"].late


def test_moodle_folders_are_participants(tmp_path):
    notebook = _touch(tmp_path / "Jane Doe_1234567_assignsubmission_file" / "03_pretraining.ipynb")
    _touch(tmp_path / "Old Moodle_7654321_assignsubmission_file_" / "lab.ipynb")
    _touch(tmp_path / "Nobody Here_1111111_assignsubmission_file" / "notes.txt")
    found = {submission.student: submission for submission in collect(tmp_path)}
    assert found["Participant 1234567"].path == notebook and found["Participant 1234567"].name == "Jane Doe"
    assert found["Participant 7654321"].layout == "moodle"
    assert found["Participant 1111111"].path is None and found["Participant 1111111"].problem == "no notebook in the student's folder"


def test_plain_files_and_folders_per_student(tmp_path):
    alone = _touch(tmp_path / "alice.ipynb")
    inside = _touch(tmp_path / "bob" / "work" / "lab3.ipynb")
    _touch(tmp_path / "carol" / "a.ipynb")
    _touch(tmp_path / "carol" / "b.ipynb")
    _touch(tmp_path / ".hidden.ipynb")
    found = {submission.student: submission for submission in collect(tmp_path)}
    assert sorted(found) == ["alice", "bob", "carol"]
    assert found["alice"].path == alone and found["bob"].path == inside
    assert found["carol"].path is None and found["carol"].problem.startswith("more than one notebook")


def test_a_student_twice_is_an_error(tmp_path):
    _touch(tmp_path / "alice.ipynb")
    _touch(tmp_path / "alice" / "lab.ipynb")
    with pytest.raises(ValueError, match="student 'alice' appears twice"):
        collect(tmp_path)


def test_canvas_and_moodle_gradebooks(tmp_path):
    _touch(tmp_path / "in" / "doejane_4711_883344_lab.ipynb")
    _touch(tmp_path / "in" / "Jane Doe_1234567_assignsubmission_file" / "lab.ipynb")
    submissions = collect(tmp_path / "in")
    grades = [Grade("4711", points={"03.1": 2.0, "03.2": 0.0}), Grade("Participant 1234567", points={"03.1": 2.0, "03.2": 2.0})]
    feedback = {"4711": "4711: graded, 2 of 4 points\n", "Participant 1234567": "graded, 4 of 4 points\n  03.1: passed\n"}
    write_lms_gradebook("canvas", tmp_path / "canvas.csv", grades, submissions, 4, feedback, assignment="Lab 03")
    rows = list(csv.reader(open(tmp_path / "canvas.csv", encoding="utf-8")))
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Lab 03"]
    assert rows[1] == ["Points Possible", "", "", "", "", "4"]
    assert rows[2] == ["doejane", "4711", "", "", "", "2"]
    write_lms_gradebook("moodle", tmp_path / "moodle.csv", grades, submissions, 4, feedback)
    rows = list(csv.DictReader(open(tmp_path / "moodle.csv", encoding="utf-8")))
    assert rows[1] == {"Identifier": "Participant 1234567", "Full name": "Jane Doe", "Grade": "4", "Maximum Grade": "4",
                       "Feedback comments": "graded, 4 of 4 points<br>  03.1: passed<br>"}
    with pytest.raises(ValueError, match="unknown LMS 'blackboard'"):
        write_lms_gradebook("blackboard", tmp_path / "x.csv", grades, submissions, 4, feedback)
