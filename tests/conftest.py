"""Fixtures shared by the test files: the book, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from llmlab.course import site as course_site

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # The labs resume long runs from their checkpoints. The smoke runs of the tests write theirs to a
    # fresh folder, so a test never picks up a run that an earlier session (or older code) left behind.
    if not os.environ.get("LLMLAB_RUNS"):
        os.environ["LLMLAB_RUNS"] = tempfile.mkdtemp(prefix="llmlab-test-runs-")


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """The built website's folder, both editions: ``LLMLAB_SITE`` when set (a site built already, as ``make
    browser-test`` passes), else a build made here once for the whole session, which must finish with zero warnings."""
    if os.environ.get("LLMLAB_SITE"):
        html = Path(os.environ["LLMLAB_SITE"]).resolve()
        assert (html / "index.html").is_file() and (html / "_static" / course_site.MATHJAX_PATH).is_file(), \
            f"LLMLAB_SITE={html} is not a complete build: run `make book` first"
        return html
    output = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(output), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"jupyter-book build failed:\n{log[-6000:]}"
    assert "WARNING:" not in log, f"the build printed warnings:\n{log[-6000:]}"
    # The Chinese edition, as `make book` builds it: from the English build's executed chapters, into zh_CN/.
    from llmlab.course import translation

    _, log = translation.build_chinese_edition(output)
    assert "WARNING:" not in log, f"the Chinese edition's build printed warnings:\n{log[-6000:]}"
    return output / "_build" / "html"
