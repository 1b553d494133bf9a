"""Regenerate the README's screenshots from a finished campaign, in headless Chromium.

    python docs/images/screenshots.py runs/quickstart

Starts `mlflow ui` on the campaign's tracking store (as `xtalforge ui` does), opens the run's
Model metrics page in the model-training view and the campaign's report.html, and writes
docs/images/mlflow_dashboard.png and report.png. Needs Debian's
`chromium` package.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.browser import Browser  # noqa: E402
from tests.servers import free_port, stop_process_group, wait_healthy  # noqa: E402
from xtalforge.loop.tracking import ui_command, ui_page, ui_target  # noqa: E402

OUT = ROOT / "docs" / "images"

# the MLflow assistant panel takes a third of the page; close it when the UI shows it
CLOSE_ASSISTANT = """(() => { for (const b of document.querySelectorAll('button')) {
  const l = (b.getAttribute('aria-label') || '').toLowerCase();
  if (l.includes('close') && b.closest('[class]') && b.closest('body').innerText.includes('Assistant')) {
    b.click(); return true; } } return false; })()"""


def main(run_dir: Path) -> None:
    uri, root = ui_target(run_dir)
    port = free_port()
    proc = subprocess.Popen(ui_command(uri, "127.0.0.1", port, root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    browser = None
    try:
        wait_healthy(proc, base, 120, "mlflow ui")
        page = ui_page(base, uri, run_dir)
        browser = Browser(1440, 1000)
        browser.goto(page.replace("?", "/model-metrics?"))
        browser.wait_for("document.querySelectorAll('img[src*=\"get-artifact\"]').length >= 3", 120)
        browser.eval(CLOSE_ASSISTANT)
        time.sleep(3)  # the line charts draw after the images arrive
        browser.screenshot(OUT / "mlflow_dashboard.png")
        browser.goto((run_dir / "report" / "report.html").resolve().as_uri())
        browser.wait_for("document.readyState === 'complete'", 30)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1250, "height": 1700, "deviceScaleFactor": 1, "mobile": False}, session=True)
        time.sleep(1)
        browser.screenshot(OUT / "report.png")
    finally:
        if browser is not None:
            browser.close()
        stop_process_group(proc)
    for name in ("mlflow_dashboard.png", "report.png"):
        print(OUT / name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/images/screenshots.py RUN_FOLDER")
    main(Path(sys.argv[1]).resolve())
