"""The sandbox's command line and its withheld course, read without running a submission."""

from __future__ import annotations

from pathlib import Path

from llmlab.course import sandbox


def test_the_private_tmp_is_made_before_anything_is_bound_under_tmp():
    """A course cloned under /tmp (as CI may clone it) must stay visible: a tmpfs mounted after its binds would hide it."""
    arguments = sandbox.command(Path("/tmp/submission/notebook.ipynb"), Path("/tmp/llmlab-course-x/llmlab"), 60, 0)
    tmp = next(i for i, (a, b) in enumerate(zip(arguments, arguments[1:])) if (a, b) == ("--tmpfs", "/tmp"))
    binds = [i for i, a in enumerate(arguments) if a == "--ro-bind" and arguments[i + 2].startswith("/tmp/")]
    assert all(tmp < i for i in binds)
    assert arguments[arguments.index("--", arguments.index("--new-session")) + 1] == "setpriv", "the submission runs as its own user"
    for isolation in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert isolation in arguments


def test_the_withheld_course_has_stubs_where_the_references_were(tmp_path):
    course = sandbox.withheld_course("03", tmp_path)
    lm, model, runtime = ((course / name).read_text() for name in ("lm.py", "model.py", "runtime.py"))
    assert "ReferenceWithheld('03.1', 'llmlab.lm.causal_lm_loss')" in lm and "F.cross_entropy" not in lm.split("def causal_lm_loss")[1].split("\ndef ")[0]
    assert "ReferenceWithheld('03.4', 'llmlab.model.Block')" in model
    assert "return 'smoke'" in runtime.split("def preset_name")[1].split("\ndef ")[0]
    assert not list(course.rglob("__pycache__"))
