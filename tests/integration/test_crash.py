"""kill -9 a running campaign at different points; `xtalforge resume` must finish it with
nothing finished lost, nothing finished recomputed, and no MLflow step logged twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from xtalforge.loop.store import CampaignStore
from xtalforge.loop.tracking import mlflow_key

ROUNDS, BATCH = 2, 2


def _config(tmp_path: Path, name: str) -> Path:
    cfg = dict(
        name=name,
        chemical_system=["Ca", "Ti", "O"],
        max_atoms=5,
        rounds=ROUNDS,
        proposals_per_round=10,
        acquisition={"batch_size": BATCH},
        mlip={"workers": 2, "max_steps": 60},
        ray={"num_cpus": 2},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "crash"},
        output_dir=str(tmp_path / "runs"),
    )
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "xtalforge.cli.main", *args]


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    # its own session, so kill -9 of the group takes the Ray processes it started too
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill9(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=60)


def _query(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return int(c.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _wait(pred, proc: subprocess.Popen, timeout: float = 240) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# when to pull the plug: the moment a stage's first trace lands in the store
KILL_POINTS = {
    "mid_generation": "SELECT COUNT(*) FROM candidates",
    "mid_relaxation": "SELECT COUNT(*) FROM measurements",
    "mid_write": "SELECT COUNT(*) FROM rounds WHERE stage='updated'",
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill9_then_resume(point, tmp_path):
    cfg = _config(tmp_path, point)
    run_dir = tmp_path / "runs" / point
    db = run_dir / "store.db"
    proc = _spawn(_cli("run", str(cfg), "--no-progress"), tmp_path / "run.log")
    killed = _wait(lambda: _query(db, KILL_POINTS[point]) > 0, proc)
    _kill9(proc)
    assert killed, (tmp_path / "run.log").read_text()[-3000:]

    st = CampaignStore(f"sqlite:///{db}")
    before = {m.candidate_id: m for m in st.measurements()}
    st.close()

    res = subprocess.run(_cli("resume", str(run_dir), "--no-progress"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]

    st = CampaignStore(f"sqlite:///{db}")
    after = {m.candidate_id: m for m in st.measurements()}
    assert st.integrity_problems() == []
    assert set(st.stages().values()) == {"done"} and len(st.stages()) == ROUNDS
    assert len(after) == ROUNDS * BATCH
    for cid, m in before.items():  # nothing lost, nothing rewritten
        assert after[cid].at == m.at and after[cid].values == m.values
    # nothing recomputed: no candidate was submitted again once its result was committed
    for ev in st.events("submit"):
        if ev["candidate_id"] in after:
            assert ev["at"] <= after[ev["candidate_id"]].at
    submits = [ev["candidate_id"] for ev in st.events("submit")]
    assert not [c for c in before if submits.count(c) > 1]
    run_id = st.get("mlflow_run_id")
    st.close()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    for key in ("best_e_above_hull", "sun_count", "evaluations_mlip"):
        steps = [m.step for m in client.get_metric_history(run_id, mlflow_key(key))]
        assert sorted(steps) == list(range(1, ROUNDS + 1)), (key, steps)  # rounds from 1


def test_second_resume_is_refused_and_campaigns_do_not_share(tmp_path):
    cfg = _config(tmp_path, "twin")
    proc = _spawn(_cli("run", str(cfg), "--no-progress"), tmp_path / "a.log")
    try:
        run_dir = tmp_path / "runs" / "twin"
        assert _wait(lambda: _query(run_dir / "store.db", "SELECT COUNT(*) FROM kv WHERE key='mlflow_run_id'") > 0,
                     proc), (tmp_path / "a.log").read_text()[-3000:]
        res = subprocess.run(_cli("resume", str(run_dir), "--no-progress"), capture_output=True, text=True, timeout=120)
        assert res.returncode == 1
        assert "already running" in res.stderr
        # a second campaign of the same name gets its own folder, store and MLflow run
        res2 = subprocess.run(_cli("run", str(cfg), "--no-progress", "--stop-after", "0"),
                              capture_output=True, text=True, timeout=300)
        assert res2.returncode == 0, res2.stderr[-3000:]
        others = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("twin-")]
        assert len(others) == 1
        a = CampaignStore(f"sqlite:///{run_dir / 'store.db'}")
        b = CampaignStore(f"sqlite:///{others[0] / 'store.db'}")
        assert a.get("mlflow_run_id") != b.get("mlflow_run_id")
        a.close()
        b.close()
    finally:
        _kill9(proc)
