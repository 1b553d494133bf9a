"""Helpers for tests that open pages in a real headless Chromium (Debian's `chromium` package).

`page_check` serves a folder over HTTP on loopback, loads one page in an iframe of a checking
page, and reports what a reader would meet: images that did not load, links that do not
resolve (relative files fetched, `#anchors` looked up), and the absolute links, left for the
test to fetch itself (a browser may not read another origin's answer).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# Runs in the checking page once the page under test (in the iframe) and its images loaded.
_CHECK_JS = r"""
function check() {
  const doc = document.getElementById('page').contentDocument;
  const out = {title: doc.title, svgs: doc.querySelectorAll('svg').length, images: [], broken_images: [],
               links: [], broken_links: [], external: []};
  for (const img of doc.images) {
    const src = img.getAttribute('src') || '';
    const name = img.alt || src.slice(0, 60);
    out.images.push(name);
    if (!(img.complete && img.naturalWidth > 0)) out.broken_images.push(name);
  }
  for (const a of doc.querySelectorAll('a[href]')) {
    const href = a.getAttribute('href');
    out.links.push(href);
    if (href.startsWith('#')) {
      if (!doc.getElementById(decodeURIComponent(href.slice(1)))) out.broken_links.push(href + ' (no such anchor)');
      continue;
    }
    const url = new URL(href, doc.baseURI);
    if (url.origin !== location.origin) { out.external.push(url.href); continue; }
    const xhr = new XMLHttpRequest();
    xhr.open('GET', url.href, false);  // synchronous: the result must exist before the DOM is dumped
    try { xhr.send(); } catch (e) { out.broken_links.push(href + ' (' + e + ')'); continue; }
    if (xhr.status !== 200) out.broken_links.push(href + ' (HTTP ' + xhr.status + ')');
  }
  const pre = document.createElement('pre');
  pre.id = 'result';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}
window.addEventListener('load', () => setTimeout(check, 300));
"""


def chromium() -> str:
    """The Chromium executable; the test is skipped, saying why, where there is none."""
    for name in CHROMIUM_NAMES:
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("no headless Chromium on this machine (install Debian's `chromium` package: "
                "apt-get install chromium; .ci/run does)")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(root: Path) -> tuple[ThreadingHTTPServer, str]:
    """A static HTTP server for `root` on a free loopback port, in a daemon thread."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def dump_dom(url: str, timeout_s: float = 90.0, budget_ms: int = 15000) -> str:
    """The DOM of `url` after it loaded and its timers ran, from headless Chromium."""
    exe = chromium()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def page_check(root: Path, page: str) -> dict:
    """Open `root`/`page` in Chromium (served over HTTP) and return what `_CHECK_JS` found:
    title, svgs (drawn SVG figures), images, broken_images, links, broken_links, external."""
    checker = root / "__page_check.html"
    checker.write_text("<!doctype html><html><body>"
                       f"<iframe id='page' src='{page}' style='width:1200px;height:900px'></iframe>"
                       f"<script>{_CHECK_JS}</script></body></html>")
    httpd, base = serve(root)
    try:
        dom = dump_dom(f"{base}/{checker.name}")
    finally:
        httpd.shutdown()
        checker.unlink()
    start = dom.find("<pre id=\"result\">")
    assert start >= 0, f"the check did not run; the page's DOM ends: {dom[-1500:]}"
    import html

    return json.loads(html.unescape(dom[start + len("<pre id=\"result\">"): dom.index("</pre>", start)]))


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    JSON messages ending in NUL on file descriptors 3 and 4), so a test can wait for a page
    that renders after it loaded (MLflow's UI) with nothing beyond the standard library."""

    def __init__(self, width: int = 1400, height: int = 1000):
        import os

        exe = chromium()
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def fds() -> None:  # in the child: the protocol's descriptors are 3 (in) and 4 (out)
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--hide-scrollbars", "--remote-debugging-pipe", f"--window-size={width},{height}", "about:blank"],
            # 3 and 4 stay open in the child (made by fds() there); every other descriptor is closed
            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout_s: float = 60) -> dict:
        import os
        import select
        import time

        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {method} in {timeout_s:.0f} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self._buf += chunk

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, session=True)

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        session=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"].get("text", "script error"))
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 90, every_s: float = 0.5):
        """Poll `expression` until it is truthy; its value, or TimeoutError."""
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(every_s)
        raise TimeoutError(f"not true within {timeout_s:.0f} s: {expression[:200]}")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        import base64

        params: dict = {"format": "png"}
        if full_page:
            h = int(self.eval("document.documentElement.scrollHeight"))
            w = int(self.eval("document.documentElement.scrollWidth"))
            params |= {"clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}, "captureBeyondViewport": True}
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params, session=True)["data"]))
        return Path(path)

    def close(self) -> None:
        import os

        try:
            self.send("Browser.close", timeout_s=10)
        except Exception:
            pass
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
