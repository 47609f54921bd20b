"""The book builds with zero warnings and shows what the labs computed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(output), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"jupyter-book build failed:\n{log[-6000:]}"
    assert "WARNING:" not in log, f"the build printed warnings:\n{log[-6000:]}"
    return output / "_build" / "html"


def test_every_page_is_built(built_book):
    for page in ("book/intro.html", "book/02_attention.html", "solutions/02_attention.html", "book/instructors.html", "book/references.html"):
        assert (built_book / page).is_file(), page
    assert (built_book / "index.html").is_file()


def test_lab_page_shows_outputs_and_a_colab_button(built_book):
    page = (built_book / "solutions" / "02_attention.html").read_text()
    assert page.count("<img") >= 5, "the lab page should show the committed plots"
    assert "[PASS]" in page
    assert "colab.research.google.com/github/" in page


def test_chapter_shows_computed_numbers_and_exercises(built_book):
    page = (built_book / "book" / "02_attention.html").read_text()
    assert "{glue" not in page and "exercise" in page and "solution" in page
    assert 'id="equation-eq-attention"' in page


def test_instructors_page_lists_exercises(built_book):
    page = (built_book / "book" / "instructors.html").read_text()
    assert "02.1" in page and "stretch" in page and "02_attention.ipynb" in page
