"""The lab oracle's request files, inbox and CLI, on a real store and real folders."""

from __future__ import annotations

import csv
import json
import os
import threading
import time

import yaml

from tests.oracles.test_lab_validation import QUANTITIES, body, good_row, make_lab_run
from xtalforge.cli.main import main
from xtalforge.config import parse_config
from xtalforge.loop.selector import most_promising
from xtalforge.oracles.lab.intake import TOKEN_KEY, submit_results, token_ok
from xtalforge.types import Measurement, Status


def test_requests_are_stored_once_and_exported_as_files(tmp_path):
    _cfg, store, _run, cands, lab = make_lab_run(tmp_path, n_requested=2)
    lab.submit(cands[:3], round=1)
    assert lab.last_new == 1  # the first two were already asked
    reqs = store.lab_requests("lab")
    assert [r["candidate_id"] for r in reqs] == [c.id for c in cands[:3]]
    assert [r["round"] for r in reqs] == [0, 0, 1]
    out = lab.export_dir
    assert out == tmp_path / "run" / "lab" / "requests"
    meta = json.loads((out / f"{cands[0].id}.json").read_text())
    assert meta["formula"] == "NaCl" and meta["status"] == "open"
    assert [q["name"] for q in meta["quantities"]] == ["band_gap", "made", "lattice_a"]
    assert "data_" in (out / meta["cif_file"]).read_text()
    with open(out / "results_template.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["candidate_id", "band_gap", "made", "lattice_a", "status", "error"]
    assert [r[0] for r in rows[1:]] == [c.id for c in cands[:3]]
    assert json.loads((out / "results.schema.json").read_text())["required"] == ["results"]
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries behind


def test_inbox_files_are_processed_or_rejected_with_reasons(tmp_path):
    _cfg, store, run, cands, lab = make_lab_run(tmp_path)
    a, b = cands[0].id, cands[1].id
    inbox = run / "lab" / "inbox"
    (inbox / "01-good.json").write_text(body(good_row(a)))
    (inbox / "02-bad.csv").write_text(f"candidate_id,band_gap,made,lattice_a\n{b},-1,yes,5\n")
    (inbox / "03-dup.json").write_text(body(good_row(a, gap=3.0)))
    (inbox / ".04-partial.json.tmp").write_text("{")  # still being written: left alone
    (inbox / "notes.txt").write_text("not a results file")
    for p in inbox.iterdir():  # written a minute ago: complete by the inbox's rule (quiet for 2 s)
        os.utime(p, (time.time() - 60,) * 2)
    new = lab.collect()
    assert [m.candidate_id for m in new] == [a] and new[0].values["band_gap"] == 1.5
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["01-good.json"]
    rejected = sorted(p.name for p in (inbox / "rejected").iterdir())
    assert rejected == ["02-bad.csv", "02-bad.csv.errors.txt", "03-dup.json", "03-dup.json.errors.txt"]
    assert (inbox / "rejected" / "02-bad.csv.errors.txt").read_text() == \
        f"row 1 ({b}): band_gap: -1 eV is below the minimum 0 eV\n"
    assert "already has a result" in (inbox / "rejected" / "03-dup.json.errors.txt").read_text()
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [".04-partial.json.tmp", "notes.txt"]
    assert lab.collect() == []  # nothing new: nothing applied twice
    assert [m.candidate_id for m in store.measurements(oracle="lab")] == [a]
    # the open-request index no longer lists what was answered
    with open(lab.export_dir / "requests.csv") as fh:
        assert a not in fh.read()


def test_a_file_committed_before_a_crash_is_moved_not_reapplied(tmp_path):
    _cfg, store, run, cands, lab = make_lab_run(tmp_path)
    doc = body(good_row(cands[0].id))
    # the campaign committed this file, then died before moving it out of the inbox
    assert submit_results(store, "lab", doc, "json", "inbox", "results.json").accepted
    (run / "lab" / "inbox" / "results.json").write_text(doc)
    os.utime(run / "lab" / "inbox" / "results.json", (time.time() - 60,) * 2)
    lab.collect()
    assert (run / "lab" / "inbox" / "processed" / "results.json").is_file()
    assert not (run / "lab" / "inbox" / "rejected").joinpath("results.json").exists()
    assert len(store.measurements(oracle="lab")) == 1
    assert [s["accepted"] for s in store.lab_submissions("lab")] == [True]


def test_wait_for_returns_when_the_lab_answers(tmp_path):
    _cfg, store, run, cands, lab = make_lab_run(tmp_path, n_requested=2)
    ids = [c.id for c in cands[:2]]
    inbox = run / "lab" / "inbox"

    def lab_answers_later() -> None:
        time.sleep(0.3)
        tmp = inbox / ".answer.json.tmp"
        tmp.write_text(body(good_row(ids[0]), good_row(ids[1], 2.5)))
        os.replace(tmp, inbox / "answer.json")
        (inbox / "answer.json.done").touch()  # complete: taken at once

    t0 = time.monotonic()
    th = threading.Thread(target=lab_answers_later)
    th.start()
    got = lab.wait_for(ids, timeout_s=20)
    th.join()
    assert sorted(m.candidate_id for m in got) == sorted(ids)
    assert time.monotonic() - t0 < 10 and lab.pending() == []
    # nothing arrives: the wait ends at its timeout, not later
    lab.submit(cands[2:3], round=1)
    t0 = time.monotonic()
    assert lab.wait_for([cands[2].id], timeout_s=0.3) == []
    assert 0.25 < time.monotonic() - t0 < 3


def test_a_confirming_oracle_gets_the_best_unsent_screened_results():
    ms = {cid: Measurement(cid, "mlip", 1, values={"e_above_hull": e}) for cid, e in
          [("a", 0.3), ("b", 0.0), ("c", 0.1), ("d", 0.05)]}
    ms["d"].status = Status.failed
    assert most_promising(ms, {"a": 0.3, "b": 0.0, "c": 0.1}, exclude={"b"}, n=2) == [("c", -0.1), ("a", -0.3)]
    assert most_promising(ms, {"a": 0.3}, exclude=set(), n=0) == []


def _cli_run(tmp_path):
    _cfg, store, run, cands, lab = make_lab_run(tmp_path)
    cfg = parse_config({"name": "t", "chemical_system": ["Na", "Cl"], "lab": {"quantities": QUANTITIES}})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return store, run, cands


def test_cli_token_submit_and_requests(tmp_path, capsys):
    store, run, cands = _cli_run(tmp_path)
    assert main(["lab", "token", str(run)]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40 and token_ok(store, token) and not token_ok(store, token + "x")
    assert token not in store.get(TOKEN_KEY)  # only a hash is kept

    bad = tmp_path / "bad.csv"
    bad.write_text(f"candidate_id,band_gap,made,lattice_a\n{cands[0].id},nan,yes,5\nzzz,1,no,5\n")
    assert main(["lab", "submit", str(run), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "rejected: 2 problem(s); nothing was applied" in err
    assert "row 1" in err and "NaN and infinity are refused" in err and "row 2 (zzz): unknown candidate id" in err

    good = tmp_path / "good.json"
    good.write_text(body(good_row(cands[0].id)))
    assert main(["lab", "submit", str(run), str(good)]) == 0
    assert "accepted: 1 result(s) stored" in capsys.readouterr().out
    assert main(["lab", "submit", str(run), str(good)]) == 1  # the same file again: a duplicate
    assert "already has a result" in capsys.readouterr().err
    assert len(store.measurements(oracle="lab")) == 1

    assert main(["lab", "requests", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 open request(s) to lab 'lab'") and cands[0].id not in out
    assert main(["lab", "requests", str(run), "--all"]) == 0
    assert "answered" in capsys.readouterr().out


def test_cli_refuses_a_run_without_a_lab(tmp_path, capsys):
    store, run, _ = _cli_run(tmp_path)
    cfg = parse_config({"name": "t", "chemical_system": ["Na", "Cl"]})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
    assert main(["lab", "token", str(run)]) == 1
    assert "has no lab" in capsys.readouterr().err
    assert store.get(TOKEN_KEY) is None
