"""The book builds from the executed notebooks, and every page renders in a real browser.

The notebooks run once per test session (`test_notebooks.execute_notebooks_once`, shared with
tests/test_notebooks.py), the book is built from those copies (``book/build.py``: no second
execution), and headless Chromium opens every page from a local HTTP server. Each page must show its
title; each notebook page at least one figure that actually loads; no page may show an error output.
One screenshot is kept as ``build/book-screenshot.png``.

Without Chromium the browser test skips with a message (``apt-get install chromium chromium-driver``;
``.ci/run`` installs it).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_notebooks import NOTEBOOKS, execute_notebooks_once, _terminal_echo

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
HTML = BOOK / "_build" / "html"
SCREENSHOT = REPO / "build" / "book-screenshot.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--mute-audio"]
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
    assert (built_book.html / "index.html").is_file()


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


# ------------------------------------------------------------------------------------ the browser
def chromium() -> str | None:
    return next((shutil.which(name) for name in CHROMIUM_NAMES if shutil.which(name)), None)


# A page of our own that shows a book page in a 1280x1600 frame, scrolled to its anomaly-map figure
# (or its first figure). Chromium's --screenshot cannot scroll, and a #fragment URL renders blank.
FRAME_PAGE = """<!doctype html><html><body style="margin:0">
<iframe id="page" src="{page}" style="border:0;width:1280px;height:1600px"></iframe>
<script>
document.getElementById("page").addEventListener("load", function () {{
  var doc = this.contentWindow.document;
  var figure = doc.querySelector("#anomaly-maps img") || doc.querySelector("article img, .bd-article img");
  if (figure) {{ figure.scrollIntoView({{block: "start"}}); this.contentWindow.scrollBy(0, -160); }}
}});
</script></body></html>"""
FRAME_PATH = "/__screenshot__.html"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test log clean
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != FRAME_PATH:
            return super().do_GET()
        page = urllib.parse.parse_qs(url.query).get("page", ["index.html"])[0]
        body = FRAME_PAGE.format(page=html.escape(page, quote=True)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Chromium drops connections it no longer needs (a cancelled font or CDN script): not an error.
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


def run_chromium(binary: str, *arguments: str, timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="adlearn-chromium-") as profile:
        command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


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
    """(path in the site, expected title, must show a figure) for the intro, chapters and notebooks."""
    import nbformat

    pages = []
    for source in [BOOK / "intro.md", *sorted((BOOK / "chapters").glob("*.md"))]:
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


def check_page(binary: str, base_url: str, page: str, title: str, needs_figure: bool) -> list[str]:
    url = urllib.parse.urljoin(base_url, page)
    result = run_chromium(binary, "--virtual-time-budget=5000", "--dump-dom", url)
    dom = result.stdout
    if result.returncode != 0 or "<html" not in dom:
        return [f"{page}: chromium failed (exit {result.returncode}): {result.stderr[-500:]}"]
    parser = PageParser()
    parser.feed(dom)
    problems = []
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
    return problems


@pytest.fixture(scope="module")
def browser() -> str:
    binary = chromium()
    if binary is None:
        pytest.skip("Chromium not found: install it (Debian: apt-get install -y chromium chromium-driver; "
                    ".ci/run does this) to check the book's pages in a headless browser")
    return binary


def test_every_page_renders_in_chromium(browser, served_book, built_book, request):
    pages = expected_pages(built_book.notebooks)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda page: check_page(browser, served_book, *page), pages))
    problems = [problem for report in reports for problem in report]
    _terminal_echo(request)(f"browser check: {len(pages)} pages opened in headless Chromium in "
                            f"{time.perf_counter() - start:.1f} s, {len(problems)} problem(s)")
    assert not problems, "\n".join(problems)


def test_screenshot_of_a_model_page(browser, served_book, built_book):
    """A screenshot of the first model page, scrolled to its anomaly maps (or first figure)."""
    model_pages = [p for p in built_book.notebooks if int(p.name[:2]) >= 10]
    page = f"notebooks/{(model_pages or built_book.notebooks)[0].stem}.html"
    url = urllib.parse.urljoin(served_book, FRAME_PATH.lstrip("/")) + "?" + urllib.parse.urlencode({"page": page})
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    result = run_chromium(browser, "--window-size=1280,1600", "--virtual-time-budget=5000",
                          f"--screenshot={SCREENSHOT}", url)
    assert result.returncode == 0 and SCREENSHOT.is_file(), result.stderr[-1000:]
    assert SCREENSHOT.stat().st_size > 20_000, "the screenshot is suspiciously small (a blank page?)"
