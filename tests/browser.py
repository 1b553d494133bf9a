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
