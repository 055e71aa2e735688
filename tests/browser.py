"""Headless Chromium driven by Selenium, for the book's pages and JupyterLab (tests only).

`chromium_driver()` starts Debian's Chromium through its ChromeDriver with the network cut off: every
request that is not to the loopback address goes to a proxy that does not exist, and no host name
resolves. What a page needs from the internet (a CDN's MathJax, a font) therefore fails exactly as it
would in a workshop room without a connection. The browser's console is recorded; `console_errors`
returns its errors.

Without Chromium or ChromeDriver, `missing()` says what to install, and the tests skip with that.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver", "chromium-driver")
INSTALL_HINT = "install them (Debian: apt-get install -y chromium chromium-driver; .ci/run does this)"
# Everything but 127.0.0.1 goes to a dead proxy (port 9, "discard", closed) and no name resolves:
# the browser is offline except for our own local servers.
OFFLINE_FLAGS = ["--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,MediaRouter",
]


def chromium() -> str | None:
    return next((shutil.which(name) for name in CHROMIUM_NAMES if shutil.which(name)), None)


def chromedriver() -> str | None:
    return next((shutil.which(name) for name in DRIVER_NAMES if shutil.which(name)), None)


def missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    absent = [name for name, found in (("Chromium", chromium()), ("ChromeDriver", chromedriver())) if not found]
    if absent:
        return f"{' and '.join(absent)} not found: {INSTALL_HINT}"
    return None


@contextmanager
def chromium_driver(width: int = 1280, height: int = 1600, offline: bool = True):
    """A Selenium WebDriver on headless Chromium (offline unless told otherwise); quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="adlearn-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium()
        for flag in FLAGS + (OFFLINE_FLAGS if offline else []):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit ChromeDriver: Selenium never tries to download one.
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver()))
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        try:
            yield driver
        finally:
            driver.quit()


def console_errors(driver, ignore: tuple[str, ...] = ("chrome://", "devtools://")) -> list[str]:
    """The console's error entries since the last call (the log is emptied by reading it)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry.get("level") == "SEVERE" and not entry["message"].startswith(ignore)
    ]
