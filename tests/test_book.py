"""The book builds from the executed notebooks, and every page renders in a real browser, offline.

The notebooks run once per test session (`test_notebooks.execute_notebooks_once`, shared with
tests/test_notebooks.py), the book is built from those copies (``book/build.py``: no second
execution), and headless Chromium (Selenium, tests/browser.py) opens every page from a local HTTP
server with the network cut off. Each page must show its title; each notebook page at least one
figure that actually loads; no page may show an error output; every equation must be typeset by the
book's own MathJax with no raw LaTeX (``\\(``, ``\\[``, ``$$``) left in view; the browser console must
stay free of errors. Kept for a reader of the run: ``build/book-screenshot.png`` (a model page's
anomaly maps) and ``build/book-patchcore-math.png`` (PatchCore's equations, rendered offline).

Without Chromium and ChromeDriver the browser tests skip with a message (``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_notebooks import NOTEBOOKS, _terminal_echo, execute_notebooks_once

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
HTML = BOOK / "_build" / "html"
SCREENSHOT = REPO / "build" / "book-screenshot.png"
MATH_SCREENSHOT = REPO / "build" / "book-patchcore-math.png"
ERROR_MARKERS = ("Traceback (most recent call last)", '"ename"', "output_error")
ERROR_CLASSES = {"output_error", "traceback", "error"}

pytestmark = pytest.mark.slow


@functools.lru_cache(maxsize=1)
def _book_module():
    """book/build.py as a module (loaded by path: the name ``build`` belongs to a PyPI package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("adlearn_book_build", BOOK / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Book:
    html: Path
    notebooks: list[Path]  # the notebooks executed in this session (all, or ADLEARN_NOTEBOOKS)


@pytest.fixture(scope="session")
def built_book(request) -> Book:
    """Run the notebooks (once per session), then build the HTML from their executed copies."""
    echo = _terminal_echo(request)
    results = execute_notebooks_once(echo)
    book_build = _book_module()
    start = time.perf_counter()
    copied = book_build.copy_executed(names=list(results))  # this session's notebooks
    result = book_build.build_html()
    seconds = time.perf_counter() - start
    echo(f"book: {len(copied)} notebook pages built in {seconds:.1f} s -> {HTML / 'index.html'}")
    errors = book_build.problems_in_log(result.stdout + result.stderr)
    assert not errors, "jupyter-book reported errors:\n" + "\n".join(errors[:20])
    failed = [name for name, row in results.items() if row["status"] != "ok"]
    if failed:
        echo(f"book: notebooks that failed (their pages show the error): {failed}")
    return Book(HTML, [path for path in NOTEBOOKS if path.name in results])


def test_book_has_a_page_per_notebook_and_chapter(built_book):
    for path in built_book.notebooks:
        assert (built_book.html / "notebooks" / f"{path.stem}.html").is_file(), f"no page for {path.name}"
    for chapter in ("introduction", "data", "components", "models"):
        assert (built_book.html / "chapters" / f"{chapter}.html").is_file()
    assert (built_book.html / "index.html").is_file() and (built_book.html / "course.html").is_file()


def test_book_source_has_no_live_widgets(built_book):
    import nbformat

    book_build = _book_module()
    for source in built_book.notebooks:
        path = BOOK / "notebooks" / source.name
        notebook = nbformat.read(path, as_version=4)
        assert "widgets" not in notebook.metadata, f"{path.name} still carries widget state"
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                assert book_build.WIDGET_MIME not in output.get("data", {}), f"{path.name}: live widget output left"


def test_book_hides_papermills_injected_parameters_cell(built_book):
    """The executed notebooks carry papermill's injected cell; the pages show only the notebook's own."""
    import nbformat

    for source in built_book.notebooks:
        executed = nbformat.read(REPO / "build" / "notebooks" / source.name, as_version=4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected, f"{source.name}: papermill injected no parameters cell (nothing to hide?)"
        page = (built_book.html / "notebooks" / f"{source.stem}.html").read_text(encoding="utf-8")
        assert "tag_injected-parameters" not in page and "# Parameters</span>" not in page, (
            f"{source.stem}.html shows papermill's injected parameters cell"
        )
        assert "tag_parameters" in page, f"{source.stem}.html lost the notebook's own parameters cell"


class _AssetParser(html.parser.HTMLParser):
    """The scripts, stylesheets and fonts a page loads (not the links a reader may follow)."""

    def __init__(self):
        super().__init__()
        self.assets: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script" and attributes.get("src"):
            self.assets.append(attributes["src"])
        if tag == "link" and set((attributes.get("rel") or "").split()) & {"stylesheet", "preload", "modulepreload"}:
            self.assets.append(attributes.get("href") or "")


def test_book_pages_load_nothing_from_the_internet(built_book):
    """No page pulls a script, stylesheet or font from another host (a CDN's MathJax, say)."""
    remote = {}
    for page in sorted(built_book.html.rglob("*.html")):
        parser = _AssetParser()
        parser.feed(page.read_text(encoding="utf-8"))
        found = [src for src in parser.assets if urllib.parse.urlsplit(src).netloc or src.startswith("//")]
        if found:
            remote[str(page.relative_to(built_book.html))] = found
    assert not remote, f"pages that load assets from the network: {remote}"
    assert (built_book.html / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax is not served with the book"


def test_course_page_lists_every_notebook_with_its_timings(built_book):
    """book/course.md includes the table build.py writes from this session's measured smoke timings."""
    import json

    page = (built_book.html / "course.html").read_text(encoding="utf-8")
    timings = json.loads((REPO / "build" / "notebooks" / "timings.json").read_text())
    for row in timings["notebooks"]:
        assert f"notebooks/{Path(row['notebook']).stem}.html" in page, f"course page does not link {row['notebook']}"
    assert "smoke mode: measured" in page
    assert "full mode: not measured yet" in page or "full mode: measured" in page


# ------------------------------------------------------------------------------------ the browser
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test log clean
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Chromium drops connections it no longer needs: not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve(directory: Path) -> tuple[_QuietServer, threading.Thread, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def served_book(built_book):
    """The HTML served on 127.0.0.1 (random free port) from a background thread; shut down after."""
    server, thread, url = serve(built_book.html)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class PageParser(html.parser.HTMLParser):
    """What the checks need from a rendered page: its first h1, the images of the article, error outputs."""

    def __init__(self):
        super().__init__()
        self.h1: str | None = None
        self._in_h1 = False
        self._in_article = 0
        self.images: list[str] = []
        self.error_classes: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = set((attributes.get("class") or "").split())
        if tag == "article" or "bd-article" in classes:
            self._in_article += 1
        if tag == "h1" and self.h1 is None:
            self._in_h1, self.h1 = True, ""
        if tag == "img" and self._in_article and attributes.get("src"):
            self.images.append(attributes["src"])
        if classes & ERROR_CLASSES and ({"output", "cell_output"} & classes or "output_error" in classes):
            self.error_classes |= classes & ERROR_CLASSES

    def handle_endtag(self, tag):
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data):
        if self._in_h1:
            self.h1 += data


def expected_pages(notebooks: list[Path]) -> list[tuple[str, str, bool]]:
    """(path in the site, expected title, must show a figure) for the intro, course, chapters, notebooks."""
    import nbformat

    pages = []
    for source in [BOOK / "intro.md", BOOK / "course.md", *sorted((BOOK / "chapters").glob("*.md"))]:
        title = source.read_text(encoding="utf-8").lstrip().splitlines()[0].lstrip("# ").strip()
        pages.append((str(source.relative_to(BOOK).with_suffix(".html")), title, False))
    for path in notebooks:
        first = nbformat.read(path, as_version=4).cells[0].source.lstrip().splitlines()[0]
        pages.append((f"notebooks/{path.stem}.html", first.lstrip("# ").strip(), True))
    return pages


def comparable(text: str) -> str:
    """Text as Sphinx renders it, for comparing titles: smart quotes and dashes, no markup, single spaces."""
    for plain, typeset in (("---", "—"), ("--", "–"), ("...", "…")):
        text = text.replace(plain, typeset)
    for curly, straight in (("“", '"'), ("”", '"'), ("‘", "'"), ("’", "'")):
        text = text.replace(curly, straight)
    return " ".join(text.replace("`", "").replace("*", "").split())


# Waits until MathJax has typeset the page (or says why not): MathJax 3 sets MathJax.startup.promise
# once its script has run; before that window.MathJax is only the configuration object.
WAIT_FOR_MATH = """
const expected = arguments[0];
const done = arguments[arguments.length - 1];
const start = Date.now();
(function poll() {
  // Decide only on the page we asked for, once its document has fully loaded: a check made while
  // Chromium still shows the previous page (or a half-parsed one) would see no math at all.
  const here = document.readyState === "complete" && location.pathname === new URL(expected).pathname;
  const mj = window.MathJax;
  if (here && mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(() => done("typeset"), (error) => done("MathJax failed: " + error));
  } else if (here && !document.querySelector(".math")) {
    done("no math");
  } else if (Date.now() - start > 20000) {
    done(here ? "MathJax never loaded" : "the page did not finish loading in 20 s (" + location.href + ")");
  } else {
    setTimeout(poll, 100);
  }
})();
"""

# The page's math, as a reader sees it: Sphinx's math elements (.math) must each hold MathJax's
# rendering (mjx-container), and no visible text outside code may still show LaTeX delimiters.
MATH_STATE = """
const root = document.querySelector(".bd-article") || document.querySelector("article") || document.body;
const math = Array.from(root.querySelectorAll(".math"));
const unrendered = math.filter((node) => !node.querySelector("mjx-container"))
                       .map((node) => node.textContent.trim().slice(0, 80));
const skip = new Set(["PRE", "CODE", "SCRIPT", "STYLE", "TEXTAREA", "MJX-CONTAINER"]);
const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {acceptNode(node) {
  for (let el = node.parentElement; el && el !== root; el = el.parentElement) {
    if (skip.has(el.tagName)) return NodeFilter.FILTER_REJECT;
  }
  return node.parentElement.getClientRects().length ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_REJECT;
}});
const raw = [];
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const text = node.textContent;
  if (RAW_MARKERS.some((marker) => text.includes(marker))) raw.push(text.trim().slice(0, 120));
}
return {math: math.length, rendered: root.querySelectorAll("mjx-container").length, unrendered, raw};
""".replace("RAW_MARKERS", '["\\\\(", "\\\\)", "\\\\[", "\\\\]", "$$", "\\\\begin{"]')


def math_state(driver) -> dict:
    return driver.execute_script(MATH_STATE)


def check_page(driver, base_url: str, page: str, title: str, needs_figure: bool) -> tuple[list[str], int]:
    """Open ``page`` (offline) and list its problems; also return how many equations it typeset."""
    url = urllib.parse.urljoin(base_url, page)
    problems = []
    try:
        driver.get(url)
        typeset = driver.execute_async_script(WAIT_FOR_MATH, url)
    except Exception as error:  # a timeout or a crashed tab: report it with the page
        return [f"{page}: did not load in Chromium ({type(error).__name__}: {error})"], 0
    dom = driver.page_source
    parser = PageParser()
    parser.feed(dom)
    heading = (parser.h1 or "").replace("#", "").replace("¶", "").strip()
    if comparable(title) not in comparable(heading):
        problems.append(f"{page}: title {title!r} not rendered (first h1: {heading!r})")
    if needs_figure:
        if not parser.images:
            problems.append(f"{page}: no figure (img) in the page")
        for src in parser.images[:3]:  # the figures must really load, not only be referenced
            image_url = urllib.parse.urljoin(url, src)
            try:
                with urllib.request.urlopen(image_url, timeout=10) as response:
                    if not response.headers.get("Content-Type", "").startswith("image/"):
                        problems.append(f"{page}: {src} is not an image")
            except OSError as error:
                problems.append(f"{page}: figure {src} does not load ({error})")
    markers = [marker for marker in ERROR_MARKERS if marker in dom]
    if markers or parser.error_classes:
        problems.append(f"{page}: error output on the page ({markers or sorted(parser.error_classes)})")
    state = math_state(driver)
    if state["math"]:
        if typeset != "typeset":
            problems.append(f"{page}: {state['math']} equations but {typeset}")
        if state["unrendered"]:
            problems.append(
                f"{page}: {len(state['unrendered'])} of {state['math']} equations not typeset, "
                f"e.g. {state['unrendered'][:3]}"
            )
        if not state["rendered"]:
            problems.append(f"{page}: no rendered math element (mjx-container) on a page with math")
    if state["raw"]:
        problems.append(f"{page}: raw LaTeX visible: {state['raw'][:3]}")
    for message in browser_module().console_errors(driver):
        problems.append(f"{page}: console error: {message[:300]}")
    return problems, state["rendered"]


def browser_module():
    import browser as module  # tests/browser.py (pytest puts tests/ on sys.path)

    return module


@pytest.fixture(scope="module")
def offline_browser():
    """One offline headless Chromium (Selenium) for the module; skips with a message without one."""
    module = browser_module()
    reason = module.missing()
    if reason:
        pytest.skip(f"the book's browser checks need Chromium: {reason}")
    with module.chromium_driver(offline=True) as driver:
        yield driver


def test_every_page_renders_offline_in_chromium(offline_browser, served_book, built_book, request):
    """Every page, with the network cut off: its title, its figures, no error output, every equation
    typeset by the book's own MathJax with no raw LaTeX left, and nothing in the console."""
    pages = expected_pages(built_book.notebooks)
    start = time.perf_counter()
    problems, equations, with_math = [], 0, 0
    for page in pages:
        found, rendered = check_page(offline_browser, served_book, *page)
        problems += found
        equations += rendered
        with_math += bool(rendered)
    _terminal_echo(request)(
        f"browser check: {len(pages)} pages opened offline in headless Chromium in "
        f"{time.perf_counter() - start:.1f} s; {equations} equations typeset on {with_math} "
        f"pages; {len(problems)} problem(s)"
    )
    assert with_math, "no page typeset any equation: is the math check looking at the right elements?"
    assert not problems, "\n".join(problems)


def _screenshot(driver, url: str, path: Path, selectors: tuple[str, ...], offset: int = 160) -> None:
    """Open ``url``, wait for its math, scroll the first element matching one of ``selectors`` to the
    top (less ``offset`` px), save a PNG."""
    driver.get(url)
    driver.execute_async_script(WAIT_FOR_MATH, url)
    driver.execute_script(
        """
        for (const selector of arguments[0]) {
          const element = document.querySelector(selector);
          if (element) { element.scrollIntoView({block: "start"}); window.scrollBy(0, -arguments[1]); return; }
        }""",
        list(selectors),
        offset,
    )
    time.sleep(0.5)  # let the scroll paint
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    assert driver.save_screenshot(str(path)) and path.is_file()
    assert path.stat().st_size > 20_000, f"{path} is suspiciously small (a blank page?)"


def test_screenshot_of_a_model_page(offline_browser, served_book, built_book):
    """A screenshot of the first model page, scrolled to its anomaly maps (or first figure):
    build/book-screenshot.png."""
    model_pages = [p for p in built_book.notebooks if int(p.name[:2]) >= 10]
    page = f"notebooks/{(model_pages or built_book.notebooks)[0].stem}.html"
    _screenshot(
        offline_browser,
        urllib.parse.urljoin(served_book, page),
        SCREENSHOT,
        ("#anomaly-maps img", "article img", ".bd-article img"),
    )


def test_patchcore_math_offline_screenshot(offline_browser, served_book, built_book, request):
    """The PatchCore page's equations, typeset with the network cut off: build/book-patchcore-math.png
    (kept for a reader of the CI run to look at)."""
    if "11_patchcore.ipynb" not in [p.name for p in built_book.notebooks]:
        pytest.skip("11_patchcore.ipynb was not executed in this session (ADLEARN_NOTEBOOKS)")
    url = urllib.parse.urljoin(served_book, "notebooks/11_patchcore.html")
    _screenshot(offline_browser, url, MATH_SCREENSHOT, ("div.math", ".math"), offset=260)
    state = math_state(offline_browser)
    assert state["math"] and not state["unrendered"] and not state["raw"], state
    assert not browser_module().console_errors(offline_browser)
    _terminal_echo(request)(f"PatchCore page, offline: {state['rendered']} equations typeset -> {MATH_SCREENSHOT}")
