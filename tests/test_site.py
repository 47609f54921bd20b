"""The built website works with the network cut, and its published address is the one README and intro give.

The site under test is the session's one build (the ``built_book`` fixture of tests/conftest.py),
or the folder ``LLMLAB_SITE`` names (``make browser-test`` tests ``_build/html`` that way).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from llmlab.course import site as course_site

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(built_book) -> Path:
    return built_book


# ---------------------------------------------------------------- readable offline


def test_no_page_loads_a_script_stylesheet_font_or_image_from_another_site(site):
    """Links to papers, GitHub and Colab are fine; anything a page *loads* must come from the site."""
    pages = course_site.html_pages(site)
    assert len(pages) >= 10, f"only {len(pages)} pages in {site}"
    external = course_site.external_resources(site)
    assert not external, "pages that would not work offline:\n" + "\n".join(external[:40])


@pytest.mark.parametrize("edition", ["en", "zh_CN"])
def test_mathjax_3_is_served_from_the_site(site, edition):
    root = site if edition == "en" else site / edition
    mathjax = root / "_static" / course_site.MATHJAX_DIR
    assert (mathjax / "LICENSE").is_file() and "Apache License" in (mathjax / "LICENSE").read_text()
    assert "MathJax 3." in (mathjax / "SOURCE.txt").read_text()
    assert (mathjax / "output" / "chtml" / "fonts" / "woff-v2").is_dir(), "MathJax's fonts are missing"
    pages_with_math = [page for page in course_site.html_pages(root)
                       if 'class="math notranslate' in page.read_text() and (edition != "en" or "zh_CN" not in page.relative_to(root).parts)]
    assert len(pages_with_math) >= 3, "the chapters have formulas: expected MathJax on several pages"
    for page in pages_with_math:
        scripts = re.findall(r'<script[^>]*src="([^"]*tex-mml-chtml\.js(?:\?[^"]*)?)"', page.read_text())
        assert scripts, f"{page.relative_to(site)} has formulas but loads no MathJax"
        for src in scripts:
            resolved = course_site.resolve(site, page, src)
            assert resolved and resolved[0].resolve() == (mathjax / course_site.MATHJAX_ENTRY).resolve(), f"{page.name}: {src}"


def test_internal_links_resolve(site):
    broken = course_site.broken_links(site)
    assert not broken, "links to missing pages or anchors:\n" + "\n".join(broken[:40])


def test_lab_pages_show_a_local_badge_that_opens_the_student_lab(site):
    from llmlab.course.notebooks import repository

    url, branch = repository()
    labs = sorted((site / "solutions").glob("*.html")) + sorted((site / "zh_CN" / "solutions").glob("*.html"))
    assert len(labs) == 2 * len(list((ROOT / "solutions").glob("*.ipynb"))), "a lab page was not built in both editions"
    for page in labs:
        html = page.read_text()
        expected = f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}/blob/{branch}/labs/{page.stem}.ipynb"
        colab_links = re.findall(r'href="(https://colab\.research\.google\.com/[^"]*)"', html)
        assert expected in colab_links, f"{page.name}: no Colab link to {expected}"
        assert set(colab_links) == {expected}, f"{page.name}: a Colab link opens something else: {colab_links}"
        assert f'src="../_static/{course_site.BADGE_FILE}"' in html, f"{page.name}: the badge image is not the site's own"
        assert (ROOT / "labs" / f"{page.stem}.ipynb").is_file()


def test_chapter_pages_offer_no_colab_button(site):
    chapters = sorted((site / "book").glob("*.html")) + sorted((site / "zh_CN" / "book").glob("*.html"))
    assert chapters
    for page in chapters:
        assert "colab.research.google.com" not in page.read_text(), f"{page.name}: Colab cannot open a Markdown chapter"


# ---------------------------------------------------------------- where the site is published


def test_site_address_follows_the_repository_url(tmp_path):
    def address(url: str) -> str:
        config = tmp_path / "_config.yml"
        config.write_text(yaml.safe_dump({"repository": {"url": url, "branch": "main"}}))
        return course_site.site_address(config)

    assert address("https://github.com/Some-Org/course") == "https://some-org.github.io/course/"
    assert address("https://github.com/jane/jane.github.io") == "https://jane.github.io/"


@pytest.mark.parametrize("document", ["README.md", "book/intro.md"])
def test_readme_and_intro_give_the_address_config_gives(document):
    """A fork that changes repository.url in _config.yml is told to update the address here."""
    address = course_site.site_address()
    text = (ROOT / document).read_text(encoding="utf-8")
    assert address in text, (
        f"{document} should give the course website's address {address} (derived from repository.url in "
        "_config.yml: https://github.com/OWNER/NAME is published at https://owner.github.io/NAME/); update it"
    )
    others = {found for found in re.findall(r"https://(?!OWNER\.)[\w.-]+\.github\.io/[\w./-]*", text) if found.rstrip("/") + "/" != address}
    assert not others, f"{document} still gives another site address: {sorted(others)}; the site is at {address}"


# ---------------------------------------------------------------- continuous integration


def _workflow(name: str) -> dict:
    path = ROOT / ".github" / "workflows" / name
    assert path.is_file(), f"missing {path.relative_to(ROOT)}"
    return yaml.safe_load(path.read_text())


def test_pull_requests_run_make_test():
    workflow = _workflow("test.yml")
    assert "pull_request" in workflow[True]  # YAML reads the key `on` as True
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    assert any("make test" in step.get("run", "") for step in steps)
    assert any(step.get("uses", "").startswith("actions/setup-python@") and str(step["with"]["python-version"]) == "3.11" for step in steps)


def test_main_is_built_and_deployed_to_github_pages():
    workflow = _workflow("pages.yml")
    assert workflow[True]["push"]["branches"] == ["main"]
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    for action in ("actions/checkout", "actions/setup-python", "actions/upload-pages-artifact", "actions/deploy-pages"):
        assert action in uses, f"pages.yml does not use {action}"
    assert any("make book" in step.get("run", "") for step in steps)
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"


# ---------------------------------------------------------------- the student edition


@pytest.fixture(scope="module")
def student_site(tmp_path_factory, site) -> Path:
    """The student edition, built as `make student-book` builds it, except that the chapters' outputs come from
    the full edition's build instead of running a second time (same code, same outputs)."""
    import subprocess
    import sys

    from llmlab.course.translation import english_cache

    folder = tmp_path_factory.mktemp("student")
    config, toc = course_site.write_student_edition_config(folder / "config", cache=english_cache(site.parent.parent))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run([str(jupyter_book), "build", str(ROOT), "--config", str(config), "--toc", str(toc),
                             "--path-output", str(folder), "-W", "-n", "--keep-going"], capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "WARNING:" not in log, log[-6000:]
    return folder / "_build" / "html"


def test_student_edition_has_no_solutions(student_site, site):
    assert "Solution to" in (site / "book" / "02_attention.html").read_text(), "the full edition shows the solutions"
    assert not (student_site / "solutions").exists() and not (student_site / "book" / "instructors.html").exists()
    labs = sorted((student_site / "labs").glob("*.html"))
    assert [page.stem for page in labs] == [path.stem for path in sorted((ROOT / "solutions").glob("*.ipynb"))]
    for page in labs:
        html = page.read_text()
        assert "NotImplementedError" in html and "BEGIN SOLUTION" not in html, page.name
    for chapter in sorted((student_site / "book").glob("0*.html")):
        html = chapter.read_text()
        assert "Solution to" not in html, f"{chapter.name} shows an end-of-chapter solution"
        assert not re.search(r'href="[^"]*solutions/', html), f"{chapter.name} links to a solution page"
    assert not course_site.broken_links(student_site)


# ---------------------------------------------------------------- the Chinese edition's build, kept quick


def test_quick_chinese_search_index_splits_and_stems_as_sphinx_does():
    """The set that replaces Sphinx's list of Latin words changes the speed of the index, not its words."""
    from sphinx.search.zh import SearchChinese

    text = "注意力 attention 的 softmax 把 logits 变成概率；KV cache 与 LoRA、GPT-2、MLP 和 ReLU 都是词。"
    sphinx_index, quick_index = SearchChinese({}), course_site._quick_chinese_search()({})
    sphinx_index.latin_terms = []  # Sphinx's list is shared by the class: start both empty
    for index in (sphinx_index, quick_index):
        index.words = index.split(text)
    assert sphinx_index.words == quick_index.words and "softmax" in quick_index.words
    assert [sphinx_index.stem(word) for word in sphinx_index.words] == [quick_index.stem(word) for word in quick_index.words]
    assert "mlp" in {quick_index.stem(word) for word in quick_index.words}  # short: kept whole rather than stemmed


def test_chinese_doctrees_are_as_small_as_the_english_ones(site):
    """Translated nodes are adopted by their page (site._adopt_translated_nodes): without that each Chinese doctree
    pickled the small documents Sphinx parsed every message in, 2.5 MB a page against 0.13 MB in English."""
    english = site.parent / ".doctrees"
    chinese = site.parent / "zh_CN-build" / "_build" / ".doctrees"
    pages = sorted(english.glob("book/*.doctree"))
    assert pages and (chinese / "book").is_dir(), f"no doctrees under {english} and {chinese}"
    for page in pages:
        ratio = (chinese / page.relative_to(english)).stat().st_size / page.stat().st_size
        assert ratio < 2, f"{page.name}: the Chinese doctree is {ratio:.1f} times the English one"
