"""The table oracle and the pool generator on a real labelled CSV (perov_5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xtalforge.generators.pool import PoolGenerator
from xtalforge.generators.registry import build_generator
from xtalforge.oracles.table import TableError, TableOracle, read_table
from xtalforge.types import Candidate, Status


@pytest.fixture(scope="module")
def table(data_dir) -> pd.DataFrame:
    return read_table(data_dir / "perov_5" / "val.csv").iloc[:12].copy()


def test_pool_proposes_in_order_and_resumes(table):
    gen = PoolGenerator(table=table)
    first = gen.propose(5)
    assert [c.meta["row"] for c in first] == list(table.index[:5])
    assert all(len(c.structure) == 5 and c.source == "pool" for c in first)
    state = gen.state_dict()
    again = PoolGenerator(table=table)
    again.load_state_dict(state)
    rest = again.propose(100)
    assert [c.meta["row"] for c in rest] == list(table.index[5:])
    assert again.update([])["remaining"] == 0.0


def test_registry_builds_the_pool_from_a_file(data_dir):
    gen = build_generator("pool", ("Ca",), 10, {"path": str(data_dir / "carbon_24" / "val.csv"), "limit": 3})
    cands = gen.propose(10)
    assert len(cands) == 3 and all(c.formula == "C" for c in cands)
    with pytest.raises(ValueError, match="no such file"):
        build_generator("pool", ("Ca",), 10, {"path": "/nonexistent.csv"})


def test_table_oracle_looks_up_by_row_and_by_structure(table):
    cands = PoolGenerator(table=table).propose(4)
    oracle = TableOracle(table, columns=["heat_ref", "heat_all"])
    oracle.submit(cands)
    got = {m.candidate_id: m for m in oracle.collect()}
    for c in cands:
        m = got[c.id]
        assert m.status == Status.ok and m.oracle == "table" and m.fidelity == 2
        assert m.values["heat_ref"] == pytest.approx(table.loc[c.meta["row"], "heat_ref"])
    # no row label: found by its canonical id among the table's CIFs
    bare = Candidate(structure=cands[2].structure, source="other", round=0)
    oracle.submit([bare])
    (m,) = oracle.collect()
    assert m.values["heat_ref"] == pytest.approx(table.loc[cands[2].meta["row"], "heat_ref"])


def test_delay_keeps_results_pending(table):
    cands = PoolGenerator(table=table).propose(3)
    oracle = TableOracle(table, columns=["heat_ref"], delay=2)
    oracle.submit(cands)
    assert oracle.collect() == [] and sorted(oracle.pending()) == sorted(c.id for c in cands)
    assert oracle.collect() == []
    assert len(oracle.collect()) == 3 and oracle.pending() == []


def test_bad_values_and_columns_are_clear(table):
    t = table.copy()
    t["heat_ref"] = t["heat_ref"].astype(float)
    t.iloc[0, t.columns.get_loc("heat_ref")] = np.nan
    t.iloc[1, t.columns.get_loc("heat_ref")] = np.inf
    cands = PoolGenerator(table=t).propose(3)
    oracle = TableOracle(t, columns=["heat_ref"])
    oracle.submit(cands)
    ms = oracle.collect()
    assert [m.status for m in ms] == [Status.failed, Status.failed, Status.ok]
    assert "non-finite value in the table for heat_ref" in ms[0].error
    with pytest.raises(TableError, match="band_gap"):
        TableOracle(t, columns=["band_gap"])
    stranger = Candidate(structure=cands[0].structure.copy(), source="x", round=0, id="not-a-real-id")
    oracle.submit([stranger])
    assert oracle.collect()[0].error == "not in the table"
