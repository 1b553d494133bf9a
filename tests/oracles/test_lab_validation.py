"""Lab results: the one validation path, all or nothing, on a real campaign store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from xtalforge.config import ConfigError, LabConfig, parse_config
from xtalforge.loop.store import CampaignStore
from xtalforge.oracles.lab.oracle import LabOracle
from xtalforge.oracles.lab.intake import submit_results
from xtalforge.oracles.lab.validation import QuantitySpec, rows_from_csv, validate
from xtalforge.types import Candidate, Status

QUANTITIES = [
    {"name": "band_gap", "unit": "eV", "kind": "float", "min": 0, "max": 20},
    {"name": "made", "kind": "bool"},
    {"name": "lattice_a", "unit": "Å", "kind": "float", "min": 1, "max": 60},
]


def cscl_type(a: str, b: str, lat: float) -> Structure:
    return Structure(Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def make_lab_run(tmp_path: Path, n_requested: int = 3, **lab_over):
    """A run folder with a store holding four real candidates, `n_requested` of them sent to
    the lab. Returns (LabConfig, store, run_dir, candidates, LabOracle)."""
    run = tmp_path / "run"
    run.mkdir()
    store = CampaignStore(f"sqlite:///{run / 'store.db'}")
    cands = [Candidate(cscl_type(a, b, lat), source="test", round=0)
             for a, b, lat in (("Na", "Cl", 3.3), ("K", "Cl", 3.7), ("Mg", "O", 2.6), ("Ca", "O", 2.9))]
    store.add_candidates(cands)
    cfg = LabConfig(quantities=QUANTITIES, **lab_over)
    lab = LabOracle(cfg, store, run, poll_s=0.05)
    lab.submit(cands[:n_requested], round=0)
    return cfg, store, run, cands, lab


def good_row(cid: str, gap: float = 1.5) -> dict:
    return {"candidate_id": cid, "values": {"band_gap": gap, "made": True, "lattice_a": 5.6}}


def body(*rows: dict) -> str:
    return json.dumps({"results": list(rows)})


def test_lab_config_errors_are_one_line_per_field():
    with pytest.raises(ConfigError) as err:
        parse_config({"chemical_system": ["Ca"], "lab": {
            "name": "mlip", "quantities": [{"name": "gap", "min": 3, "max": 1}, {"name": "made", "kind": "bool", "min": 0}],
            "trains": "made", "colour": "red"}})
    text = "\n".join(err.value.problems)
    assert "lab.name: 'mlip' is the MLIP oracle's name" in text
    assert "lab.quantities.0: min 3.0 is above max 1.0" in text
    assert "lab.quantities.1: a bool quantity takes no min/max" in text
    assert "lab.colour: unknown key" in text
    cfg = parse_config({"chemical_system": ["Ca"]})
    assert cfg.lab is None  # a campaign without a lab is unchanged


def test_accepted_submission_is_one_measurement_per_candidate(tmp_path):
    _cfg, store, _run, cands, _lab = make_lab_run(tmp_path)
    a, b = cands[0].id, cands[1].id
    doc = body(
        {**good_row(a), "stdev": {"band_gap": 0.1}},
        {"candidate_id": b, "values": {"band_gap": None, "made": False, "lattice_a": 6.3}},
    )
    out = submit_results(store, "lab", doc, "json", "cli", "r.json")
    assert out.accepted and sorted(out.candidates) == sorted([a, b])
    got = {m.candidate_id: m for m in store.measurements(oracle="lab")}
    assert got[a].fidelity == 2 and got[a].values == {"band_gap": 1.5, "made": 1.0, "lattice_a": 5.6}
    assert got[a].stdev == {"band_gap": 0.1} and got[a].round == 0
    # null: measured nothing for that quantity, said so in the measurement
    assert got[b].values == {"made": 0.0, "lattice_a": 6.3} and got[b].error == "not measured: band_gap"
    [audit] = store.lab_submissions("lab")
    assert audit["accepted"] and audit["source"] == "cli" and audit["n_rows"] == 2


def test_every_bad_row_is_reported_and_nothing_is_applied(tmp_path):
    _cfg, store, _run, cands, _lab = make_lab_run(tmp_path)
    a, b, c = cands[0].id, cands[1].id, cands[2].id
    doc = json.dumps({"results": [
        good_row(c),                                                        # fine on its own
        {"candidate_id": "nope", "values": {"band_gap": 1.0}},              # unknown id
        {"candidate_id": a, "values": {"band_gap": "1.2", "made": 1, "lattice_a": 5.0}},  # wrong types
        {"candidate_id": b, "values": {"band_gap": 25.0, "made": True, "lattice_a": 5.0, "colour": 3}},
        good_row(c),                                                        # twice in one submission
        {"candidate_id": cands[3].id, "values": {"band_gap": 1.0}},         # never requested
    ]}).replace('"band_gap": 1.0}', '"band_gap": NaN}', 1)
    out = submit_results(store, "lab", doc, "json", "http")
    assert not out.accepted
    msgs = [str(p) for p in out.problems]
    assert "row 2 (nope): unknown candidate id: this lab has no request for it" in msgs
    assert f"row 3 ({a}): band_gap: expected a number, got '1.2'" in msgs
    assert f"row 3 ({a}): made: expected true/false, got 1" in msgs
    assert f"row 4 ({b}): band_gap: 25 eV is above the maximum 20 eV" in msgs
    assert f"row 4 ({b}): quantity 'colour' was not requested (requested: band_gap, made, lattice_a)" in msgs
    assert any(m.startswith(f"row 5 ({c}): appears twice in this submission (first at row 1)") for m in msgs)
    assert any(m.startswith(f"row 6 ({cands[3].id}): unknown candidate id") for m in msgs)
    assert not any(m.startswith("row 1 ") for m in msgs)  # the good row has no problem of its own...
    assert store.measurements(oracle="lab") == []  # ...and is not applied either
    [audit] = store.lab_submissions("lab")
    assert not audit["accepted"] and audit["errors"] == msgs


def test_nan_missing_and_failed_rows(tmp_path):
    _cfg, store, _run, cands, _lab = make_lab_run(tmp_path)
    a, b, c = (x.id for x in cands[:3])
    doc = ('{"results": [{"candidate_id": "%s", "values": {"band_gap": NaN, "made": true, "lattice_a": 5}},'
           ' {"candidate_id": "%s", "values": {"made": true}},'
           ' {"candidate_id": "%s", "values": {}, "status": "failed"}]}' % (a, b, c))
    msgs = [str(p) for p in submit_results(store, "lab", doc, "json", "cli").problems]
    assert f"row 1 ({a}): band_gap: nan is not a measurement (NaN and infinity are refused)" in msgs
    assert f"row 2 ({b}): band_gap: missing (give null if it could not be measured)" in msgs
    assert f"row 3 ({c}): a failed result needs an error saying why" in msgs
    ok = body({"candidate_id": c, "values": {}, "status": "failed", "error": "melted in the furnace"})
    assert submit_results(store, "lab", ok, "json", "cli").accepted
    [m] = store.measurements(oracle="lab")
    assert m.status == Status.failed and m.error == "melted in the furnace"


def test_a_result_is_final_a_resend_is_a_duplicate(tmp_path):
    _cfg, store, _run, cands, lab = make_lab_run(tmp_path)
    a = cands[0].id
    assert submit_results(store, "lab", body(good_row(a)), "json", "cli").accepted
    again = submit_results(store, "lab", body(good_row(a, gap=2.0)), "json", "http")
    assert not again.accepted
    assert [str(p) for p in again.problems] == [f"row 1 ({a}): already has a result from this lab; results are final"]
    [m] = store.measurements(oracle="lab")
    assert m.values["band_gap"] == 1.5
    assert a not in lab.pending() and len(lab.pending()) == 2


def test_csv_submission_parses_by_quantity_kind(tmp_path):
    _cfg, store, _run, cands, _lab = make_lab_run(tmp_path)
    a, b = cands[0].id, cands[1].id
    bad = f"candidate_id,band_gap,made,lattice_a\n{a},abc,maybe,5.6\n{b},1.0,yes\n"
    msgs = [str(p) for p in submit_results(store, "lab", bad, "csv", "cli").problems]
    assert msgs == [f"row 1 ({a}): band_gap: 'abc' is not a number", f"row 1 ({a}): made: 'maybe' is not yes/no",
                    "row 2: 3 cells for 4 columns"]
    header = submit_results(store, "lab", f"candidate_id,bandgap\n{a},1\n", "csv", "cli").problems
    assert [str(p) for p in header] == [
        "submission: column 'bandgap' is not a requested quantity (requested: band_gap, lattice_a, made)"]
    good = f"\ufeffcandidate_id,band_gap,band_gap_stdev,made,lattice_a,status,error\n{a},1.25,0.05,Yes,5.6,ok,\n"
    assert submit_results(store, "lab", good, "csv", "cli").accepted
    [m] = store.measurements(oracle="lab")
    assert m.values == {"band_gap": 1.25, "made": 1.0, "lattice_a": 5.6} and m.stdev == {"band_gap": 0.05}


def test_unreadable_payloads_are_rejected_whole(tmp_path):
    _cfg, store, _run, _cands, _lab = make_lab_run(tmp_path)
    for doc, fmt, want in [
        ("{not json", "json", "submission: not valid JSON"),
        ('{"results": 3}', "json", "submission: expected {\"results\": [...]}"),
        ('{"results": [], "extra": 1}', "json", "submission: unknown top-level field(s) 'extra'"),
        ('{"results": []}', "json", "submission: no results in this submission"),
        ("", "csv", "submission: empty file"),
    ]:
        out = submit_results(store, "lab", doc, fmt, "cli")
        assert not out.accepted and str(out.problems[0]).startswith(want), (doc, out.problems)
    assert store.measurements(oracle="lab") == []
    assert len(store.lab_submissions("lab")) == 5


SPECS = [QuantitySpec("band_gap", "eV", "float", 0.0, 20.0), QuantitySpec("made", kind="bool")]
json_value = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.fixed_dictionaries(
    {"candidate_id": st.sampled_from(["c1", "c2", "zz", ""]),
     "values": st.dictionaries(st.sampled_from(["band_gap", "made", "other"]), json_value, max_size=3)},
    optional={"status": st.sampled_from(["ok", "failed", "maybe"]), "error": st.one_of(st.text(max_size=5), st.integers())},
), max_size=4))
def test_validate_never_crashes_and_never_accepts_bad_values(rows):
    results, problems = validate(rows, {"c1": SPECS, "c2": SPECS}, answered=set())
    assert bool(results) != bool(problems) or (not rows and problems)
    for r in results:  # whatever passes is in range, finite and of the requested kind
        gap = r.values.get("band_gap")
        assert gap is None or (math.isfinite(gap) and 0.0 <= gap <= 20.0)
        assert r.values.get("made", 0.0) in (0.0, 1.0)
        assert r.candidate_id in ("c1", "c2")
    assert len({r.candidate_id for r in results}) == len(results)


def test_csv_reader_refuses_duplicate_and_missing_columns():
    specs = {s.name: s for s in SPECS}
    _, p = rows_from_csv("band_gap,band_gap\n1,2\n", specs)
    assert [str(x) for x in p] == ["submission: the header has no candidate_id column",
                                   "submission: column(s) band_gap appear more than once"]
