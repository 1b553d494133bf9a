"""A run folder (with the runs/ folder that holds its tracking store) can be moved or copied:
config.yaml names files relative to it, and `xtalforge ui` opens the copy's store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from xtalforge.config import load_config, parse_config
from xtalforge.loop.run_paths import portable_config, resolved_config
from xtalforge.loop.store import CampaignStore
from xtalforge.loop.tracking import Tracker, ui_target


def test_paths_inside_the_runs_folder_are_written_relative_and_read_back_absolute(tmp_path):
    runs = tmp_path / "runs"
    run = runs / "c"
    run.mkdir(parents=True)
    (runs / "refs.json").write_text("[]")
    elsewhere = tmp_path / "data" / "known.cif"
    cfg = {"tracking": {"uri": f"sqlite:///{runs / 'mlflow.db'}"}, "hull": {"references": [str(runs / "refs.json")]},
           "reference_structures": [str(elsewhere)], "synthesis": {"model": None}}
    out = portable_config(cfg, run)
    assert out["tracking"]["uri"] == "sqlite:///../mlflow.db"
    assert out["hull"]["references"] == ["../refs.json"]
    assert out["reference_structures"] == [str(elsewhere)]  # outside the runs folder: absolute
    back = resolved_config(out, run)
    assert back["tracking"]["uri"] == f"sqlite:///{(runs / 'mlflow.db').resolve()}"
    assert back["hull"]["references"] == [str((runs / "refs.json").resolve())]


def _campaign(tmp_path: Path) -> Path:
    """A run folder as a campaign writes it, with a real MLflow run and an artifact."""
    runs = tmp_path / "orig" / "runs"
    run = runs / "c"
    run.mkdir(parents=True)
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    cfg = parse_config({"name": "c", "chemical_system": ["Li", "O"], "output_dir": str(runs),
                        "tracking": {"uri": uri, "experiment": "moved"}})
    (run / "config.yaml").write_text(yaml.safe_dump(portable_config(cfg.model_dump(mode="json"), run)))
    tr = Tracker(uri, "moved", artifact_root=runs / "mlartifacts")
    run_id = tr.start("c", {}, {})
    (run / "note.txt").write_text("x")
    tr.log_artifact(run / "note.txt")
    tr.finish()
    st = CampaignStore(f"sqlite:///{run / 'store.db'}")
    st.put("mlflow_run_id", run_id)
    st.close()
    return run


def test_ui_on_a_copied_runs_folder_opens_the_copy(tmp_path):
    run = _campaign(tmp_path)
    copy = tmp_path / "copy" / "runs"
    shutil.copytree(run.parent, copy)
    uri, root = ui_target(copy / "c")
    assert uri == f"sqlite:///{(copy / 'mlflow.db').resolve()}"
    assert root == (copy / "mlartifacts").resolve().as_uri()
    assert load_config(copy / "c" / "config.yaml", relative_to=copy / "c").tracking.uri == uri


def test_ui_on_a_run_folder_copied_alone_does_not_open_the_original(tmp_path):
    run = _campaign(tmp_path)
    alone = tmp_path / "alone" / "c"
    shutil.copytree(run, alone)
    with pytest.raises(FileNotFoundError, match="tracking store"):
        ui_target(alone)
