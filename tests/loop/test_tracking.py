"""The metric contract, the numbers behind it, the MLflow run and `xtalforge ui` on a real store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from pymatgen.core import Structure

from xtalforge.config import parse_config
from xtalforge.loop import metrics as M
from xtalforge.loop.store import CampaignStore
from xtalforge.loop.tracking import (
    EVERY,
    MODEL,
    ROUND_METRICS,
    Tracker,
    metrics_markdown,
    round_metric_names,
    ui_command,
    ui_page,
    undocumented,
    ui_target,
)
from xtalforge.types import Candidate

from ..servers import free_port, http_get, stop_process_group, wait_healthy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


# -- the contract ---------------------------------------------------------------------------
def test_docs_table_is_rendered_from_round_metrics():
    assert metrics_markdown() in DOCS.read_text(), "docs/metrics.md is stale: paste tracking.metrics_markdown()"
    names = [s.name for s in ROUND_METRICS]
    assert len(names) == len(set(names))
    for required in ("sun_count", "sun_rate", "best_e_above_hull", "hypervolume", "oracle_utilization",
                     "novel_{gen}", "evaluations_{oracle}", "time_oracle_s", "surrogate_mae_last_round"):
        assert required in names


def test_round_metric_names_expand_per_generator_and_oracle():
    names = round_metric_names(["random_symmetric", "wyckoff"], ["mlip", "lab"])
    for n in ("novel_random_symmetric", "novel_wyckoff", "proposals_wyckoff", "evaluations_lab",
              "failed_mlip", "time_generate_s", "sun_count"):
        assert n in names
    assert not any("{" in n for n in names)
    assert undocumented(names + ["acq_weight_ucb", "gen_wyckoff_reward_mean", "made_up"]) == ["made_up"]
    assert "surrogate_nll" not in names and "surrogate_nll" in round_metric_names([], [], (EVERY, MODEL))


# -- the numbers ----------------------------------------------------------------------------
def test_pareto_and_hypervolume_on_a_hand_worked_front():
    pts = np.array([[0.0, 3.0], [1.0, 1.0], [2.0, 0.0], [2.0, 2.0], [1.5, 1.5]])
    assert M.pareto_mask(pts).tolist() == [True, True, True, False, False]
    # staircase under ref (3, 4): (3-0)*(4-3) + (3-1)*(3-1) + (3-2)*(1-0) = 3 + 4 + 1
    assert M.hypervolume_2d(pts, (3.0, 4.0)) == pytest.approx(8.0)
    assert M.hypervolume_2d(np.array([[5.0, 5.0]]), (3.0, 4.0)) == 0.0


def test_hypervolume_in_three_objectives_and_reference_points():
    cube = np.array([[0.0, 0.0, 0.0]])
    assert M.hypervolume(cube, (1.0, 2.0, 3.0)) == pytest.approx(6.0)
    # boxes 1x2x1 and 1x1x2 under (1, 2, 2), overlapping in a 1x1x1 cube
    two = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert M.hypervolume(two, (1.0, 2.0, 2.0)) == pytest.approx(2 + 2 - 1)
    vals = np.array([[0.1, 0.9, 5.0], [0.3, 0.2, 7.0]])
    ref = M.reference_point(["e_above_hull", "p_synth", "bulk_modulus"], [True, False, False], vals)
    assert ref.tolist() == [0.5, -0.0, -5.0]  # minimized frame: maximized objectives negated


def test_novelty_against_reference_cifs(test_cifs):
    from xtalforge.references.novelty import KnownStructures

    folder = test_cifs / "pymatgen_test_structures"
    index = KnownStructures([("sto", Structure.from_file(folder / "SrTiO3.cif")),
                             ("tio2", Structure.from_file(folder / "TiO2.cif"))])
    sup = Structure.from_file(folder / "SrTiO3.cif")
    sup.make_supercell([2, 1, 1])
    known = Candidate(sup, source="g", round=0)  # the same crystal in a doubled cell
    other = Candidate(Structure.from_file(folder / "Li2O.cif"), source="g", round=0)
    assert index.match(known.structure) == "sto" and index.match(other.structure) == ""
    novel = {c.id for c in (known, other) if not index.match(c.structure)}
    assert M.hit_ids({known.id: -0.1, other.id: 0.0}, novel, 0.0) == [other.id]


def test_predictions_survive_a_new_campaign_object(tmp_path):
    from xtalforge.loop.campaign import Campaign

    cfg = parse_config({"name": "p", "chemical_system": ["Li", "O"], "output_dir": str(tmp_path)})
    run = tmp_path / "p"
    run.mkdir()
    a = Campaign(cfg, run, progress=False)
    ra = a.load()
    ra.predicted.update({"x1": (0.12, 0.05), "x2": (-0.01, 0.2)})
    ra.save_predictions(1)
    ra.predicted["x3"] = (0.3, 0.1)
    ra.save_predictions(2)
    a.store.close()
    b = Campaign(cfg, run, progress=False)
    assert b.load().predictions() == {"x1": (0.12, 0.05, 1), "x2": (-0.01, 0.2, 1), "x3": (0.3, 0.1, 2)}
    b.store.close()


# -- MLflow ---------------------------------------------------------------------------------
def _campaign_folder(tmp_path: Path) -> tuple[Path, str, Tracker]:
    """A run folder as a campaign leaves it (config, store with the run id) and a real run with
    a metric, an artifact and an image, on a local SQLite tracking store."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = parse_config({"name": "ui", "chemical_system": ["Li", "O"], "output_dir": str(tmp_path / "runs"),
                        "tracking": {"uri": uri, "experiment": "ui-test"}})
    run = tmp_path / "runs" / "ui"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
    tr = Tracker(uri, "ui-test", artifact_root=run.parent / "mlartifacts")
    run_id = tr.start("ui", cfg.tracking_params(), {"chemical_system": cfg.chemsys, "git_commit": "abc"})
    st = CampaignStore(f"sqlite:///{run / 'store.db'}")
    st.put("mlflow_run_id", run_id)
    st.close()
    (run / "note.txt").write_text("hello from the campaign\n")
    tr.log_artifact(run / "note.txt", "rounds/round_000")
    tr.log_metrics({"sun_count": 2.0, "bad": float("nan")}, step=0)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(run / "p.png")
    tr.log_image(run / "p.png", key="discovery_curve", step=0)
    tr.set_description("**Li-O**: 2 hits")
    return run, run_id, tr


def test_tracker_run_tags_params_resume_and_images(tmp_path):
    run, run_id, tr = _campaign_folder(tmp_path)
    client = MlflowClient(tracking_uri=tr.uri)
    got = client.get_run(run_id)
    assert got.data.tags["chemical_system"] == "Li-O"
    assert got.data.tags["mlflow.source.git.commit"] == "abc"
    assert got.data.tags["mlflow.note.content"] == "**Li-O**: 2 hits"
    # a few headline params (MLflow prints them above every image chart); the config in tags
    assert got.data.params["chemical_system"] == "Li-O" and got.data.params["rounds"] == "3"
    assert len(got.data.params) <= 6 and "kind=mlip" in got.data.tags["config.mlip"]
    assert got.data.metrics == {"discovery/hits": 2.0}  # NaN is not logged; sectioned key
    # the artifacts sit beside the run folders, where `xtalforge ui` serves them from
    assert got.info.artifact_uri.startswith((run.parent / "mlartifacts").resolve().as_uri())
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    # at the round's step (1) and at step 0, where MLflow's image chart opens
    for step in (0, 1):
        assert any(p.startswith(f"images/discovery_curve+step+{step}+") and p.endswith(".png") for p in images)
    exp = client.get_experiment(tr.experiment_id)
    assert "discovery/" in exp.tags["mlflow.note.content"]
    # a resumed campaign continues the same run
    tr2 = Tracker(tr.uri, "ui-test", artifact_root=run.parent / "mlartifacts")
    assert tr2.start("ui", {}, {}, run_id=run_id) == run_id
    tr2.log_metrics({"sun_count": 3.0}, step=1)
    tr2.finish()
    # steps are rounds as people count them; the tracker reads them back 0-based for the loop
    assert [m.step for m in client.get_metric_history(run_id, "discovery/hits")] == [1, 2]
    assert tr2.logged_steps("sun_count") == {0, 1}
    assert len(client.search_runs([tr.experiment_id])) == 1
    # `xtalforge ui` opens the run in MLflow's model-training view, not the GenAI one
    assert ui_page("http://127.0.0.1:5000", tr.uri, run) == (
        f"http://127.0.0.1:5000/#/experiments/{tr.experiment_id}/runs/{run_id}?workflowType=machine_learning")
    assert ui_page("http://h:1", tr.uri, None) == "http://h:1/#/?workflowType=machine_learning"


def test_xtalforge_ui_points_at_a_remote_server_instead_of_starting_one(tmp_path, capsys):
    from xtalforge.cli.main import main

    assert main(["ui", "--tracking-uri", "http://127.0.0.1:9"]) == 0
    assert "http://127.0.0.1:9" in capsys.readouterr().out
    assert main(["ui", str(tmp_path / "nothing-here")]) == 1


def test_xtalforge_ui_serves_the_campaign_and_its_artifacts(tmp_path):
    run, run_id, tr = _campaign_folder(tmp_path)
    uri, root = ui_target(run)
    assert uri == tr.uri and root == (run.parent / "mlartifacts").resolve().as_uri()
    assert ui_target(run, "http://127.0.0.1:1") == ("http://127.0.0.1:1", None)
    port = free_port()
    cmd = ui_command(uri, "127.0.0.1", port, root)
    assert cmd[cmd.index("--default-artifact-root") + 1] == root
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base, 90, "mlflow ui")  # a fresh MLflow server takes ~15 s on 2 cores
        listing = json.loads(http_get(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}&path=rounds/round_000"))
        assert [f["path"] for f in listing["files"]] == ["rounds/round_000/note.txt"]
        body = http_get(f"{base}/get-artifact?path=rounds/round_000/note.txt&run_uuid={run_id}")
        assert body == b"hello from the campaign\n"
        runs = json.loads(http_get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}"))
        assert runs["run"]["data"]["metrics"][0]["key"] == "discovery/hits"
    finally:
        stop_process_group(proc)
