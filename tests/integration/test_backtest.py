"""A small whole-loop backtest: pool generator -> surrogate -> acquisition (with pending
results) -> table oracle, on a slice of perov_5; held-out halves; a features-only table and the
multi-fidelity table; and the benchmark script on another data set, with the campaign's default
featurizer."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd

from xtalforge.loop.backtest import (calibration, expected_random_queries, load_pool, run_backtest, split_labels,
                                     table_pool)
from xtalforge.model.descriptors import featurize
from xtalforge.model.surrogate import OutcomeData


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


def _script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "backtest.py"
    spec = importlib.util.spec_from_file_location("backtest_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_backtest_script_runs_on_an_unseen_file(data_dir, tmp_path, capsys):
    rc = _script().main(["--data", str(data_dir / "carbon_24" / "val.csv"), "--target", "energy_per_atom",
                         "--minimize", "--seeds", "1", "--limit", "120", "--budget", "40", "--q", "8",
                         "--featurizer", "magpie+structure", "--cache", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-1].startswith("acceleration_factor=")
    assert float(out[-1].split("=")[1]) > 0
    assert any(line.startswith("# calibration by round") for line in out)


def test_script_default_is_the_campaign_featurizer_and_batch(data_dir, tmp_path, capsys):
    rc = _script().main(["--data", str(data_dir / "perov_5" / "val.csv"), "--target", "heat_ref", "--minimize",
                         "--seeds", "1", "--limit", "24", "--budget", "12", "--fraction", "0.1",
                         "--cache", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "# features: chgnet+composition: CHGNet embedding" in out and "q = 6, first 6 by farthest point" in out
    assert (tmp_path / "chgnet.npz").is_file()  # embeddings cached for the next run


def test_script_refuses_bad_input_in_one_line(data_dir, capsys):
    rc = _script().main(["--data", str(data_dir / "camd_oqmd_featurized" / "test_df.csv"), "--target", "delta_e",
                         "--featurizer", "chgnet+composition"])
    assert rc == 2 and capsys.readouterr().out.strip().count("\n") == 0


def test_halves_are_disjoint_cover_the_table_and_repeat():
    labels = list(range(101))
    tune, report = split_labels(labels, "tune", 3), split_labels(labels, "report", 3)
    assert not set(tune) & set(report) and sorted(tune + report) == labels and len(tune) == 50
    assert split_labels(labels, "tune", 3) == tune and split_labels(labels, "tune", 4) != tune


def test_features_only_table_and_multi_fidelity(data_dir):
    df = pd.read_csv(data_dir / "camd_oqmd_featurized" / "test_df.csv", index_col=0).iloc[:150]
    cands = table_pool(df)
    X = df.drop(columns=["oqmd_id", "Composition", "delta_e"]).to_numpy(dtype=float)
    res = run_backtest(df, cands, X, "delta_e", True, seed=0, budget=30, fraction=0.02,
                       surrogate_kw={"maxiter": 20})
    assert res.n_pool == 150 and res.rounds[0]["queries"] == 6  # the campaign's batch of 6
    assert {"heldout_within_1sigma", "heldout_within_2sigma"} <= set(res.rounds[-1]) or res.queries <= 6

    mf = pd.read_csv(data_dir / "camd_oqmd_featurized" / "test_multi_fidelity_df.csv", index_col=0)
    feats = [c for c in mf.columns if c.startswith("MagpieData")]
    theory, expt = mf[mf.theory_data == 1], mf[mf.expt_data == 1]
    known = OutcomeData(theory[feats].to_numpy(dtype=float), theory["bandgap"].to_numpy())
    res = run_backtest(expt, table_pool(expt), expt[feats].to_numpy(dtype=float), "bandgap", False, seed=0,
                       budget=18, fraction=0.05, known=known, n_init=2, surrogate_kw={"maxiter": 20})
    fitted = [m for m in res.rounds if "surrogate_n_train" in m]
    # the theory rows are in every fit beside the measured experiments
    assert fitted and all(m["surrogate_n_train"] >= 150 + 2 for m in fitted)


def test_calibration_counts_errors_within_sigma():
    c = calibration(np.zeros(4), np.ones(4), np.array([0.5, 1.5, -2.5, 0.0]))
    assert c == {"within_1sigma": 0.5, "within_2sigma": 0.75, "mae": 1.125}


def test_script_logs_calibration_per_round_to_mlflow(data_dir, tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = _script().main(["--data", str(data_dir / "camd_oqmd_featurized" / "test_df.csv"), "--target", "delta_e",
                         "--minimize", "--seeds", "1", "--limit", "200", "--budget", "24", "--quiet",
                         "--mlflow", uri])
    assert rc == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["backtest"])
    assert len(runs) == 1 and runs["params.featurizer"][0] == "table"
    history = mlflow.tracking.MlflowClient().get_metric_history(runs.run_id[0], "heldout_within_2sigma")
    assert history and all(0.0 <= m.value <= 1.0 for m in history) and history[0].step >= 1
