"""A small whole-loop backtest: pool generator -> surrogate -> acquisition (with pending
results) -> table oracle, on a slice of perov_5; and the benchmark script on another data set."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd

from xtalforge.loop.backtest import expected_random_queries, load_pool, run_backtest
from xtalforge.model.descriptors import featurize


def test_loop_beats_random_on_a_perovskite_slice(data_dir):
    df = pd.read_csv(data_dir / "perov_5" / "val.csv", index_col=0).iloc[:300]
    cands, _ = load_pool(df)
    X = featurize("magpie+structure", [c.structure for c in cands])
    runs = [run_backtest(df, cands, X, "heat_ref", True, seed=s, q=4, n_init=8, budget=64, delay=1,
                         fraction=0.02, kinds=("qlognei", "thompson"), surrogate_kw={"maxiter": 30})
            for s in range(2)]
    top = runs[0].top_size
    rand = expected_random_queries(len(cands), top, math.ceil(top / 2))
    assert np.mean([r.queries for r in runs]) < rand
    last = runs[0].rounds[-1]
    assert {"surrogate_nll", "surrogate_mae_last_round", "surrogate_within_1sigma"} <= set(last)
    assert any(k.startswith("acq_weight_") for r in runs[0].rounds for k in r)


def test_backtest_script_runs_on_an_unseen_file(data_dir, tmp_path, capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "backtest.py"
    spec = importlib.util.spec_from_file_location("backtest_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--data", str(data_dir / "carbon_24" / "val.csv"), "--target", "energy_per_atom",
                   "--minimize", "--seeds", "1", "--limit", "120", "--budget", "40", "--q", "8",
                   "--cache", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-1].startswith("acceleration_factor=")
    assert float(out[-1].split("=")[1]) > 0
