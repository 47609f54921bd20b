"""The course website: a site that works with the network cut, and where it is published.

This module is a Sphinx extension (listed in ``_config.yml``) and a small command line.

As an extension it makes every built page self-contained:

- MathJax 3 is served from the site itself. Its browser build comes from the PyPI package
  ``django-static-mathjax`` (MathJax's own ``es5`` files, Apache-2.0; pinned in
  requirements.txt). After a successful build the files the TeX-to-HTML combination needs are
  copied to ``_static/mathjax/`` with MathJax's licence, and ``_config.yml`` points Sphinx's
  ``mathjax_path`` there; a different ``mathjax_path`` is reported as a build warning, which
  ``-W`` turns into an error.
- The "Open in Colab" badge of each lab page is drawn by a local SVG in ``_static/`` instead of
  the image on colab.research.google.com (the notebooks themselves keep the usual badge).
- Each script and stylesheet is included once: sphinx-thebe's inline settings script, included
  twice, would otherwise stop with a SyntaxError on every page.
- On a lab page (``solutions/NN_name``) the theme's "launch on Colab" button opens the student
  lab ``labs/NN_name.ipynb``, as the badge does, never the solution; chapter pages (MyST
  Markdown, which Colab cannot open) offer no Colab button.

As a command line::

    python -m llmlab.course.site address          # the GitHub Pages address derived from _config.yml
    python -m llmlab.course.site check _build/html
                                                  # list external resources and broken internal links
    python -m llmlab.course.site student-edition _build/student-config
                                                  # the student edition's _config.yml and _toc.yml
    python -m llmlab.course.site execute-chapters .
                                                  # run the chapters' code, two at a time, into the
                                                  # execution cache that the next build reads
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from llmlab.course.notebooks import COLAB_BADGE_IMAGE, ROOT, site_address

MATHJAX_DIR = "mathjax"  # the folder under the site's _static/
MATHJAX_ENTRY = "tex-mml-chtml.js"  # the same combined component the Sphinx default loads from a CDN
MATHJAX_PATH = f"{MATHJAX_DIR}/{MATHJAX_ENTRY}"  # what mathjax_path must say (relative to _static/)
# The parts of MathJax's es5 build that tex-mml-chtml.js loads on demand: TeX extensions, the
# CHTML fonts, the menu, the accessibility explorer and its speech rules.
MATHJAX_PARTS = ("a11y", "adaptors", "input", "output", "sre", "ui")
MATHJAX_PACKAGE = "django-static-mathjax"
BADGE_FILE = "colab-badge.svg"

# Our own drawing of an "Open in Colab" badge (same size as the usual one), so that lab pages
# load no image from another site.
BADGE_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20" role="img" aria-label="Open in Colab">
<title>Open in Colab</title>
<rect width="117" height="20" rx="3" fill="#444"/>
<circle cx="7.5" cy="10" r="4" fill="none" stroke="#f9ab00" stroke-width="2.2"/>
<circle cx="14.5" cy="10" r="4" fill="none" stroke="#e8710a" stroke-width="2.2"/>
<text x="24" y="14" font-family="Verdana,DejaVu Sans,Geneva,sans-serif" font-size="11" fill="#fff">Open in Colab</text>
</svg>
"""


# ---------------------------------------------------------------- MathJax from a PyPI package


def mathjax_source() -> Path:
    """The folder of MathJax's browser build (``es5``) installed by django-static-mathjax."""
    try:
        import mathjax  # the import name of django-static-mathjax
    except ImportError as error:  # pragma: no cover - only without the pinned requirements
        raise RuntimeError(f"{MATHJAX_PACKAGE} is not installed; run `make book` (it installs requirements.txt)") from error
    es5 = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (es5 / MATHJAX_ENTRY).is_file():
        raise RuntimeError(f"{es5 / MATHJAX_ENTRY} is missing: is {MATHJAX_PACKAGE} installed whole?")
    return es5


def mathjax_version() -> str:
    return json.loads((mathjax_source().parent / "package.json").read_text(encoding="utf-8"))["version"]


def copy_mathjax(static: Path) -> Path:
    """Copy MathJax into ``static/mathjax`` with its licence and a note of where it came from."""
    source, target = mathjax_source(), static / MATHJAX_DIR
    version = mathjax_version()
    if not version.startswith("3."):
        raise RuntimeError(f"{MATHJAX_PACKAGE} ships MathJax {version}; the site is configured for MathJax 3")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / MATHJAX_ENTRY, target / MATHJAX_ENTRY)
    for part in MATHJAX_PARTS:
        shutil.copytree(source / part, target / part, dirs_exist_ok=True)
    shutil.copy2(source.parent / "LICENSE", target / "LICENSE")
    (target / "SOURCE.txt").write_text(
        f"MathJax {version} (https://www.mathjax.org/), Apache License 2.0 (see LICENSE).\n"
        f"Copied from the es5 folder of the PyPI package {MATHJAX_PACKAGE} by llmlab/course/site.py.\n",
        encoding="utf-8",
    )
    return target


# ---------------------------------------------------------------- the Sphinx extension


def _check_mathjax_path(app, config) -> None:
    from sphinx.util import logging

    if config.mathjax_path != MATHJAX_PATH:
        logging.getLogger(__name__).warning(
            f"mathjax_path is {config.mathjax_path!r}: set sphinx.config.mathjax_path to {MATHJAX_PATH!r} in "
            "_config.yml so that pages load the MathJax copied into _static/ and not one from another site"
        )


def _unique(assets: list) -> list:
    """The assets in order, each once; an inline script is added with filename None or "" alike."""
    seen, unique = set(), []
    for asset in assets:
        attributes = getattr(asset, "attributes", {}) or {}
        key = (getattr(asset, "filename", asset) or "", getattr(asset, "priority", None), tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(asset)
    return unique


def _localize_page(app, pagename, templatename, context, doctree) -> None:
    # sphinx-thebe adds its inline `const THEBE_JS_URL = ...` script twice under Jupyter Book,
    # and the second copy stops with a SyntaxError in the browser: keep one of each asset.
    for key in ("script_files", "css_files"):
        if isinstance(context.get(key), list):
            context[key] = _unique(context[key])
    body = context.get("body")
    if body and f'src="{COLAB_BADGE_IMAGE}"' in body:
        local = context["pathto"](f"_static/{BADGE_FILE}", 1)
        context["body"] = body.replace(f'src="{COLAB_BADGE_IMAGE}"', f'src="{local}"')
    _language_switch(app, pagename, context)
    if (app.config.language or "").startswith("zh") and context.get("body"):
        context["body"] = _chinese_code_prompts(context["body"])
    if pagename.startswith("book/"):
        # A chapter is a MyST Markdown file, which Colab cannot open: no Colab button there.
        for group in context.get("header_buttons") or []:
            if isinstance(group.get("buttons"), list):
                group["buttons"] = [button for button in group["buttons"]
                                    if not (button.get("url") or "").startswith("https://colab.research.google.com/")]
    if pagename.startswith("solutions/"):
        name = pagename.removeprefix("solutions/")
        for group in context.get("header_buttons") or []:
            for button in group.get("buttons") or []:
                url = button.get("url") or ""
                if url.startswith("https://colab.research.google.com/") and url.endswith(f"/solutions/{name}.ipynb"):
                    button["url"] = url.removesuffix(f"solutions/{name}.ipynb") + f"labs/{name}.ipynb"


# The link at the top of every page to the same page in the other edition (see llmlab/course/translation.py).
# The Chinese edition sits in the folder zh_CN/ of the English site, so both links are relative and work offline.
LANGUAGE_SWITCH_CLASS = "llmlab-language-switch"
OTHER_EDITION = {
    "zh_CN": ("zh_CN/", "zh-CN", "中文版"),  # on an English page: where the Chinese page is, its language, the link
    "en": ("../", "en", "English edition"),
}


def _language_switch(app, pagename, context) -> None:
    other = app.config.llmlab_other_edition
    if not other or not context.get("body"):
        return
    if other not in OTHER_EDITION:
        raise ValueError(f"llmlab_other_edition is {other!r}; expected one of {sorted(OTHER_EDITION)} or empty")
    folder, language, label = OTHER_EDITION[other]
    href = "../" * pagename.count("/") + folder + pagename + ".html"
    context["body"] = (f'<p class="{LANGUAGE_SWITCH_CLASS}" style="text-align:right;margin:0">'
                       f'<a href="{href}" hreflang="{language}" lang="{language}">{label}</a></p>\n' + context["body"])
    context["metatags"] = context.get("metatags", "") + f'\n<link rel="alternate" hreflang="{language}" href="{href}" />'


# myst-nb words the toggles of folded code cells itself, in English, outside any catalogue: the Chinese
# edition gets them in Chinese here.
_CODE_PROMPT = re.compile(r'(<p class="(?:collapsed|expanded) admonition-title">)(Show|Hide) code cell (source|content|outputs?)(</p>)')
_CODE_PROMPT_ZH = {"Show": "显示", "Hide": "隐藏", "source": "代码", "content": "代码单元", "output": "输出", "outputs": "输出"}


def _chinese_code_prompts(body: str) -> str:
    body = _CODE_PROMPT.sub(lambda m: m.group(1) + _CODE_PROMPT_ZH[m.group(2)] + _CODE_PROMPT_ZH[m.group(3)] + m.group(4), body)
    return body.replace('aria-label="Toggle hidden content"', 'aria-label="展开或收起隐藏的内容"')


def _copy_assets(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    copy_mathjax(static)
    (static / BADGE_FILE).write_text(BADGE_SVG, encoding="utf-8")


def _student_edition_source(app, docname, source) -> None:
    # In the student edition the lab pages are the student labs and the instructors' page is absent.
    if app.config.llmlab_edition != "student":
        return
    text = source[0].replace("../solutions/", "../labs/")
    source[0] = text.replace("Teaching with this course? See {doc}`instructors`.",
                             "Teaching with this course? The full edition of this book has a page for instructors.")


def _quick_chinese_search():
    """Sphinx's Chinese search index (sphinx.search.zh) keeps every Latin word it has seen in a list and looks each
    new word up in it: quadratic, 19 s of the Chinese edition's 50-s build. The same index, with a set."""
    from sphinx.search.zh import SearchChinese

    class QuickSearchChinese(SearchChinese):
        def init(self, options: dict[str, str]) -> None:
            super().init(options)
            self.latin_terms = _ListLikeSet()

    return QuickSearchChinese


class _ListLikeSet(set):
    """A set that SearchChinese can ``extend`` as it extends its list; ``in`` is then a hash lookup."""

    def extend(self, items) -> None:
        self.update(items)


def _adopt_translated_nodes(app, doctree) -> None:
    """Sphinx's i18n parses each translated message as a small document of its own and moves its nodes into the page,
    but each node keeps a reference to that small document, which is pickled with it: the Chinese doctrees grew to
    2.5 MB a page (0.13 MB in English) and reading them back was a fifth of the Chinese build. The page adopts them."""
    for node in doctree.findall():
        if getattr(node, "_document", doctree) is not doctree:
            node._document = doctree


def setup(app):
    from llmlab.course.translation import exercise_title_transforms, let_translations_paste_glue

    app.add_search_language(_quick_chinese_search())

    let_translations_paste_glue()  # the Chinese edition's paragraphs show the numbers their chapter computed
    give_titles_a_source, show_titles_to_gettext = exercise_title_transforms()  # and its exercises have Chinese titles
    app.add_transform(give_titles_a_source)
    app.add_post_transform(show_titles_to_gettext)
    app.add_config_value("llmlab_edition", "full", "env")  # "student": see write_student_edition_config
    # The other language's edition, linked from the top of every page: "zh_CN" from the English, "en" from the Chinese.
    app.add_config_value("llmlab_other_edition", "", "html")
    app.connect("source-read", _student_edition_source)
    app.connect("doctree-read", _adopt_translated_nodes)
    app.connect("config-inited", _check_mathjax_path)
    # after sphinx-book-theme (priority 501) has added its launch buttons
    app.connect("html-page-context", _localize_page, priority=900)
    app.connect("build-finished", _copy_assets)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


# ---------------------------------------------------------------- checking a built site

# <link rel=...> values that name another page rather than something the page loads
NAVIGATION_RELS = {"alternate", "author", "canonical", "help", "index", "license", "next", "prev", "previous", "search", "up", "top", "me", "bookmark"}
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])\s*((?:https?:)?//[^'")\s]+)""", re.IGNORECASE)


def _is_external(url: str) -> bool:
    return bool(re.match(r"(?:https?:)?//", url.strip(), re.IGNORECASE))


class _Page(HTMLParser):
    """The resources a page loads, the links it makes, and the ids it defines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str]] = []  # (what, url)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = {key: value or "" for key, value in attrs}
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        rels = set(a.get("rel", "").lower().split())
        if tag == "script" and a.get("src"):
            self.loads.append(("script", a["src"]))
        elif tag == "link" and a.get("href"):
            if rels and rels <= NAVIGATION_RELS:
                self.links.append(a["href"])
            else:
                self.loads.append((f"link rel={a.get('rel', '')}", a["href"]))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        for key in ("src", "poster", "data"):
            if key in a and tag in {"img", "iframe", "embed", "video", "audio", "source", "track", "input", "object"}:
                self.loads.append((f"{tag} {key}", a[key]))
        if a.get("srcset"):
            self.loads.extend((f"{tag} srcset", part.split()[0]) for part in a["srcset"].split(",") if part.strip())
        if a.get("style"):
            self.loads.extend(("style attribute", url) for url in CSS_URL.findall(a["style"]))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.loads.extend(("style element", url) for url in CSS_URL.findall(data))


def html_pages(site: Path) -> list[Path]:
    """Every page of the built site, its Chinese edition in zh_CN/ included (not the theme's own template
    fragments in _static/)."""
    return sorted(path for path in site.rglob("*.html")
                  if not {"_static", "_sources", "_images"} & set(path.relative_to(site).parts))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def external_resources(site: Path) -> list[str]:
    """Every script, stylesheet, font, image or frame a built page or stylesheet fetches from another site."""
    found = []
    for path in html_pages(site):
        for what, url in _parse(path).loads:
            if _is_external(url):
                found.append(f"{path.relative_to(site)}: {what} {url}")
    for path in sorted(site.rglob("*.css")):
        for url in CSS_URL.findall(path.read_text(encoding="utf-8", errors="replace")):
            found.append(f"{path.relative_to(site)}: {url}")
    return found


def resolve(site: Path, page: Path, href: str) -> tuple[Path, str] | None:
    """The file (and fragment) that a relative href on ``page`` points to; None if it leaves the site."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith(("#", "javascript:")):
        return None
    if not parts.path:
        return None
    relative = posixpath.normpath(posixpath.join(page.relative_to(site).parent.as_posix(), unquote(parts.path)))
    target = site / relative
    if href.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def broken_links(site: Path) -> list[str]:
    """Relative links and resources of every page that point to a missing file or a missing #anchor."""
    parsed = {path: _parse(path) for path in html_pages(site)}
    broken = []
    for path, page in parsed.items():
        for href in page.links + [url for _, url in page.loads]:
            resolved = resolve(site, path, href)
            if resolved is None:
                continue
            target, fragment = resolved
            if not target.is_file() or site.resolve() not in target.resolve().parents:
                broken.append(f"{path.relative_to(site)}: {href} (no such file)")
            elif fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if fragment not in ids:
                    broken.append(f"{path.relative_to(site)}: {href} (no #{fragment} there)")
    return broken


# ---------------------------------------------------------------- the student edition


def write_student_edition_config(folder: Path, cache: Path | None = None) -> tuple[Path, Path]:
    """Write the ``_config.yml`` and ``_toc.yml`` of the edition an instructor gives students into ``folder``.

    Derived from the full edition's files, so the two never drift apart: lab pages come from
    ``labs/`` (no solutions, no outputs) instead of ``solutions/``, the end-of-chapter solutions are
    hidden (sphinx-exercise's ``hide_solutions``) and the instructors' page is left out. ``cache``: a
    full edition's jupyter-cache, whose executed chapters the student edition then reuses (a chapter whose
    code differs still runs).
    """
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))

    def student_entry(entry: dict) -> dict:
        entry = dict(entry)
        if entry.get("file", "").startswith("solutions/"):
            entry["file"] = "labs/" + entry["file"].removeprefix("solutions/")
        if "sections" in entry:
            entry["sections"] = [student_entry(section) for section in entry["sections"]]
        return entry

    parts = []
    for part in toc["parts"]:
        chapters = [student_entry(chapter) for chapter in part["chapters"] if chapter.get("file") != "book/instructors"]
        if chapters:
            parts.append({**part, "chapters": chapters})
    toc["parts"] = parts

    config["title"] = f"{config['title']} (student edition)"
    if cache is not None:
        config["execute"]["cache"] = str(Path(cache).resolve())
    sphinx_config = config["sphinx"]["config"]
    sphinx_config["hide_solutions"] = True
    sphinx_config["llmlab_edition"] = "student"
    sphinx_config["llmlab_other_edition"] = ""  # the Chinese edition translates the full edition only
    sphinx_config["exclude_patterns"] = [pattern for pattern in sphinx_config["exclude_patterns"] if pattern != "labs"] \
        + ["solutions", "book/instructors.md"]
    # The paths in the full edition's config are relative to the repository root; jupyter-book reads them from there.
    config["bibtex_bibfiles"] = [str(ROOT / name) for name in config["bibtex_bibfiles"]]

    folder.mkdir(parents=True, exist_ok=True)
    config_path, toc_path = folder / "_config.yml", folder / "_toc.yml"
    header = "# Generated by `python -m llmlab.course.site student-edition`; edit the repository's own file instead.\n"
    config_path.write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    toc_path.write_text(header + yaml.safe_dump(toc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return config_path, toc_path


# ---------------------------------------------------------------- the chapters' code, run side by side

def chapter_pages() -> list[Path]:
    """The pages whose code runs at every build: the MyST Markdown pages of ``_toc.yml`` with notebook top matter
    (the labs under solutions/ are not executed by the build: they show their committed outputs)."""
    import yaml
    from myst_nb.core.read import is_myst_markdown_notebook

    def files(entries) -> list[str]:
        found = []
        for entry in entries or []:
            found += [entry["file"]] if "file" in entry else []
            found += files(entry.get("sections")) + files(entry.get("chapters"))
        return found

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    listed = [toc["root"]] + [name for part in toc.get("parts", []) for name in files(part.get("chapters"))]
    paths = [ROOT / f"{name}.md" for name in listed]
    return [path for path in paths if path.is_file() and is_myst_markdown_notebook(path.read_text(encoding="utf-8"))]


def _page_as_notebook(path: Path):
    """A page as myst-nb reads it for execution: its cells and metadata, hence its key in the execution cache."""
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"), config=MdParserConfig(), add_source_map=True,
                                       path=str(path))


# Run in a kernel before each page after its first: what the page would find in a fresh kernel (an empty namespace, the
# page's folder, execution counts from 1), while the modules the earlier pages imported (torch, transformers, matplotlib:
# most of a kernel's start) stay imported. Each page sets its own seeds and print options at its top; the progress bars
# and warnings that a page switches off are switched on again, so that no page's output depends on the page before it.
_FRESH_PAGE = """\
%reset -f
import os as _os, sys as _sys
_os.chdir({folder!r})
if "transformers" in _sys.modules:
    _sys.modules["transformers"].utils.logging.set_verbosity_warning()
    _sys.modules["transformers"].utils.logging.enable_progress_bar()
if "datasets" in _sys.modules:
    _sys.modules["datasets"].enable_progress_bars()
if "matplotlib.pyplot" in _sys.modules:
    _sys.modules["matplotlib.pyplot"].close("all")
del _os, _sys
get_ipython().execution_count = 1
"""


_page_queue = None  # in each process of execute_chapters' pool: the pages still to run, shared by the processes


def _receive_page_queue(queue) -> None:
    global _page_queue
    _page_queue = queue


def _execute_queued_pages(timeout: int) -> list[tuple[Path, object, float]]:
    """Take pages from the pool's queue until its next item is None and run them one after the other in one kernel (see
    ``_FRESH_PAGE``); returns (path, executed notebook, seconds) for each."""
    import time

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    kernel, done = None, []
    try:
        while (path := _page_queue.get()) is not None:
            notebook = _page_as_notebook(path)
            started = time.perf_counter()
            if kernel is None:
                kernel = AsyncKernelManager(kernel_name=notebook.metadata.get("kernelspec", {}).get("name", "python3"))
            else:
                reset = kernel.client()
                reset.start_channels()
                try:
                    reply = run_sync(reset.execute_interactive)(_FRESH_PAGE.format(folder=str(path.parent)), silent=True,
                                                                store_history=False, timeout=60)
                finally:
                    reset.stop_channels()
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(f"the kernel could not be reset for {path.relative_to(ROOT)}: {reply['content']}")
            execution = notebook.metadata.get("execution", {})  # a page's own timeout and allow_errors, as myst-nb reads them
            client = NotebookClient(notebook, km=kernel, timeout=execution.get("timeout", timeout),
                                    allow_errors=execution.get("allow_errors", False), record_timing=False,
                                    resources={"metadata": {"path": str(path.parent)}})
            try:
                client.execute()
            except (CellExecutionError, CellTimeoutError) as error:
                raise RuntimeError(f"{path.relative_to(ROOT)} failed while executing:\n{error}") from None
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()
            done.append((path, notebook, time.perf_counter() - started))
    finally:
        if kernel is not None and kernel.has_kernel:
            run_sync(kernel.shutdown_kernel)(now=False)
    return done


def execute_chapters(cache_folder: Path, workers: int = 2, timeout: int = 300) -> dict[str, float]:
    """Run every chapter's code, ``workers`` kernels side by side, into the jupyter-cache at ``cache_folder``.

    Sphinx executes the pages of a book one after the other, each in a kernel of its own, and most of a
    build's time is that execution (a kernel to start, torch to import, the page's computations). Run
    here first, side by side, the pages are already in the cache when the build reads them, keyed exactly
    as myst-nb keys them (their code cells and kernel), so the build uses them ("Using cached notebook")
    and executes nothing itself. The pages are dealt out to ``workers`` kernels, each running its pages
    one after the other (``_execute_queued_pages``), so that torch and the other modules are imported once per
    kernel rather than once per page. A page already cached with the same code is not run again.
    Returns the seconds each executed page took; a page that fails stops everything with its traceback.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(cache_folder))
    pending = []
    for path in chapter_pages():
        try:
            cache.match_cache_notebook(_page_as_notebook(path))
        except KeyError:
            pending.append(path)
    if not pending:
        return {}
    # The pages with the most code first: the kernels take the next page when they finish one, so they finish together.
    code_cells = {path: sum(cell.cell_type == "code" for cell in _page_as_notebook(path).cells) for path in pending}
    context = multiprocessing.get_context("spawn")  # not fork: the caller may be a test process with torch's threads running
    pages = context.Queue()
    kernels = max(1, min(workers, len(pending)))
    for path in sorted(pending, key=lambda page: -code_cells[page]) + [None] * kernels:  # one None to stop each kernel
        pages.put(path)
    seconds = {}
    with ProcessPoolExecutor(max_workers=kernels, mp_context=context, initializer=_receive_page_queue,
                             initargs=(pages,)) as pool:
        for results in pool.map(_execute_queued_pages, [timeout] * kernels):
            for path, notebook, took in results:
                record = cache.add_nb_to_project(str(path), read_data={"type": "plugin", "name": "myst_nb_md"})
                cache.cache_notebook_bundle(CacheBundleIn(notebook, record.uri, data={"execution_seconds": took}),
                                            check_validity=False, overwrite=True)
                seconds[str(path.relative_to(ROOT))] = took
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.course.site", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("address", help="print the GitHub Pages address derived from _config.yml")
    check = commands.add_parser("check", help="list external resources and broken internal links of a built site")
    check.add_argument("site", type=Path, nargs="?", default=ROOT / "_build" / "html")
    student = commands.add_parser("student-edition", help="write the student edition's _config.yml and _toc.yml into a folder")
    student.add_argument("folder", type=Path)
    execute = commands.add_parser("execute-chapters", help="run the chapters' code side by side into the execution cache of "
                                                           "a build made with --path-output OUTPUT")
    execute.add_argument("output", type=Path, nargs="?", default=ROOT)
    execute.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "address":
        print(site_address())
        return 0
    if args.command == "execute-chapters":
        from llmlab.course.translation import english_cache

        for page, took in execute_chapters(english_cache(args.output), args.workers).items():
            print(f"executed {page} in {took:.1f} s")
        return 0
    if args.command == "student-edition":
        for path in write_student_edition_config(args.folder):
            print(f"wrote {path}")
        return 0
    problems = external_resources(args.site) + broken_links(args.site)
    print("\n".join(problems) or f"{len(html_pages(args.site))} pages: no external resource, no broken link")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
