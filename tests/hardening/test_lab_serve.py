"""`xtalforge lab serve` as a lab would meet it: a real uvicorn process on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

from tests.oracles.test_lab_validation import QUANTITIES, make_lab_run
from xtalforge.config import parse_config

from ..servers import free_port, stop_process_group


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_redact_query_blanks_secret_values_only():
    from xtalforge.oracles.lab.api import redact_query

    assert redact_query("/requests?token=abc&include_answered=true") == \
        "/requests?token=REDACTED&include_answered=true"
    assert redact_query("/requests?api_key=1&access_token=2") == "/requests?api_key=REDACTED&access_token=REDACTED"
    assert redact_query("/health") == "/health"


def test_a_token_in_the_url_is_not_logged_and_docs_need_no_cdn(tmp_path):
    _cfg, store, run, _cands, _lab = make_lab_run(tmp_path)
    store.close()
    cfg = parse_config({"name": "run", "chemical_system": ["Na", "Cl"], "lab": {"quantities": QUANTITIES}})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xtalforge.cli.main", "lab", "serve", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "lab serve did not start"
            time.sleep(0.3)
        secret = "s3cret-" + os.urandom(8).hex()
        status, _ = _get(f"{base}/requests?token={secret}")
        assert status in (401, 422)
        assert _get(f"{base}/docs")[0] == 404 and _get(f"{base}/redoc")[0] == 404
        status, spec = _get(f"{base}/openapi.json")
        assert status == 200 and b"cdn" not in spec.lower()
        time.sleep(0.5)  # let the access log line out
    finally:
        stop_process_group(proc)
    log = proc.stdout.read().decode(errors="replace")
    assert "/requests?token=REDACTED" in log, log[-2000:]
    assert secret not in log
