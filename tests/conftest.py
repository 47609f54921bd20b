"""Fixtures shared by the test files, and how the suite spreads over the machine's cores.

``make test`` runs pytest with pytest-xdist, one worker per core (``-n auto`` in pyproject.toml).
Tests are grouped by file, so that a module's fixtures run once and a notebook's cells (nbval)
stay together in one kernel. The site is built once for the whole run, whichever worker gets
there first (the others wait for it and reuse it). The longest groups are sent out first, and
the files that read the site last, so that no core idles at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from llmlab.course import site as course_site

ROOT = Path(__file__).resolve().parent.parent

# The order the groups are handed out in: the longest first (`make test` prints the slowest tests), so that no core
# idles at the end; test_book.py's first test builds the site. The other files that read the site go last, when the
# build is done or nearly: they then run side by side in several workers, reusing the one build.
FIRST = ("test_book.py", "test_grading.py", "test_gpu_paths.py", "test_grading_labs.py")
LAST = ("test_site.py", "test_translation.py", "test_browser.py")


def pytest_configure(config):
    # The labs resume long runs from their checkpoints. The smoke runs of the tests write theirs to a
    # fresh folder, so a test never picks up a run that an earlier session (or older code) left behind;
    # each xdist worker has a folder of its own, so two notebooks running side by side never share one.
    base = os.environ.get("LLMLAB_RUNS") or tempfile.mkdtemp(prefix="llmlab-test-runs-")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        base = os.path.join(base, worker)
        os.makedirs(base, exist_ok=True)
        # Each worker (and the kernels and builds it starts) gets its share of the cores: two workers with two
        # threads each on two cores run slower than with one each.
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.environ["LLMLAB_RUNS"] = base


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, and one more. Much of the suite waits on other processes (notebook kernels,
    the book's build, the graded submissions), and the extra worker runs tests in those waits."""
    return (os.cpu_count() or 1) + 1


def group_of(nodeid: str) -> str:
    """The group a test runs in: its file (a notebook's cells share one kernel; a module's fixtures run once)."""
    return nodeid.split("::", 1)[0]


def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling by scope, with the scopes of :func:`group_of`. (Its own ``--dist loadgroup`` marks tests by
    rewriting their node ids, which pytest 9 no longer allows, so the groups are made here from the ids instead.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = group_of(item.nodeid).rsplit("/", 1)[-1]
        if name in FIRST:
            return FIRST.index(name)
        return len(FIRST) + 1 + LAST.index(name) if name in LAST else len(FIRST)

    items.sort(key=rank)  # stable: within a rank the order stays as collected


def _build_book(output: Path) -> Path:
    """Both editions built into ``output`` with zero warnings; returns the site's folder."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    # The chapters' code first, two pages at a time, into the cache the build reads: most of a build is that code.
    from llmlab.course.translation import english_cache

    course_site.execute_chapters(english_cache(output), workers=2)
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(output), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"jupyter-book build failed:\n{log[-6000:]}"
    assert "WARNING:" not in log, f"the build printed warnings:\n{log[-6000:]}"
    assert "Executed notebook" not in log, "the build executed a page that execute_chapters had run already: its key in " \
        f"the cache differs from myst-nb's (llmlab/course/site.py, _page_as_notebook):\n{log[-3000:]}"
    # The Chinese edition, as `make book` builds it: from the English build's executed chapters, into zh_CN/.
    from llmlab.course import translation

    _, log = translation.build_chinese_edition(output)
    assert "WARNING:" not in log, f"the Chinese edition's build printed warnings:\n{log[-6000:]}"
    return output / "_build" / "html"


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """The built website's folder, both editions: ``LLMLAB_SITE`` when set (a site built already, as ``make
    browser-test`` passes), else one build for the whole run, which must finish with zero warnings.

    The files that read the site may run in several xdist workers: a lock in the run's shared temporary folder lets
    the first build and the others wait for it and reuse it."""
    if os.environ.get("LLMLAB_SITE"):
        html = Path(os.environ["LLMLAB_SITE"]).resolve()
        assert (html / "index.html").is_file() and (html / "_static" / course_site.MATHJAX_PATH).is_file(), \
            f"LLMLAB_SITE={html} is not a complete build: run `make book` first"
        return html
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder all workers of this run share
    output, done = shared / "book", shared / "book.built"
    with FileLock(str(shared / "book.lock")):
        if not done.is_file():
            html = _build_book(output)
            done.write_text(str(html))
    return Path(done.read_text())
