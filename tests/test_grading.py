"""The grader: every submission judged outside its own process, whatever it does.

One folder of Lab 3 submissions, graded once by the real command's function with the real
sandbox (bubblewrap): Lab 3 has every kind of exercise the protocol carries but a lent model
(plain functions on tensors and numbers, a dataclass argument, an nn.Module class built with
given weights, a training step run where the learner's code is; Lab 5's lent model is graded in
tests/test_grading_labs.py). Each submission is one attack or one accident, built from the
project's own solution or student lab, cut to the set-up, import and exercise cells (the rest
of the lab does not change what is judged, and costs seconds). Each test asserts the exact
points, the status and the flags, and that nothing outside the submission's scratch folder
changed: the course tree and the submissions folder hash the same before and after.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
from pathlib import Path

import nbformat
import pytest

from llmlab.course import grading, sandbox
from llmlab.course.notebooks import ROOT, exercise_of

LAB = "03"
SOLUTION = ROOT / "solutions" / "03_pretraining.ipynb"
STUDENT_LAB = ROOT / "labs" / "03_pretraining.ipynb"
FULL = {"03.1": 2, "03.2": 2, "03.3": 2, "03.4": 3, "03.5": 3}
NONE = dict.fromkeys(FULL, 0)
# exercise_seconds: long enough for 03.5's check (a training step and its hidden variants) on a loaded 2-core CI
# machine, where 8 s once timed it out in the restarted process after 03.3's endless loop; short enough that the
# endless loop costs the run little.
OPTIONS = dict(cell_seconds=20, exercise_seconds=20, notebook_seconds=120)

NO_SANDBOX = sandbox.unavailable_reason()
if NO_SANDBOX and os.environ.get("LLMLAB_SANDBOX_TEST") == "required":  # .ci/run installed bubblewrap: it must work
    raise RuntimeError(f"LLMLAB_SANDBOX_TEST=required, but there is no sandbox: {NO_SANDBOX}")
pytestmark = pytest.mark.skipif(NO_SANDBOX is not None, reason=f"no sandbox here: {NO_SANDBOX}")


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _minimal(path: Path):
    """The lab cut to what grading judges: the set-up and import cells, and each exercise with its self-check cell."""
    notebook = _read(path)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    keep = code[:2] + [cell for position, cell in enumerate(code)
                       if exercise_of(cell) is not None or (position and exercise_of(code[position - 1]) is not None)]
    notebook.cells = keep
    return notebook


def _exercise_cell(notebook, exercise_id: str):
    return next(cell for cell in notebook.cells if cell.cell_type == "code" and (exercise_of(cell) or {}).get("id") == exercise_id)


def _with_cell(notebook, source: str, position: int = 2):
    """``notebook`` with an ordinary code cell inserted after the import cell (or at ``position``)."""
    notebook.cells.insert(position, nbformat.v4.new_code_cell(source))
    return notebook


# --- the attacks and accidents -------------------------------------------------------------------------

PATCH_THE_JUDGE = """
import json
import llmlab.checks as registry
import llmlab.checks.core as core
from llmlab.course import grading
passing = lambda code, exercise="": core.CheckResult(exercise or "03.1", True, "fine")
core.run_check = lambda exercise, body: core.CheckResult(exercise, True, "fine")
registry.check_for = lambda exercise: passing
for name in list(checks.CHECKS):
    checks.CHECKS[name] = passing
grading.judge_exercise = lambda exercise, code: {"passed": True, "message": "", "hidden_passed": 2, "hidden_total": 2}
print("LLMLAB GRADE " + json.dumps({key: {"found": True, "passed": True} for key in checks.CHECKS}))
"""

FORGE_THE_CHANNEL = """
import json, os, struct
def forged(header):
    body = json.dumps(header).encode()
    return struct.pack("<II", len(body), 0) + body
fake = forged({"ready": True, "errors": []}) + b"".join(forged({"reply": "ok", "value": 1}) for _ in range(40))
for fd in (1, 2, 4, 5):
    try:
        os.write(fd, fake)
    except OSError:
        pass
print("[PASS] 03.1: fine")
"""

HOOKS = """
import atexit, builtins, sys, threading
sys.settrace(lambda *args: None)
sys.setprofile(lambda *args: None)
sys.addaudithook(lambda event, args: None)
atexit.register(lambda: print("all passed"))
get_ipython().events.register("post_run_cell", lambda result: None)
sys.excepthook = lambda *args: None
builtins.print = lambda *args, **kwargs: None
import llmlab.checks.core as core
core.LATEST_RESULTS.update({key: core.CheckResult(key, True, "fine") for key in checks.CHECKS})
threading.Thread(target=lambda: [None for _ in iter(int, 1)], daemon=True).start()  # a thread that never stops
"""

# Each exercise bound to the course's own implementation, each in another spelling.
REFERENCES = {
    "03.1": "import llmlab.lm\n\ndef causal_lm_loss(logits, tokens):\n    return llmlab.lm.causal_lm_loss(logits, tokens)",
    "03.2": "learning_rate_at = cosine_from_the_course",  # imported under an alias in another cell (below)
    "03.3": "import importlib\ntraining_flops_for = importlib.import_module('llmlab.checks.lab03').reference_training_flops",
    "03.4": "class PreLNBlock(__import__('llmlab.model', fromlist=['Block']).Block):\n    pass",
    "03.5": "import sys\ntraining_step = sys.modules['llmlab.checks.lab03'].reference_training_step",
}

FORK_MANY = """
import os, time
children = 0
try:
    for _ in range(5000):
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
        children += 1
except OSError as error:
    print("stopped after", children, "processes:", error)
"""

FILL_THE_DISK = """
chunk = b"0" * 2**20
for folder in (".", "/tmp"):
    try:
        with open(f"{folder}/filler", "wb") as handle:
            while True:
                handle.write(chunk)
    except OSError as error:
        print(folder, error)
"""


def _submissions(folder: Path, outside: Path) -> None:
    solution, student = _minimal(SOLUTION), _minimal(STUDENT_LAB)

    def save(notebook, name: str) -> None:
        nbformat.write(notebook, folder / name)

    save(solution, "solution.ipynb")
    save(student, "untouched.ipynb")

    partial = _minimal(STUDENT_LAB)  # 03.1 and 03.3 solved; 03.2 forgets the warm-up; 03.4 and 03.5 not attempted
    for exercise_id in ("03.1", "03.3"):
        _exercise_cell(partial, exercise_id).source = _exercise_cell(solution, exercise_id).source
    _exercise_cell(partial, "03.2").source = (
        "def learning_rate_at(step, total_steps, peak, warmup_steps, floor_ratio=0.1):\n"
        "    floor = floor_ratio * peak\n"
        "    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, step / total_steps)))")
    save(partial, "partial.ipynb")

    save(_with_cell(_minimal(SOLUTION), "import os\nos._exit(1)"), "crash.ipynb")

    endless = _minimal(SOLUTION)  # 03.3 never returns when called
    cell = _exercise_cell(endless, "03.3")
    # waits for ever rather than spinning: the grader's deadline is the same, and a spinning loop took 20 s of a CPU
    # from the rest of the suite
    cell.source = cell.source.replace('    """6 · N · D', '    while True:\n        __import__("time").sleep(1)\n    """6 · N · D')
    save(endless, "endless.ipynb")

    broken = _minimal(SOLUTION)  # 03.5 does not parse, and the 03.2 cell is deleted
    cell = _exercise_cell(broken, "03.5")
    cell.source = cell.source.replace("def training_step(model, inputs, targets, optimizer, learning_rate, clip_norm):",
                                      "def training_step(model, inputs, targets, optimizer, learning_rate, clip_norm)")
    broken.cells.remove(_exercise_cell(broken, "03.2"))
    save(broken, "syntax_error_and_deleted_cell.ipynb")

    loud = _with_cell(_minimal(SOLUTION), 'print("[PASS] 03.1: all fine")')
    save(_with_cell(loud, "for _ in range(50_000):\n    print('x' * 100)"), "loud_with_a_fake_pass.ipynb")

    save(_with_cell(_minimal(STUDENT_LAB), PATCH_THE_JUDGE), "patches_the_judge.ipynb")
    save(_with_cell(_minimal(STUDENT_LAB), FORGE_THE_CHANNEL), "forges_the_channel.ipynb")
    save(_with_cell(_minimal(STUDENT_LAB), HOOKS), "registers_hooks.ipynb")

    references = _with_cell(_minimal(SOLUTION), "from llmlab.training import cosine_learning_rate as cosine_from_the_course")
    for exercise_id, source in REFERENCES.items():
        _exercise_cell(references, exercise_id).source = source
    save(references, "references.ipynb")

    given_up = _minimal(SOLUTION)
    _exercise_cell(given_up, "03.2").source = 'checks.use_reference("03.2")'
    save(given_up, "use_reference.ipynb")

    escape = "\n".join(f"for attempt in range(1):\n    try:\n        open({str(path)!r}, 'w').write('pwned')\n    except OSError as error:\n"
                       f"        print(error)" for path in (ROOT / "llmlab" / "pwned.py", folder / "pwned.txt", outside / "pwned.txt",
                                                         ROOT / "solutions" / "pwned.txt", Path("/root/pwned.txt")))
    save(_with_cell(_minimal(STUDENT_LAB), escape), "writes_outside.ipynb")

    copy_other = (f"import json\nother = json.load(open({str(folder / 'solution.ipynb')!r}))\n"
                  "for cell in other['cells']:\n"
                  "    if cell['cell_type'] == 'code' and 'exercise' in cell['metadata'].get('llmlab', {}):\n"
                  "        exec(''.join(cell['source']))")
    copying = _minimal(STUDENT_LAB)
    copying.cells.append(nbformat.v4.new_code_cell(copy_other))
    save(copying, "reads_another_submission.ipynb")

    save(_with_cell(_minimal(SOLUTION), FORK_MANY), "many_processes.ipynb")
    save(_with_cell(_minimal(SOLUTION), FILL_THE_DISK), "fills_the_disk.ipynb")

    own_preset = _minimal(SOLUTION)  # the exercises exist only if the lab runs at the grader's preset
    own_preset.cells.insert(1, nbformat.v4.new_code_cell('import os\nos.environ["LLMLAB_PRESET"] = "cpu"'))
    for exercise_id in FULL:
        cell = _exercise_cell(own_preset, exercise_id)
        cell.source = "from llmlab.runtime import preset_name\nif preset_name() == 'smoke':\n" + \
            "\n".join("    " + line for line in cell.source.splitlines())
    save(own_preset, "sets_its_own_preset.ipynb")

    (folder / "not_json.ipynb").write_text("this is a notebook, promise {")
    (folder / "empty.ipynb").write_bytes(b"")


EXPECTED_POINTS = {
    "solution": FULL,
    "untouched": NONE,
    "partial": {"03.1": 2, "03.2": 0, "03.3": 2, "03.4": 0, "03.5": 0},
    "crash": NONE,
    "endless": {**FULL, "03.3": 0},
    "syntax_error_and_deleted_cell": {**FULL, "03.2": 0, "03.5": 0},
    "loud_with_a_fake_pass": FULL,
    "patches_the_judge": NONE,
    "forges_the_channel": NONE,
    "registers_hooks": NONE,
    "references": NONE,
    "use_reference": {**FULL, "03.2": 0},
    "writes_outside": NONE,
    "reads_another_submission": NONE,
    "many_processes": FULL,
    "fills_the_disk": FULL,
    "sets_its_own_preset": FULL,
    "not_json": NONE,
    "empty": NONE,
}


def _tree_hash(*folders: Path) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path).encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder, outside = tmp_path_factory.mktemp("submissions"), tmp_path_factory.mktemp("instructor")
    _submissions(folder, outside)
    course = (ROOT / "llmlab", ROOT / "solutions", ROOT / "labs", ROOT / "data")
    before = _tree_hash(*course), _tree_hash(folder), _tree_hash(outside)
    out = tmp_path_factory.mktemp("grades") / "gradebook.csv"
    grades = grading.grade_folder(folder, LAB, out, workers=2, options=grading.Options(**OPTIONS))
    after = _tree_hash(*course), _tree_hash(folder), _tree_hash(outside)
    return folder, out, {grade.student: grade for grade in grades}, before, after


def test_every_submission_gets_exactly_its_points(graded):
    _, _, grades, _, _ = graded
    assert sorted(grades) == sorted(EXPECTED_POINTS)
    for name, points in EXPECTED_POINTS.items():
        assert grades[name].points == {key: float(value) for key, value in points.items()}, (name, grades[name])


def test_nothing_outside_the_scratch_folder_changed(graded):
    _, _, grades, before, after = graded
    assert before == after, "the course, the submissions folder or the instructor's folder changed during grading"
    assert not (ROOT / "llmlab" / "pwned.py").exists() and not (ROOT / "solutions" / "pwned.txt").exists()
    assert grades["writes_outside"].status == "graded"


def test_no_process_of_a_submission_outlives_its_grading(graded):
    for slot in range(2):
        left = subprocess.run(["pgrep", "-u", str(sandbox.FIRST_UID + slot)], capture_output=True, text=True).stdout.split()
        assert not left, f"processes of sandbox user {sandbox.FIRST_UID + slot} still run: {left}"
    assert graded[2]["many_processes"].status == "graded"


def test_every_submission_gets_its_reason(graded):
    _, _, grades, _, _ = graded
    crashed = {"crash", "not_json", "empty"}
    assert all(grades[name].status == "graded" for name in set(EXPECTED_POINTS) - crashed), \
        {name: grades[name].status for name in EXPECTED_POINTS}
    assert grades["crash"].status.startswith("the submission's process died while running the notebook")
    assert grades["not_json"].status.startswith("not a notebook")
    assert grades["empty"].status == "empty file"
    assert all(text == "passed" for text in grades["solution"].feedback.values())
    assert all("not implemented yet" in text for text in grades["untouched"].feedback.values())
    partial = grades["partial"].feedback
    assert partial["03.2"].startswith("failed your self-check:") and "warm" in partial["03.2"]
    assert "did not finish within" in grades["endless"].feedback["03.3"]
    broken = grades["syntax_error_and_deleted_cell"].feedback
    assert broken["03.5"].startswith("no 'training_step' defined") and "its cell: SyntaxError" in broken["03.5"]
    assert broken["03.2"].startswith("the exercise cell is missing")


def test_flags_name_what_the_learner_did_and_only_that(graded):
    _, _, grades, _, _ = graded
    assert grades["loud_with_a_fake_pass"].flags == [
        "a code cell prints a '[PASS]' line itself (it earns nothing: the grader does not read output)"]
    withheld = {"03.1": "llmlab.lm.causal_lm_loss", "03.2": "llmlab.training.cosine_learning_rate",
                "03.3": "llmlab.checks.lab03.reference_training_flops", "03.4": "llmlab.model.Block",
                "03.5": "llmlab.checks.lab03.reference_training_step"}
    assert grades["references"].flags == [f"{key}: calls or wraps the course's reference ({where})" for key, where in withheld.items()]
    assert grades["use_reference"].flags == ["03.2: calls or wraps the course's reference (llmlab.training.cosine_learning_rate)"]
    flagged = {"loud_with_a_fake_pass", "references", "use_reference", "forges_the_channel"}
    assert all(not grades[name].flags for name in set(EXPECTED_POINTS) - flagged), \
        {name: grades[name].flags for name in EXPECTED_POINTS if grades[name].flags}


def test_students_read_no_flags_and_no_hidden_variants(graded):
    _, out, grades, _, _ = graded
    feedback = (out.parent / "gradebook_feedback" / "partial.txt").read_text()
    assert feedback.startswith("partial.ipynb: graded, 4 of 12 points")
    assert "03.3 (the 6·N·D estimate, 2 points): 2 — passed" in feedback
    for name in ("references", "loud_with_a_fake_pass", "solution"):
        text = (out.parent / "gradebook_feedback" / f"{name}.txt").read_text()
        assert "flag" not in text and "hidden" not in text and "reference (" not in text, text
    report = (out.parent / "gradebook_report" / "references.txt").read_text()
    assert "flag: 03.1: calls or wraps the course's reference (llmlab.lm.causal_lm_loss)" in report
    assert "hidden variants passed: 2 of 2" in (out.parent / "gradebook_report" / "solution.txt").read_text()


def test_gradebook(graded):
    _, out, _, _, _ = graded
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["student", "submission", "status", *FULL, "total", "maximum", "flags", "sandbox"]
    by_name = {row["student"]: row for row in rows}
    assert by_name["solution"]["total"] == "12" and by_name["solution"]["maximum"] == "12"
    assert by_name["partial"]["total"] == "4" and by_name["partial"]["03.2"] == "0"
    assert all(row["sandbox"] == "on" for row in rows)


def test_a_second_run_grades_only_what_changed_or_who_is_asked_for(graded):
    folder, out, grades, _, _ = graded
    results = out.with_name("gradebook_results")
    times = {path.name: path.stat().st_mtime_ns for path in results.iterdir()}
    again = {grade.student: grade for grade in grading.grade_folder(folder, LAB, out, workers=0, options=grading.Options(**OPTIONS))}
    assert {name: grade.points for name, grade in again.items()} == {name: grade.points for name, grade in grades.items()}
    assert {path.name: path.stat().st_mtime_ns for path in results.iterdir()} == times, "a second run graded again"
    grading.grade_folder(folder, LAB, out, only="partial", workers=0, options=grading.Options(**OPTIONS))
    changed = {path.name for path in results.iterdir() if path.stat().st_mtime_ns != times[path.name]}
    assert changed == {"partial.json"}
    with pytest.raises(ValueError, match="no submission of student 'nobody'"):
        grading.grade_folder(folder, LAB, out, only="nobody")


def test_unknown_lab_is_one_clear_line():
    with pytest.raises(ValueError, match="no lab '09'; labs: 01, 02"):
        grading.lab_exercises("09")


def test_without_a_sandbox_the_grader_stops_unless_told_to_go_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "bubblewrap needs Linux; this is Darwin")
    assert grading.main([str(tmp_path), "--lab", "03", "--out", str(tmp_path / "gradebook.csv")]) == 2
    assert "no sandbox: bubblewrap needs Linux; this is Darwin" in capsys.readouterr().err
    assert not (tmp_path / "gradebook.csv").exists()


def test_without_a_sandbox_every_row_says_so_and_references_are_still_withheld(tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    references = _with_cell(_minimal(SOLUTION), "from llmlab.training import cosine_learning_rate as cosine_from_the_course")
    _exercise_cell(references, "03.2").source = REFERENCES["03.2"]
    nbformat.write(references, folder / "trusted.ipynb")
    out = tmp_path / "gradebook.csv"
    options = grading.Options(**OPTIONS, sandboxed=False)
    [grade] = grading.grade_folder(folder, LAB, out, workers=0, options=options)
    assert grade.status == "graded" and grade.points == {**{key: float(value) for key, value in FULL.items()}, "03.2": 0.0}
    assert grade.flags == ["03.2: calls or wraps the course's reference (llmlab.training.cosine_learning_rate)"]
    with open(out, newline="", encoding="utf-8") as handle:
        assert [row["sandbox"] for row in csv.DictReader(handle)] == ["OFF: the submission ran without a sandbox"]
    assert "sandbox: OFF" in (tmp_path / "gradebook_report" / "trusted.txt").read_text()

