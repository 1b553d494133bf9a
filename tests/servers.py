"""Helpers for tests that start a real server subprocess (`mlflow server`, `xtalforge ui`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_healthy(proc: subprocess.Popen, base_url: str, timeout_s: float, what: str) -> None:
    """Block until `base_url`/health answers OK; fail with the server's stderr if it died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if http_get(f"{base_url}/health", 2) == b"OK":
                return
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    pytest.fail(f"{what} did not answer /health within {timeout_s:.0f} s")


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server and the workers it started: they share its (new) process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
