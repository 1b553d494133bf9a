"""A tiny campaign with the simulated lab: requests go out, the campaign stops, the answers
arrive (over HTTP and as a file), the campaign resumes and uses them. Nothing is lost and
nothing is applied twice."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tests.oracles.test_lab_validation import body, good_row, make_lab_run
from xtalforge.config import parse_config
from xtalforge.loop.campaign import Campaign
from xtalforge.loop.store import CampaignStore
from xtalforge.oracles.lab.oracle import LabOracle, export_dir, inbox_dir
from xtalforge.oracles.lab.api import ServerThread, create_app
from xtalforge.oracles.lab.intake import issue_token
from xtalforge.types import Status

ROOT = Path(__file__).resolve().parents[2]
LAB = {
    "name": "lab",
    "requests_per_round": 1,
    "trains": "e_above_hull",
    "quantities": [
        {"name": "band_gap", "unit": "eV", "kind": "float", "min": 0, "max": 20},
        {"name": "made", "kind": "bool"},
        {"name": "lattice_a", "unit": "Å", "kind": "float", "min": 1, "max": 60},
        {"name": "e_above_hull", "unit": "eV/atom", "kind": "float", "min": -1, "max": 10},
    ],
}


def simulated_lab_module():
    spec = importlib.util.spec_from_file_location("simulated_lab", ROOT / "examples" / "simulated_lab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_lab_config(tmp_path: Path):
    return parse_config(dict(
        name="tinylab", chemical_system=["Ca", "Ti", "O"], max_atoms=5, rounds=2, proposals_per_round=12,
        acquisition={"batch_size": 2}, mlip={"workers": 2, "max_steps": 60},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tests"},
        output_dir=str(tmp_path / "runs"), lab=LAB,
    ))


def test_lab_answers_across_stop_and_resume(tmp_path, ray_local):
    sim_mod = simulated_lab_module()
    cfg = tiny_lab_config(tmp_path)
    camp = Campaign.create(cfg, progress=False)
    run_dir = camp.run_dir
    camp.run(stop_after=1)

    store = CampaignStore(f"sqlite:///{run_dir / 'store.db'}")
    [req0] = store.lab_requests("lab")
    first = req0["candidate_id"]
    # round 0 sent its most promising MLIP result to the lab and did not wait for it
    assert req0["round"] == 0 and not req0["answered"]
    mlip0 = {m.candidate_id: m for m in store.measurements(oracle="mlip")}
    assert mlip0[first].status == Status.ok
    assert store.selected("lab", round=0) == [first]
    assert (export_dir(cfg.lab, run_dir) / f"{first}.json").is_file()

    # while the campaign is stopped, the lab answers over HTTP (a real uvicorn on loopback),
    # then resends the same answer twice: once by POST, once as a file in the inbox
    token = issue_token(store)
    lab = sim_mod.SimulatedLab(delay_s=0.0)
    inbox = inbox_dir(run_dir)
    with ServerThread(create_app(store, "lab")) as srv:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            assert lab.answer_http(c) == 1 and lab.rejections == []
            answer = lab.measure(req0)
            resent = c.post("/results", json={"results": [answer]})
            assert resent.status_code == 422 and "results are final" in resent.json()["errors"][0]["message"]
            (inbox / "emailed.json").write_text(json.dumps({"results": [answer]}))
            (inbox / "emailed.json.done").touch()  # complete: no wait for the inbox's quiet period

            # resume with the server still up: two writers on one store
            Campaign.open(run_dir, progress=False).run()
            # the round-1 request is visible to the lab over HTTP at once
            open_now = [r["candidate_id"] for r in c.get("/requests").json()["requests"]]

    assert store.stages() == {0: "done", 1: "done"}
    [m0] = store.measurements(oracle="lab")
    assert m0.candidate_id == first and m0.fidelity == 2 and m0.round == 0
    assert m0.values == {k: float(v) for k, v in answer["values"].items()}
    assert (inbox / "rejected" / "emailed.json").is_file()
    assert "already has a result" in (inbox / "rejected" / "emailed.json.errors.txt").read_text()
    reqs = store.lab_requests("lab")
    assert [r["round"] for r in reqs] == [0, 1] and reqs[1]["candidate_id"] != first
    assert open_now == [reqs[1]["candidate_id"]]
    metrics = store.round_metrics()
    assert metrics[1]["lab_results_new"] == 1.0 and metrics[1]["lab_requests_open"] == 1.0
    assert len(store.measurements(oracle="mlip")) == 4  # the MLIP side resumed as before

    # the round-1 request is answered by a file while no campaign runs; the oracle takes it in
    assert lab.answer_inbox(export_dir(cfg.lab, run_dir), inbox) == 1
    oracle = LabOracle(cfg.lab, store, run_dir)
    got = oracle.collect()
    assert sorted(m.candidate_id for m in got) == sorted(r["candidate_id"] for r in reqs)
    assert oracle.pending() == []
    assert len(list((inbox / "processed").glob("simlab-*.json"))) == 1
    lab_ms = store.measurements(oracle="lab")
    assert len(lab_ms) == 2 and len({m.candidate_id for m in lab_ms}) == 2
    audit = store.lab_submissions("lab")
    assert [s["source"] for s in audit if s["accepted"]] == ["http", "inbox"]
    assert sum(not s["accepted"] for s in audit) == 2  # the POST resend and the emailed file
    assert store.integrity_problems() == []
    store.close()

    # lab values train the surrogate at the high fidelity, beside the MLIP's (multi-fidelity)
    again = Campaign.open(run_dir, progress=False)
    try:
        results = again.load()
        lab_oracle = LabOracle(again.cfg.lab, again.store, run_dir)
        for m in lab_oracle.collect():
            results.record(m)
        feats = again.store.features([c.id for c in again.store.candidates()])
        d = again.selector.training_data(feats, [lab_oracle])["e_above_hull"]
        rows = list(zip(d.ids, d.y, d.fidelity if d.fidelity is not None else [1] * len(d.ids)))
        for m in lab_ms:
            assert (m.candidate_id, m.values["e_above_hull"], 2) in [(i, float(v), int(f)) for i, v, f in rows]
        e_hull = results.e_above_hull()
        mlip_rows = [(i, v) for i, v, f in rows if f == 1]
        assert mlip_rows and np.allclose([v for _, v in mlip_rows], [e_hull[i] for i, _ in mlip_rows])
    finally:
        again.store.close()


def test_a_round_waits_for_the_lab_only_when_told_and_only_so_long(tmp_path):
    (tmp_path / "cands").mkdir()
    _c, scratch, _r, cands, _l = make_lab_run(tmp_path / "cands", n_requested=0)
    scratch.close()
    waits = []
    for wait in (False, True):
        cfg = parse_config({**tiny_lab_config(tmp_path).model_dump(), "name": f"wait{int(wait)}",
                            "lab": {**LAB, "wait": wait, "wait_timeout_s": 4.0}})
        camp = Campaign.create(cfg, progress=False)
        try:
            camp.load()
            camp.oracles = [LabOracle(camp.cfg.lab, camp.store, camp.run_dir)]
            camp.store.add_candidates(cands[:2])
            camp.store.add_selection(0, "lab", [(cands[0].id, 0.0)])  # round 0 picked one for the lab
            t0 = time.monotonic()
            out = camp._confirm(0)
            waits.append(time.monotonic() - t0)
            assert out["lab_requests_new"] == 1.0 and out["lab_requests_open"] == 1.0
            assert ("time_lab_wait_s" in out) == wait
            if wait:  # answered while the round waits: it stops waiting and has the result
                camp.store.add_selection(1, "lab", [(cands[1].id, 0.0)])
                inbox = inbox_dir(camp.run_dir)
                row = good_row(cands[1].id)
                row["values"]["e_above_hull"] = 0.02

                def drop() -> None:  # written whole, then renamed: never read half-written
                    (inbox / ".a.json.tmp").write_text(body(row))
                    os.replace(inbox / ".a.json.tmp", inbox / "a.json")
                    (inbox / "a.json.done").touch()

                lab_answers = threading.Timer(0.3, drop)
                lab_answers.start()
                t0 = time.monotonic()
                out = camp._confirm(1)
                lab_answers.join()
                # polled once a second: back within about a second of the answer, not at the timeout
                assert time.monotonic() - t0 < 3.5 and out["lab_results_waited"] == 1.0
                assert camp.store.measured_ids("lab") == {cands[1].id}
        finally:
            camp.store.close()
    assert waits[0] < 1.0 and 3.9 < waits[1] < 8.0  # no wait; then the whole timeout, no more
