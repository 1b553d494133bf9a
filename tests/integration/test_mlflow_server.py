"""A tiny real campaign (`xtalforge run --tracking-uri http://…`) logging to a real MLflow
server on loopback; everything the dashboard promises is read back through MlflowClient, and
the run's charts page is opened in headless Chromium to see what an owner sees first."""

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
from xtalforge.loop.tracking import (
    EVERY,
    MODEL,
    PARITY,
    SECTIONS,
    mlflow_key,
    round_metric_names,
    ui_url,
    undocumented,
)

from ..browser import Browser, CHROMIUM_NAMES
from ..servers import free_port, http_get, stop_process_group, wait_healthy

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
    # the description: a short Markdown summary with the headline numbers and links
    note = tags["mlflow.note.content"]
    assert note.startswith("### Ca-O-Ti · round 2 of 2 · finished") and "oracle calls" in note
    assert "/artifactPath/report/report.html" in note and "| e_above_hull (eV/atom) |" in note
    # a few headline params (MLflow prints them above every image chart), the config in tags
    assert params == {"chemical_system": "Ca-Ti-O", "rounds": "2", "proposals_per_round": "12", "batch_size": "3",
                      "acquisition": "qlognei", "generators": GEN}
    assert "batch_size=3" in tags["config.acquisition"]
    assert "discovery/" in exp.tags["mlflow.note.content"]  # the experiment says where to look

    def steps(name: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(rid, mlflow_key(name)))

    # steps are rounds as the CLI and the report count them
    every = round_metric_names([GEN], ["mlip"], (EVERY,))
    missing = {k: steps(k) for k in every if steps(k) != [1, 2]}
    assert not missing, missing
    assert steps(f"gen_{GEN}_n_compositions") == [1, 2]
    # round 1 picks model-free; round 2 fits the GP on round 1's results and scores its picks
    for k in round_metric_names([GEN], ["mlip"], (MODEL, PARITY)):
        assert 2 in steps(k), k
    hist = {k: [m.value for m in sorted(client.get_metric_history(rid, mlflow_key(k)), key=lambda m: m.step)]
            for k in ("evaluations_mlip", "evaluations_total", "sun_count", "sun_rate", "novel", f"unique_{GEN}")}
    assert hist["evaluations_mlip"] == [3.0, 3.0] and hist["evaluations_total"] == [3.0, 6.0]
    assert hist["novel"] == hist[f"unique_{GEN}"]  # no reference structures: novel = unique
    assert hist["sun_rate"][1] == pytest.approx(hist["sun_count"][1] / 6)
    assert mlflow_key("hypervolume") not in run.data.metrics  # one objective only
    # every key in a documented section; the headline ones in discovery/
    keys = list(run.data.metrics)
    assert {k.split("/")[0] for k in keys} <= {name for name, _ in SECTIONS}, sorted(keys)
    assert {"discovery/hits", "discovery/hits_per_call", "discovery/oracle_calls"} <= set(keys)
    assert undocumented([k for k in round_metric_names([GEN], ["mlip"], (EVERY, MODEL, PARITY))]) == []

    arts = _all_artifacts(client, rid)
    for r in (0, 1):
        d = f"rounds/round_{r:03d}"
        assert {f"{d}/candidates.csv", f"{d}/cifs/top_candidates.csv"} <= arts
        assert {f"{d}/plots/{p}.png" for p in PLOTS} <= arts
        assert any(a.startswith(f"{d}/cifs/") and a.endswith(".cif") for a in arts)
        for key in PLOTS.values():
            name = key.replace("/", "~")  # MLflow's file name for a key with a section
            assert any(a.startswith(f"images/{name}+step+{r + 1}+") and a.endswith(".png") for a in arts), (key, r)
    # the image charts open on step 0, showing the last image logged there: the latest round's
    shown = _shown_first(arts)
    assert set(shown) == {k.replace("/", "~") for k in PLOTS.values()}
    for stem, key in PLOTS.items():
        got = Path(client.download_artifacts(rid, shown[key.replace("/", "~")], str(tmp_path / "img")))
        assert _same_pixels(got, run_dir / "rounds" / "round_001" / "plots" / f"{stem}.png"), key
    assert {"config.yaml", "candidates.csv", "report/report.html", "report/report.md"} <= arts
    assert {f"report/plots/{p}.png" for p in PLOTS} <= arts
    assert any(a.startswith("report/structures/01_") and a.endswith(".png") for a in arts)
    assert "report/interactive/convex_hull.html" in arts
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
    assert "<th>ΔE at 0 K (eV/atom)</th>" in html  # routes as tables with units
    # the report links the run on the server, in the model-training view, and the link answers
    link = ui_url(url, exp.experiment_id, rid)
    assert f"href='{link}'" in html
    assert b"<html" in http_get(link.split("#")[0])
    cif = next((run_dir / "top_cifs").glob("01_*.cif")).read_text()
    assert cif.startswith("# xtalforge candidate") and "e_above_hull" in cif.splitlines()[1]


def _shown_first(artifacts: set[str]) -> dict[str, str]:
    """What each image chart shows when it opens, as MLflow 3's UI decides it: the image at step
    0 (the chart's initial step), and of several there the last in the artifact listing (sorted
    by path, so the latest timestamp). Image key (with '~' for '/') -> artifact path."""
    out: dict[str, tuple[int, str]] = {}
    for a in sorted(artifacts):
        if not a.startswith("images/") or not a.endswith(".png"):
            continue
        key, _, step, _, ts, _ = a[len("images/"):-len(".png")].split("+")
        if int(step) == 0 and int(ts) >= out.get(key, (-1, ""))[0]:
            out[key] = (int(ts), a)
    return {k: a for k, (_, a) in out.items()}


def _same_pixels(a: Path, b: Path) -> bool:
    x, y = imread(str(a))[..., :3], imread(str(b))[..., :3]
    return x.shape == y.shape and float(np.abs(x - y).max()) < 1e-6


def test_the_charts_page_opens_on_discovery_and_the_latest_round(tmp_path, mlflow_server, request):
    """What an owner sees: the run's Model metrics page in headless Chromium, in the
    model-training view, sections in order with discovery/ first, each image chart showing
    the latest round's plot."""
    import shutil

    if not any(shutil.which(n) for n in CHROMIUM_NAMES):
        pytest.skip("no headless Chromium on this machine (install Debian's `chromium` package; .ci/run does)")
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from xtalforge.loop.tracking import Tracker

    mlflow_server.wait()
    tr = Tracker(mlflow_server.url, "charts")
    rid = tr.start("charts", {"chemical_system": ["Ca", "O"], "rounds": 3}, {})
    colours = [(200, 30, 30), (30, 160, 30), (30, 30, 200)]  # one plain image per round
    for r, colour in enumerate(colours):
        png = tmp_path / f"round{r}.png"
        Image.new("RGB", (120, 90), colour).save(png)
        tr.log_metrics({"sun_count": float(r), "sun_rate": 0.1 * r, "time_round_s": 5.0, "pool_size": 9.0}, step=r)
        tr.log_image(png, "discovery/convex_hull", step=r)
    tr.finish()
    browser = Browser(1400, 1200)
    try:
        browser.goto(ui_url(mlflow_server.url, tr.experiment_id, rid).replace("?", "/model-metrics?"))
        src = browser.wait_for("(document.querySelector('img[src*=\"get-artifact\"]') || {}).src", 120)
        sections = browser.eval("[...document.querySelectorAll('[data-testid=experiment-view-compare-runs-section-header]')]"
                                ".map(h => h.textContent)")
        shot = browser.screenshot(tmp_path / "charts.png")
    finally:
        browser.close()
    # the image chart shows step 0, and there the last round's image
    assert "discovery~convex_hull%2Bstep%2B0%2B" in src, src
    client = MlflowClient(tracking_uri=mlflow_server.url)
    path = src.split("path=")[1].split("&")[0].replace("%2F", "/").replace("%2B", "+").replace("+compressed.webp", ".png")
    got = Image.open(client.download_artifacts(rid, path, str(tmp_path / "dl"))).convert("RGB")
    assert got.getpixel((60, 45)) == colours[-1]
    # sections in the order MLflow shows them, the headline first
    # (MLflow adds its own "Model metrics" section last, for keys without a prefix: there are none)
    order = [t.split("(")[0].strip() for t in sections if not t.startswith("Model metrics")]
    assert order[0] == "discovery" and order == sorted(order), order
    assert shot.stat().st_size > 10_000
