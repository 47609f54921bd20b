"""The built site in a real browser: headless Chromium, driven by Selenium, with every other host cut off.

Needs Debian's browser and driver (``sudo apt-get install -y chromium chromium-driver``):
/usr/bin/chromium and /usr/bin/chromedriver, or the paths in LLMLAB_CHROMIUM and
LLMLAB_CHROMEDRIVER. Without them the tests are skipped, unless LLMLAB_BROWSER_TEST=required
(``make browser-test`` sets it), which makes them fail instead.

The site (see tests/test_site.py for which build) is served by a local HTTP server on
127.0.0.1; Chromium resolves no other host name, as if the network were cut. Every page is
visited once and what the browser saw is recorded; each test below checks one part of that.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from llmlab.course import site as course_site
from llmlab.course.notebooks import repository

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("LLMLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("LLMLAB_CHROMEDRIVER", "/usr/bin/chromedriver"))
REQUIRED = os.environ.get("LLMLAB_BROWSER_TEST") == "required"
INSTALL = "on Debian: sudo apt-get install -y chromium chromium-driver (or set LLMLAB_CHROMIUM and LLMLAB_CHROMEDRIVER)"


def _missing() -> str | None:
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if absent:
        return f"the browser test needs Chromium and ChromeDriver, and {', '.join(absent)} is missing; {INSTALL}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the browser test needs selenium (pinned in requirements.txt): run `make test` or `make browser-test`"
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=MISSING or "")

# Waits for MathJax (if the page loads it) to finish typesetting; returns null, true or an error text.
WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const start = Date.now();
(function wait() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done(true), (error) => done('MathJax failed: ' + error));
  } else if (!document.querySelector('script[src*="mathjax"]')) {
    done(null);
  } else if (Date.now() - start > 20000) {
    done('MathJax did not start within 20 s');
  } else {
    setTimeout(wait, 50);
  }
})();
"""

# What the page shows once typeset: its formulas, the text a reader sees, its links and badges.
READ_PAGE = """
const maths = [...document.querySelectorAll('.math')];
// Code blocks wider than their box (they scroll sideways), with folded cells unfolded as a reader may.
// Outputs are left out: they are what a committed lab run printed, not code a reader reads.
const folded = [...document.querySelectorAll('main details:not([open])')];
folded.forEach((e) => { e.open = true; });
const wideCode = [...document.querySelectorAll('main pre')]
  .filter((e) => e.offsetParent !== null && !e.closest('.cell_output, .output') && e.scrollWidth > e.clientWidth + 1)
  .map((e) => {
    const longest = e.textContent.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '');
    return {width: e.clientWidth, scrolls: e.scrollWidth, characters: longest.length, line: longest.trim().slice(0, 60)};
  });
folded.forEach((e) => { e.open = false; });
const main = (document.querySelector('main') || document.body).cloneNode(true);
main.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight').forEach((e) => e.remove());
const urls = [];
document.querySelectorAll('a[href], link[href]').forEach((e) => urls.push(e.href));
document.querySelectorAll('script[src], img[src], iframe[src]').forEach((e) => urls.push(e.src));
return {
  maths: maths.length,
  typeset: document.querySelectorAll('mjx-container').length,
  untypeset: maths.filter((e) => !e.querySelector('mjx-container')).map((e) => e.textContent.trim().slice(0, 80)),
  errors: [...document.querySelectorAll('mjx-merror, [data-mjx-error]')].map((e) => e.getAttribute('data-mjx-error') || e.textContent),
  text: main.textContent,
  urls: urls,
  wide_code: wideCode,
  colab: [...document.querySelectorAll('a[href*="colab.research.google.com"]')].map((a) => {
    const img = a.querySelector('img');
    return {href: a.href, badge: img ? {src: img.src, loaded: img.complete && img.naturalWidth > 0} : null};
  }),
};
"""

# TeX left as text: \( \[ $$ \begin{, or $...$ around something that only TeX would write.
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\\begin\{")
DOLLAR_PAIR = re.compile(r"\$([^$\n]{1,300}?)\$")
TEX_INSIDE = re.compile(r"\\[A-Za-z]+|[\^_{}]")


def raw_tex(text: str) -> list[str]:
    found = [text[max(0, m.start() - 30): m.end() + 30] for m in RAW_TEX.finditer(text)]
    found += [m.group(0) for m in DOLLAR_PAIR.finditer(text) if TEX_INSIDE.search(m.group(1))]
    return found


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def server(built_book):
    site = built_book
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if MISSING:
        pytest.fail(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        # the network is cut: no host name resolves except the test's own server
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _outside_requests(driver, origin: str) -> list[str]:
    requested = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if urlsplit(url).scheme in {"http", "https", "ws", "wss"} and not url.startswith(origin):
                requested.append(url)
    return requested


def severe(driver, origin: str) -> list[str]:
    """The console's errors since the last call. The browser's own probe of /favicon.ico is not the
    site's doing (on GitHub Pages that address is not even the course's), so its 404 is left out."""
    favicon = f"{origin}favicon.ico - Failed to load resource"
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE" and not entry["message"].startswith(favicon)]


def visit(driver, url: str, origin: str) -> dict:
    driver.get(url)
    mathjax = driver.execute_async_script(WAIT_FOR_MATHJAX)
    seen = driver.execute_script(READ_PAGE)
    seen["mathjax"] = mathjax
    seen["console"] = severe(driver, origin)
    seen["outside"] = _outside_requests(driver, origin)
    return seen


@pytest.fixture(scope="module")
def visits(browser, server) -> dict[str, dict]:
    """Every page of the site, visited once over HTTP: page path -> what the browser saw."""
    site, origin = server
    pages = [page.relative_to(site).as_posix() for page in course_site.html_pages(site)]
    assert "book/02_attention.html" in pages and any(page.startswith("solutions/") for page in pages)
    browser.get_log("browser")  # start from empty logs
    browser.get_log("performance")
    return {page: visit(browser, origin + page, origin) for page in pages}


def test_every_page_loads_without_console_errors_or_requests_to_other_sites(visits):
    problems = [f"{page}: {line}" for page, seen in visits.items() for line in seen["console"]]
    problems += [f"{page}: requested {url}" for page, seen in visits.items() for url in seen["outside"]]
    assert not problems, "\n".join(problems[:40])


def test_every_formula_is_typeset_by_mathjax(visits):
    with_math = [page for page, seen in visits.items() if seen["maths"]]
    assert "book/02_attention.html" in with_math
    problems = []
    for page, seen in visits.items():
        if seen["maths"]:
            if seen["mathjax"] is not True:
                problems.append(f"{page}: {seen['maths']} formulas but MathJax said {seen['mathjax']!r}")
            if seen["typeset"] < seen["maths"] or seen["untypeset"]:
                problems.append(f"{page}: {len(seen['untypeset'])} of {seen['maths']} formulas not typeset: {seen['untypeset'][:3]}")
        problems += [f"{page}: TeX error {error!r}" for error in seen["errors"]]
        problems += [f"{page}: raw TeX in the text: {found!r}" for found in raw_tex(seen["text"])]
    assert not problems, "\n".join(problems[:40])


def test_no_code_block_scrolls_sideways(visits):
    """At a 1280-px-wide window every code block, folded set-up cells unfolded, fits its box: the course's
    code font (book/_static/code-width.css) holds the 88 characters tests/test_notebooks.py allows a line."""
    code_pages = [page for page in visits if page.startswith(("book/", "solutions/"))]
    assert "book/02_attention.html" in code_pages
    problems = [f"{page}: a {wide['characters']}-character line needs {wide['scrolls']} px of {wide['width']}: {wide['line']}"
                for page, seen in visits.items() for wide in seen["wide_code"]]
    assert not problems, f"{len(problems)} code blocks scroll sideways:\n" + "\n".join(problems[:40])


def test_read_page_finds_code_that_scrolls_sideways(browser, tmp_path):
    """The check above on a page made for it: a wide code block is found, folded or not; outputs are not."""
    wide, narrow = "x = " + "1 + " * 60 + "1", "y = 1"
    page = tmp_path / "wide.html"
    page.write_text(
        "<html><body><main style='width: 400px'>"
        f"<div class='cell_input'><pre>{narrow}\n{wide}</pre></div>"
        f"<details><summary>Show code</summary><pre>{wide}</pre></details>"
        f"<div class='cell_output'><pre>{wide}</pre></div>"
        f"<pre>{narrow}</pre>"
        "</main></body></html>", encoding="utf-8")
    browser.get(page.resolve().as_uri())
    seen = browser.execute_script(READ_PAGE)
    assert [found["characters"] for found in seen["wide_code"]] == [len(wide), len(wide)]
    assert browser.execute_script("return document.querySelector('details').open") is False


def test_lab_pages_have_a_colab_badge_that_opens_the_student_lab(visits):
    url, branch = repository()
    labs = [page for page in visits if page.startswith("solutions/")]
    assert labs
    for page in labs:
        name = Path(page).stem
        expected = f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}/blob/{branch}/labs/{name}.ipynb"
        links = visits[page]["colab"]
        badges = [link for link in links if link["badge"]]
        assert badges, f"{page}: no Colab badge"
        assert all(link["href"] == expected for link in links), f"{page}: expected every Colab link to be {expected}, got {links}"
        assert all(link["badge"]["loaded"] for link in badges), f"{page}: the badge image did not load: {badges}"
        assert (ROOT / "labs" / f"{name}.ipynb").is_file()


def test_internal_links_resolve_to_files_of_the_site(server, visits):
    site, origin = server
    missing = set()
    for page, seen in visits.items():
        for url in seen["urls"]:
            if url.startswith(origin):
                path = unquote(urlsplit(url).path).lstrip("/")
                target = site / path
                if path == "" or path.endswith("/"):
                    target = target / "index.html"
                if not target.is_file():
                    missing.add(f"{page}: {url.removeprefix(origin)}")
    assert not missing, "\n".join(sorted(missing)[:40])


def _search(browser, url: str) -> set[str]:
    """The paths of the pages the site's search page lists for the query in ``url``."""
    browser.get(url)
    found = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const start = Date.now();
        (function wait() {
          const hrefs = [...document.querySelectorAll('#search-results a')].map((a) => a.href);
          const summary = document.querySelector('#search-results .search-summary, #search-results p');
          // the summary's last words, in English or in the Chinese edition's Chinese
          const finished = summary && /found|did not match|匹配到|没有匹配/i.test(summary.textContent);
          if (hrefs.length && finished) done(hrefs);
          else if (finished || Date.now() - start > 20000) done(hrefs);
          else setTimeout(wait, 100);
        })();
        """
    )
    return {urlsplit(href).path for href in found}


def test_search_finds_the_attention_chapter_for_softmax(server, browser):
    _, origin = server
    paths = _search(browser, origin + "search.html?q=softmax")
    assert "/book/02_attention.html" in paths, f"searching 'softmax' found {sorted(paths)}"
    errors = severe(browser, origin)
    assert not errors, errors


def test_chinese_search_finds_the_attention_chapter_for_a_chinese_word(server, browser):
    """The Chinese edition's index is cut into words (jieba), so a Chinese query finds Chinese pages."""
    _, origin = server
    paths = _search(browser, origin + "zh_CN/search.html?q=" + quote("多头注意力"))
    assert "/zh_CN/book/02_attention.html" in paths, f"searching '多头注意力' found {sorted(paths)}"
    assert all(path.startswith("/zh_CN/") for path in paths), f"the Chinese search left its edition: {sorted(paths)}"
    errors = severe(browser, origin)
    assert not errors, errors


def test_the_language_link_switches_to_the_same_page_and_back(server, browser):
    _, origin = server
    browser.get(origin + "book/02_attention.html")
    switch = "p." + course_site.LANGUAGE_SWITCH_CLASS + " a"
    browser.find_element("css selector", switch).click()
    assert urlsplit(browser.current_url).path == "/zh_CN/book/02_attention.html"
    assert browser.execute_script("return document.documentElement.lang") == "zh-CN"
    title = browser.execute_script("return document.querySelector('article h1').textContent")
    assert re.search(r"[\u4e00-\u9fff]", title), f"the Chinese page's title is not Chinese: {title!r}"
    browser.find_element("css selector", switch).click()
    assert urlsplit(browser.current_url).path == "/book/02_attention.html"
    assert browser.execute_script("return document.documentElement.lang") == "en"
    errors = severe(browser, origin)
    assert not errors, errors


def test_a_chapter_reads_from_disk_without_a_server(server, browser):
    """Opened as a file (a downloaded copy of the site), the attention chapter still typesets."""
    site, origin = server
    browser.get((site / "book" / "02_attention.html").resolve().as_uri())
    assert browser.execute_async_script(WAIT_FOR_MATHJAX) is True
    seen = browser.execute_script(READ_PAGE)
    assert seen["maths"] and not seen["untypeset"] and not seen["errors"]
    errors = severe(browser, origin)
    assert not errors, errors
