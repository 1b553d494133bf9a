"""MLflow-safe metric names, and tracking that never stops a campaign (real MLflow stores)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow.tracking import MlflowClient

from xtalforge.loop.tracking import Tracker, metric_key, metric_keys


def test_formula_names_become_safe_keys_and_safe_names_are_kept():
    assert metric_key("gen_random_symmetric_p_Li(CuO)2") == "gen_random_symmetric_p_Li_CuO_2"
    assert metric_key("best_e_above_hull") == "best_e_above_hull"
    assert len(metric_key("x" * 400)) == 250
    keys = metric_keys(["p_a(b)", "p_a_b_", "p_a[b]"])
    assert keys["p_a_b_"] == "p_a_b_"  # a safe name never changes
    assert len(set(keys.values())) == 3


def test_parenthesized_formulas_are_logged(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "tests", artifact_root=tmp_path / "art")
    run_id = tr.start("culio", {"chemical_system": ["Cu", "Li", "O"]}, {})
    assert tr.log_metrics({"gen_random_symmetric_p_Li(CuO)2": 0.25, "sun_count": 1.0}, step=0)
    assert tr.logged_steps("gen_random_symmetric_p_Li(CuO)2") == {0}
    tr.finish()
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.metrics["generators/learned_random_symmetric_p_Li_CuO_2"] == 0.25
    assert run.info.status == "FINISHED" and tr.failures == 0


class _Down(BaseHTTPRequestHandler):
    def _fail(self) -> None:
        self.send_response(503)
        self.end_headers()

    do_GET = do_POST = do_PATCH = _fail

    def log_message(self, *args) -> None:
        pass


def test_an_unreachable_tracking_server_is_warned_about_once_and_never_raises(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Down)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with caplog.at_level(logging.INFO, logger="xtalforge.loop.tracking"):
            tr = Tracker(f"http://127.0.0.1:{srv.server_port}", "tests", cooldown_s=0.0)
            assert tr.start("down", {"a": 1}, {}) is None
            for r in range(3):
                assert tr.logged_steps("sun_count") == set()
                assert tr.log_metrics({"sun_count": float(r)}, step=r) is False
            tr.set_description("x")
            tr.finish("FINISHED")
    finally:
        srv.shutdown()
        srv.server_close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "goes on" in warnings[0].getMessage()
    assert tr.failures >= 2


def test_metrics_held_back_by_a_locked_store_are_sent_with_the_next_batch(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tr = Tracker(uri, "tests", artifact_root=tmp_path / "art", cooldown_s=0.0)
    run_id = tr.start("locked", {}, {})
    assert tr.log_metrics({"sun_count": 0.0}, step=0)
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the store: MLflow's writes fail
    try:
        assert tr.log_metrics({"sun_count": 1.0}, step=1) is False
    finally:
        holder.rollback()
        holder.close()
    assert tr.log_metrics({"sun_count": 2.0}, step=2) is True
    tr.finish()
    hist = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "discovery/hits")
    assert sorted((m.step, m.value) for m in hist) == [(1, 0.0), (2, 1.0), (3, 2.0)]  # rounds from 1
