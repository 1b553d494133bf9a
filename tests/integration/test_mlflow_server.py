"""A tiny real campaign (`xtalforge run --tracking-uri http://…`) logging to a real MLflow
server on loopback; everything the dashboard promises is read back through MlflowClient."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from xtalforge.config import load_config
from xtalforge.loop.report import PLOTS
from xtalforge.loop.tracking import EVERY, MODEL, PARITY, round_metric_names, undocumented

from ..servers import free_port, stop_process_group, wait_healthy

GEN = "random_symmetric"


class Server:
    """A running `mlflow server` subprocess and the address it answers on."""

    def __init__(self, proc: subprocess.Popen, url: str, artifacts: Path):
        self.proc, self.url, self.artifacts = proc, url, artifacts

    def wait(self, timeout_s: float = 150.0) -> None:
        """Block until /health answers (a fresh server takes ~15 s on 2 idle cores)."""
        wait_healthy(self.proc, self.url, timeout_s, "mlflow server")


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts, both in tmp_path.

    Started, not waited for: the test starts Ray meanwhile, and the two start-ups overlap."""
    port = free_port()
    arts = tmp_path / "server_artifacts"
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(arts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield Server(proc, f"http://127.0.0.1:{port}", arts)
    finally:
        stop_process_group(proc)  # the server and its uvicorn worker


def _all_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _all_artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def _not_blank(png: Path) -> bool:
    return float(np.std(imread(str(png))[..., :3])) > 0.02


def test_campaign_logs_every_metric_and_artifact_to_a_server(tmp_path, mlflow_server, request, capsys):
    from xtalforge.cli.main import main

    request.getfixturevalue("ray_local")  # Ray starts while the server does
    mlflow_server.wait()
    url, server_arts = mlflow_server.url, mlflow_server.artifacts
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(dict(
        name="tiny", chemical_system=["Ca", "Ti", "O"], max_atoms=5, rounds=2, proposals_per_round=12,
        acquisition={"batch_size": 3}, mlip={"workers": 2, "max_steps": 60},
        tracking={"uri": f"sqlite:///{tmp_path}/unused.db", "experiment": "server-test", "top_k": 2})))
    assert main(["run", str(cfg_path), "--tracking-uri", url, "--output-dir", str(tmp_path / "runs"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "round 1/2" in out and "round 2/2" in out and "novel" in out  # the rich summary tables
    assert not (tmp_path / "unused.db").exists()  # --tracking-uri replaced the config's store
    run_dir = tmp_path / "runs" / "tiny"
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.tracking.uri == url

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("server-test")
    (run,) = client.search_runs([exp.experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert tags["chemical_system"] == "Ca-O-Ti" and tags["config_hash"] == cfg.config_hash()
    assert tags["git_commit"] and tags["mlflow.note.content"].startswith("**Ca-O-Ti**")
    assert params["chemical_system"] == "['Ca', 'Ti', 'O']" and params["acquisition.batch_size"] == "3"

    def steps(key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(rid, key))

    every = round_metric_names([GEN], ["mlip"], (EVERY,))
    missing = {k: steps(k) for k in every if steps(k) != [0, 1]}
    assert not missing, missing
    assert steps(f"gen_{GEN}_n_compositions") == [0, 1]
    # round 1 picks model-free; round 2 fits the GP on round 1's results and scores its picks
    for k in round_metric_names([GEN], ["mlip"], (MODEL, PARITY)):
        assert 1 in steps(k), k
    hist = {k: [m.value for m in sorted(client.get_metric_history(rid, k), key=lambda m: m.step)]
            for k in ("evaluations_mlip", "evaluations_total", "sun_count", "sun_rate", "novel", f"unique_{GEN}")}
    assert hist["evaluations_mlip"] == [3.0, 3.0] and hist["evaluations_total"] == [3.0, 6.0]
    assert hist["novel"] == hist[f"unique_{GEN}"]  # no reference structures: novel = unique
    assert hist["sun_rate"][1] == pytest.approx(hist["sun_count"][1] / 6)
    assert "hypervolume" not in run.data.metrics  # one objective only
    assert undocumented(list(run.data.metrics)) == [], "add a MetricSpec to tracking.ROUND_METRICS"

    arts = _all_artifacts(client, rid)
    for r in (0, 1):
        d = f"rounds/round_{r:03d}"
        assert {f"{d}/candidates.csv", f"{d}/cifs/top_candidates.csv"} <= arts
        assert {f"{d}/plots/{p}.png" for p in PLOTS} <= arts
        assert any(a.startswith(f"{d}/cifs/") and a.endswith(".cif") for a in arts)
        for key in PLOTS.values():
            assert any(a.startswith(f"images/{key}+step+{r}+") and a.endswith(".png") for a in arts), (key, r)
    assert {"config.yaml", "candidates.csv", "report/report.html", "report/report.md"} <= arts
    assert {f"report/plots/{p}.png" for p in PLOTS} <= arts
    assert any(a.startswith("top_cifs/") and a.endswith(".cif") for a in arts)
    # the artifacts went through the server to its store, not to a local folder
    assert list(server_arts.rglob("report.html"))

    dst = Path(client.download_artifacts(rid, "report", str(tmp_path / "dl")))
    for p in PLOTS:
        assert _not_blank(dst / "plots" / f"{p}.png"), p
    html = (dst / "report.html").read_text()
    csv_rows = (run_dir / "candidates.csv").read_text().splitlines()
    assert len(csv_rows) == 7 and "pred_e_above_hull" in csv_rows[0]
    best = csv_rows[1].split(",")[1]
    # the top candidate is listed, and the planner suggested routes for the best candidates
    assert best in html and "Synthesis routes" in html and "did not run" not in html
    cif = next((run_dir / "top_cifs").glob("01_*.cif")).read_text()
    assert cif.startswith("# xtalforge candidate") and "e_above_hull" in cif.splitlines()[1]
