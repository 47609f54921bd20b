"""The book builds with zero warnings and shows what the labs computed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_page_is_built(built_book):
    for page in ("book/intro.html", "book/02_attention.html", "solutions/02_attention.html", "book/instructors.html", "book/references.html"):
        assert (built_book / page).is_file(), page
    assert (built_book / "index.html").is_file()


def test_lab_page_shows_outputs_and_a_colab_button(built_book):
    page = (built_book / "solutions" / "02_attention.html").read_text()
    assert page.count("<img") >= 5, "the lab page should show the committed plots"
    assert "[PASS]" in page
    assert "colab.research.google.com/github/" in page


def test_chapter_shows_the_numbers_its_code_computes(built_book):
    """The prose of Chapter 2 shows what llmlab computes, not a number typed in by hand."""
    from llmlab import attention

    page = (built_book / "book" / "02_attention.html").read_text()
    assert "{glue" not in page and 'id="equation-eq-attention"' in page
    with_bias, without = attention.mha_parameter_count(768), attention.mha_parameter_count(768, bias=False)
    text = " ".join(re.sub(r"<[^>]+>", "", page).split())  # the words a reader sees: glued numbers sit in <span>s
    assert f"that is {with_bias:,d} parameters whatever the number of heads ({without:,d} without biases)" in text


def test_instructors_page_lists_exercises(built_book):
    page = (built_book / "book" / "instructors.html").read_text()
    assert "02.1" in page and "stretch" in page and "02_attention.ipynb" in page
