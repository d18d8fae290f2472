"""A headless Chromium driven over the W3C WebDriver protocol, with plain HTTP requests from the standard library.

Debian's `chromium` and `chromium-driver` packages (`make setup` installs them) are all it needs: no Selenium, no
browser download. Used by benchmarks/viewer_scale.py and tests/test_viewer_browser.py. Not a benchmark itself (the
leading underscore keeps it out of `make bench` and of the smoke tests' list).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element reference


class WebDriverError(RuntimeError):
    """chromedriver answered a command with an error."""


class WebDriver:
    """The few WebDriver commands a page check needs, as JSON over HTTP to a local chromedriver."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 300) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            raise WebDriverError(f"WebDriver {method} {path}: {err.read()[:500]!r}") from None

    def command(self, method: str, path: str, body: dict | None = None) -> Any:
        return self.call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.command("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """The value of `script` (a function body: `return ...`) run in the page."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def click(self, selector: str) -> None:
        element = self.command("POST", "/element", {"using": "css selector", "value": selector})[ELEMENT]
        self.command("POST", f"/element/{element}/click", {})

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        return base64.b64decode(self.command("GET", "/screenshot"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def browser_missing() -> str | None:
    """Why no browser can be driven here (None when Chromium and chromedriver are installed)."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: `make setup` installs them (apt-get install chromium-driver)"
    return None


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 1000) -> Iterator[WebDriver]:
    """A chromedriver on a free loopback port and one headless Chromium session; both end on exit."""
    problem = browser_missing()
    if problem:
        raise RuntimeError(problem)
    port = _free_port()
    process = subprocess.Popen(
        [shutil.which("chromedriver"), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    driver = WebDriver(port)
    try:
        for _ in range(200):
            try:
                driver.call("GET", "/status", timeout=5)
                break
            except (OSError, WebDriverError):
                time.sleep(0.1)
        options = {
            "binary": shutil.which("chromium"),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"],
        }  # fmt: skip
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        driver.session = driver.call("POST", "/session", {"capabilities": capabilities})["sessionId"]
        yield driver
    finally:
        if driver.session:
            with contextlib.suppress(OSError, WebDriverError):
                driver.command("DELETE", "")
        process.terminate()
        process.wait(timeout=30)
