"""Resume runs the config the campaign started with, takes the lock before anything else, and
refuses an edit that alters results unless it is named."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from xtalforge.config import parse_config
from xtalforge.loop.config_guard import CHANGES_KEY, check_resume, record_config, stored_config
from xtalforge.loop.lock import RunLock, lock_holder
from xtalforge.loop.run_paths import portable_config
from xtalforge.loop.store import CampaignStore

BASE = {"name": "g", "chemical_system": ["Li", "O"], "rounds": 2, "mlip": {"fmax": 0.1, "workers": 1}}


def _dump(**over) -> dict:
    data = json.loads(json.dumps(BASE))
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_config(data).model_dump(mode="json")


def test_an_edit_that_alters_results_is_refused_unless_named():
    stored = _dump()
    fmax = _dump(mlip={"fmax": 0.05})
    [line] = check_resume(stored, fmax)
    assert "mlip.fmax" in line and "0.1" in line and "0.05" in line and "--allow-config-change" in line
    assert check_resume(stored, fmax, allow=["mlip.fmax"]) == []
    assert check_resume(stored, fmax, allow=["mlip"]) == []  # a whole section
    acq = _dump(acquisition={"kind": "ucb"})
    assert check_resume(stored, acq) and check_resume(stored, acq, allow=["acquisition"]) == []


def test_how_a_campaign_runs_may_change_but_not_its_chemical_system():
    stored = _dump()
    assert check_resume(stored, _dump(rounds=5, mlip={"workers": 2, "timeout_s": 60.0})) == []
    moved = _dump(chemical_system=["Na", "O"])
    [line] = check_resume(stored, moved, allow=["chemical_system"])
    assert "chemical_system" in line and "new campaign" in line
    assert check_resume(None, moved) == []  # a campaign from before configs were stored


def test_changes_let_through_are_recorded(tmp_path):
    st = CampaignStore(f"sqlite:///{tmp_path / 'store.db'}")
    assert record_config(st, _dump()) == {}
    changes = record_config(st, _dump(mlip={"fmax": 0.05}), round=1)
    assert [k.endswith("fmax") for k in changes] == [True]
    assert stored_config(st) == _dump(mlip={"fmax": 0.05})
    [entry] = json.loads(st.get(CHANGES_KEY))
    assert entry["from_round"] == 1 and list(entry["changes"].values()) == [[0.1, 0.05]]
    st.close()


def _run_folder(tmp_path: Path) -> Path:
    """A campaign folder as `xtalforge run` leaves it before its first round: config.yaml and a
    store holding the config it started with."""
    cfg = parse_config({**BASE, "output_dir": str(tmp_path), "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    run = tmp_path / "g"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    st = CampaignStore(f"sqlite:///{run / 'store.db'}")
    record_config(st, portable_config(cfg.model_dump(mode="json"), run))
    st.close()
    return run


def test_an_unedited_config_passes_even_after_the_runs_folder_moved(tmp_path):
    (tmp_path / "a").mkdir()
    run = _run_folder(tmp_path / "a")
    moved = tmp_path / "b"
    run.parent.rename(moved)
    from xtalforge.cli.main import _run_config

    cfg = _run_config(moved / "g")
    st = CampaignStore(f"sqlite:///{moved / 'g' / 'store.db'}")
    assert check_resume(stored_config(st), portable_config(cfg.model_dump(mode="json"), moved / "g")) == []
    st.close()


def _resume(run: Path, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xtalforge.cli.main", "resume", str(run), "--no-progress", *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_resume_after_changing_the_chemical_system_refuses_at_once(tmp_path):
    run = _run_folder(tmp_path)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("- Li\n", "- Na\n"))
    t0 = time.monotonic()
    proc = _resume(run)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "chemical_system" in lines[0], proc.stderr[-2000:]
    assert "resuming" not in proc.stdout
    assert time.monotonic() - t0 < 60  # nothing started: no Ray, no model
    assert not (tmp_path / "mlflow.db").exists()


def test_a_second_resume_refuses_before_opening_the_store(tmp_path):
    run = _run_folder(tmp_path)
    for p in run.glob("store.db-*"):  # no WAL files: the store is closed
        p.unlink()
    before = (run / "store.db").stat().st_mtime_ns
    with RunLock(run):  # a campaign is running
        assert lock_holder(run) is not None
        proc = _resume(run)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "already running" in lines[0], proc.stderr[-2000:]
    assert "resuming" not in proc.stdout
    assert (run / "store.db").stat().st_mtime_ns == before and not list(run.glob("store.db-*"))
    assert lock_holder(run) is None
