"""The GP surrogate on real BoTorch/GPyTorch: accuracy, calibration, exact fast moments, warm
starts, multi-fidelity, the subset-of-data switch and bad input."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json

import numpy as np
import pytest
import torch

from xtalforge.model.surrogate import OutcomeData, Surrogate, SurrogateError, fit_gp


def _f(X: np.ndarray) -> np.ndarray:
    return np.sin(3 * X[:, 0]) + X[:, 1] ** 2 - 0.5 * X[:, 2]


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = rng.random((120, 4))
    y = _f(X) + 0.02 * rng.standard_normal(120)
    s = Surrogate(maxiter=60)
    rep = s.fit({"y": OutcomeData(X, y)})["y"]
    return s, rep, rng


def test_fit_predicts_and_is_calibrated(fitted):
    s, rep, rng = fitted
    assert rep.kind == "exact" and rep.n_train == 120 and np.isfinite(rep.nll)
    Xt = rng.random((400, 4))
    mu, sd = s.predict(Xt, observation_noise=True)
    err = mu[:, 0] - _f(Xt)
    assert np.sqrt(np.mean(err**2)) < 0.15 * _f(Xt).std()
    z = np.abs(err) / sd[:, 0]
    assert np.mean(z <= 2) >= 0.85  # a 2σ interval should hold the truth ~95 % of the time


def test_fast_moments_match_botorch_posterior(fitted):
    s, _, rng = fitted
    Xt = rng.random((50, 4))
    mu, sd = s.predict(Xt)
    with torch.no_grad():
        post = s.models[0].posterior(torch.as_tensor(Xt))
    np.testing.assert_allclose(mu[:, 0], post.mean.detach().numpy()[:, 0], atol=1e-6)
    np.testing.assert_allclose(sd[:, 0], post.variance.detach().sqrt().numpy()[:, 0], atol=1e-6)
    # the screen's standard deviations bound the exact ones from above, means are exact
    mb, sb = s.screen(Xt)
    np.testing.assert_allclose(mb, mu, atol=1e-6)
    assert (sb >= sd - 1e-9).all()


def test_warm_start_round_trips_through_json(fitted):
    s, rep, _ = fitted
    state = json.loads(json.dumps(s.state_dict()))
    rng = np.random.default_rng(0)
    X = rng.random((120, 4))
    y = _f(X) + 0.02 * rng.standard_normal(120)
    warm = Surrogate(maxiter=1)
    warm.load_state_dict(state)
    cold = Surrogate(maxiter=1)
    w = warm.fit({"y": OutcomeData(X, y)})["y"]
    c = cold.fit({"y": OutcomeData(X, y)})["y"]
    assert abs(w.nll - rep.nll) < 0.1  # one step from last round's optimum stays there
    assert c.nll > w.nll + 0.1  # one step from the defaults does not get there


def test_conditioning_on_more_data_with_hyperparameters_fitted_ahead():
    rng = np.random.default_rng(3)
    X = rng.random((90, 4))
    fid = np.where(np.arange(90) < 20, 1, 0)  # 20 relaxations, 70 single points
    y = np.where(fid == 1, _f(X), 0.9 * _f(X) + 0.2)
    ahead = Surrogate(maxiter=60)
    ahead.fit({"y": OutcomeData(X[:80], y[:80], fid[:80])})  # one result and the newest rows still out
    state = json.loads(json.dumps(ahead.state_dict()))
    late = Surrogate(maxiter=60)
    late.load_state_dict(state)
    rep = late.fit({"y": OutcomeData(X, y, fid)}, optimize=False)["y"]
    assert rep.kind == "multi_fidelity" and rep.n_train == 90 and rep.n_hyper == 0
    assert late.state_dict()["params"] == state["params"], "conditioning leaves the hyperparameters alone"
    full = Surrogate(maxiter=60)
    full.load_state_dict(state)
    full.fit({"y": OutcomeData(X, y, fid)})
    Xt = rng.random((200, 4))
    mu_late, mu_full = late.predict(Xt)[0][:, 0], full.predict(Xt)[0][:, 0]
    assert np.sqrt(np.mean((mu_late - mu_full) ** 2)) < 0.05 * _f(Xt).std()
    # an outcome without hyperparameters is still optimized, not left at the defaults
    fresh = Surrogate(maxiter=60)
    assert fresh.fit({"y": OutcomeData(X, y, fid)}, optimize=False)["y"].n_hyper == 90


def test_multi_fidelity_uses_cheap_results():
    rng = np.random.default_rng(1)
    X = rng.random((150, 4))
    fid = np.where(rng.random(150) < 0.8, 1, 2)
    y = np.where(fid == 2, _f(X), 0.9 * _f(X) + 0.3)  # MLIP: biased but correlated
    mf = Surrogate(maxiter=60)
    rep = mf.fit({"y": OutcomeData(X, y, fid)})["y"]
    hi = Surrogate(maxiter=60)
    hi.fit({"y": OutcomeData(X[fid == 2], y[fid == 2])})
    Xt = rng.random((300, 4))
    rmse = [np.sqrt(np.mean((m.predict(Xt)[0][:, 0] - _f(Xt)) ** 2)) for m in (mf, hi)]
    assert rep.kind == "multi_fidelity"
    assert rmse[0] < 0.7 * rmse[1]


def test_switches_to_subset_of_data_and_keeps_the_best():
    rng = np.random.default_rng(2)
    X = rng.random((700, 3))
    y = _f(X)
    s = Surrogate(max_exact=300, hyper_subset=150, maxiter=20)
    rep = s.fit({"y": OutcomeData(X, y)})["y"]
    assert rep.kind == "subset" and rep.n_train == 300 and rep.n_hyper == 150
    kept = s.models[0].train_targets.numpy() * s.models[0].outcome_transform.stdvs.item() \
        + s.models[0].outcome_transform.means.item()
    assert np.isclose(kept.max(), y.max())  # the best point is in the conditioning set


def test_nan_rows_are_dropped_and_all_nan_is_a_clear_error():
    rng = np.random.default_rng(3)
    X = rng.random((30, 2))
    y = X.sum(1)
    y[:5] = np.nan
    y[5] = np.inf
    s = Surrogate(maxiter=5)
    assert s.fit({"e_above_hull": OutcomeData(X, y)})["e_above_hull"].n_dropped == 6
    with pytest.raises(SurrogateError, match="e_above_hull.*NaN/inf"):
        s.fit({"e_above_hull": OutcomeData(X, np.full(30, np.nan))})
    with pytest.raises(SurrogateError, match="band_gap.*no measurements"):
        s.fit({"band_gap": OutcomeData(np.zeros((0, 2)), np.zeros(0))})


def test_fit_gp_single_outcome_helper():
    rng = np.random.default_rng(4)
    X = rng.random((20, 2))
    model, rep = fit_gp(X, X.sum(1), maxiter=5)
    assert rep.n_train == 20 and model.outcomes == ["y"]


def test_rbf_plus_linear_kernel_on_a_small_real_table(data_dir):
    """CAMD's OQMD table: 40 training compounds, 300 held out. The extra linear kernel keeps the
    fast exact moments (any kernel, not only RBF), the screen's variance bound, and predicts
    formation energies better than their mean does."""
    import pandas as pd

    df = pd.read_csv(data_dir / "camd_oqmd_featurized" / "test_df.csv", index_col=0)
    X = df.drop(columns=["oqmd_id", "Composition", "delta_e"]).to_numpy(dtype=float)
    y = df["delta_e"].to_numpy()
    s = Surrogate(kernel="rbf+linear", maxiter=40)
    s.fit({"delta_e": OutcomeData(X[:40], y[:40])})
    Xt, yt = X[300:600], y[300:600]
    mu, sd = s.predict(Xt, observation_noise=True)
    with torch.no_grad():
        post = s.models[0].posterior(torch.as_tensor(Xt[:50]), observation_noise=True)
    np.testing.assert_allclose(mu[:50, 0], post.mean.detach().numpy()[:, 0], atol=1e-5)
    np.testing.assert_allclose(sd[:50, 0], post.variance.detach().sqrt().numpy()[:, 0], atol=1e-5)
    mb, sb = s.screen(Xt)
    assert (sb >= s.predict(Xt)[1] - 1e-9).all()
    assert np.mean(np.abs(mu[:, 0] - yt)) < 0.8 * np.mean(np.abs(yt - y[:40].mean()))
    assert "linear" in s.describe()
    with pytest.raises(SurrogateError, match="kernel 'matern'"):
        Surrogate(kernel="matern")
