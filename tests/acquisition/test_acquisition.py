"""Acquisition on real BoTorch models: the fast batch against BoTorch's exhaustive greedy, pending
points, constraints, several objectives, the GP-Hedge portfolio and bad input."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json

import numpy as np
import pytest
import torch

from xtalforge.acquisition import Acquirer, AcquisitionError, Constraint, Target, farthest_point
from xtalforge.model.surrogate import OutcomeData, Surrogate


def _f(X):
    return np.sin(5 * X[:, 0]) * np.cos(4 * X[:, 1]) + 0.5 * X[:, 2]


def _g(X):
    return X[:, 0] - X[:, 1]  # a second outcome: constraint or objective


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    Xtr = rng.random((40, 3))
    pool = rng.random((600, 3))
    s = Surrogate(maxiter=60)
    s.fit({"y": OutcomeData(Xtr, _f(Xtr)), "g": OutcomeData(Xtr, _g(Xtr))})
    return s, Xtr, pool


def _botorch_value(s, Xtr, X):
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.acquisition.objective import GenericMCObjective
    from botorch.sampling import SobolQMCNormalSampler

    acqf = qLogNoisyExpectedImprovement(s.model, torch.as_tensor(Xtr),
                                        sampler=SobolQMCNormalSampler(torch.Size([4096]), seed=99),
                                        objective=GenericMCObjective(lambda Y, X=None: Y[..., 0]))
    with torch.no_grad():
        return float(acqf(torch.as_tensor(X).unsqueeze(0)))


def test_fast_qlognei_matches_exhaustive_greedy(problem):
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.acquisition.objective import GenericMCObjective
    from botorch.optim import optimize_acqf_discrete

    s, Xtr, pool = problem
    q = 4
    acq = Acquirer([Target("y", minimize=False)], shortlist=64)
    picks = acq.select(s, pool, q, np.random.default_rng(0), X_baseline=Xtr)
    assert len(set(picks.indices)) == q and picks.method == "qlognei"
    exh = qLogNoisyExpectedImprovement(s.model, torch.as_tensor(Xtr),
                                       objective=GenericMCObjective(lambda Y, X=None: Y[..., 0]))
    cand, _ = optimize_acqf_discrete(exh, q=q, choices=torch.as_tensor(pool))
    ratio = np.exp(_botorch_value(s, Xtr, pool[picks.indices]) - _botorch_value(s, Xtr, cand.numpy()))
    assert ratio >= 0.95


def test_pending_points_count_as_already_in_the_batch(problem):
    s, Xtr, pool = problem
    acq = Acquirer([Target("y", minimize=False)], shortlist=64)
    first = acq.select(s, pool, 1, np.random.default_rng(0)).indices[0]
    again = acq.select(s, pool, 1, np.random.default_rng(0), X_pending=pool[[first]]).indices[0]
    assert again != first  # its improvement is already claimed by the pending copy


def test_modeled_and_known_constraints(problem):
    s, Xtr, pool = problem
    acq = Acquirer([Target("y", minimize=False)], [Constraint("g", "<=", 0.0)], shortlist=64)
    picks = acq.select(s, pool, 6, np.random.default_rng(0))
    mean, _ = s.predict(pool[picks.indices])
    assert (mean[:, s.index("g")] < 0.1).mean() >= 5 / 6  # picks sit on the feasible side
    p_synth = np.linspace(0, 1, len(pool))
    acq = Acquirer([Target("y", minimize=False)], [Constraint("p_synth", ">=", 0.5)], shortlist=64)
    picks = acq.select(s, pool, 6, np.random.default_rng(0), known={"p_synth": p_synth})
    assert (p_synth[picks.indices] >= 0.5).all()


def test_two_objectives_use_qlognehvi(problem):
    s, Xtr, pool = problem
    acq = Acquirer([Target("y", minimize=False), Target("g", minimize=True)], kinds=["qlognehvi"],
                   moo_shortlist=48)
    picks = acq.select(s, pool[:300], 4, np.random.default_rng(0))
    assert len(set(picks.indices)) == 4
    mean, _ = s.predict(pool[:300])
    Y = np.stack([mean[:, 0], -mean[:, 1]], 1)
    # picks are not dominated by much of the pool
    dominated = [((Y >= Y[i]).all(1) & (Y > Y[i]).any(1)).sum() for i in picks.indices]
    assert np.median(dominated) <= 15


@pytest.mark.parametrize("kind", ["ucb", "thompson", "random"])
def test_other_single_objective_kinds(problem, kind):
    s, _, pool = problem
    picks = Acquirer([Target("y", minimize=False)], kinds=[kind], shortlist=64).select(
        s, pool, 5, np.random.default_rng(1))
    assert len(set(picks.indices)) == 5 and all(0 <= i < len(pool) for i in picks.indices)
    if kind != "random":
        mean, _ = s.predict(pool[picks.indices])
        assert mean[:, 0].mean() > np.median(s.predict(pool)[0][:, 0])


def test_screen_is_certified_on_a_larger_pool(problem):
    s, _, _ = problem
    pool = np.random.default_rng(5).random((6000, 3))
    acq = Acquirer([Target("y", minimize=False)], shortlist=32)
    acq.select(s, pool, 2, np.random.default_rng(0))
    assert acq.last_screen["certified"] == 1.0 and acq.last_screen["rescored"] < len(pool)


def test_gp_hedge_learns_and_round_trips(problem):
    s, Xtr, pool = problem
    ids = [f"c{i}" for i in range(len(pool))]
    acq = Acquirer([Target("y", minimize=False)], kinds=["qlognei", "random"], shortlist=64, hedge_eta=2.0)
    picks = acq.select(s, pool, 6, np.random.default_rng(0), ids=ids)
    assert set(picks.arms) <= {"qlognei", "random"} and len(picks.indices) == 6
    assert set(acq.nominees) == {"qlognei", "random"}
    state = json.loads(json.dumps(acq.state_dict()))
    again = Acquirer([Target("y", minimize=False)], kinds=["qlognei", "random"], hedge_eta=2.0)
    again.load_state_dict(state)
    feats = {i: pool[k] for k, i in enumerate(ids)}
    metrics = again.update(s, feats)
    assert metrics["acq_weight_qlognei"] > metrics["acq_weight_random"]  # model-guided picks look better
    assert again.nominees == {}


def test_bad_input_gives_clear_messages(problem):
    s, _, pool = problem
    acq = Acquirer([Target("y", minimize=False)])
    with pytest.raises(AcquisitionError, match="pool is empty"):
        acq.select(s, np.zeros((0, 3)), 4, np.random.default_rng(0))
    with pytest.raises(AcquisitionError, match="band_gap.*no oracle"):
        Acquirer([Target("band_gap")]).select(s, pool, 4, np.random.default_rng(0))
    with pytest.raises(AcquisitionError, match="meets p_synth >= 0.5"):
        Acquirer([Target("y")], [Constraint("p_synth", ">=", 0.5)]).select(
            s, pool, 4, np.random.default_rng(0), known={"p_synth": np.zeros(len(pool))})
    with pytest.raises(AcquisitionError, match="does not fit several objectives"):
        Acquirer([Target("y"), Target("g")], kinds=["qlognei"])
    bad = pool.copy()
    bad[:, 0] = np.nan
    with pytest.raises(AcquisitionError, match="finite features"):
        acq.select(s, bad, 4, np.random.default_rng(0))


def test_farthest_point_is_diverse():
    X = np.random.default_rng(0).random((200, 2))
    picks = farthest_point(X, 4, np.random.default_rng(0), exclude=X[:1])
    d = np.linalg.norm(X[picks.indices][:, None] - X[picks.indices][None], axis=-1)
    assert d[np.triu_indices(4, 1)].min() > 0.3


class _OnlyTheRole:
    """A SurrogateModel that exposes the protocol's members and nothing else: any other attribute
    the acquisition reached for would raise AttributeError."""

    def __init__(self, inner: Surrogate):
        self._inner = inner
        self.outcomes, self.train_X, self.train_y = inner.outcomes, inner.train_X, inner.train_y
        self.models, self.model = inner.models, inner.model

    def fit(self, data):
        return self._inner.fit(data)

    def index(self, name):
        return self._inner.index(name)

    def predict(self, X, observation_noise=False):
        return self._inner.predict(X, observation_noise=observation_noise)

    def screen(self, X):
        return self._inner.screen(X)

    def state_dict(self):
        return self._inner.state_dict()

    def load_state_dict(self, state):
        self._inner.load_state_dict(state)


def test_acquisition_needs_only_the_surrogate_model_role(problem):
    from xtalforge.model.base import SurrogateModel

    s, _, pool = problem
    role = _OnlyTheRole(s)
    assert isinstance(s, SurrogateModel) and isinstance(role, SurrogateModel)
    ids = [f"c{i}" for i in range(len(pool))]
    feats = {i: pool[k] for k, i in enumerate(ids)}
    for objectives, kinds, cons in [([Target("y", minimize=False)], ["qlognei", "ucb", "thompson", "random"],
                                     [Constraint("g", "<=", 0.2)]),
                                    ([Target("y", minimize=False), Target("g")], ["qlognehvi"], [])]:
        picks = []
        for sur in (s, role):
            acq = Acquirer(objectives, cons, kinds=kinds, shortlist=32, moo_shortlist=24, mc_samples=128)
            acq.select(sur, pool[:200], 3, np.random.default_rng(0), ids=ids[:200])
            acq.update(sur, feats, {ids[0]: {"y": 1.0}})
            picks.append(acq.select(sur, pool[:200], 3, np.random.default_rng(1), X_pending=pool[:1]).indices)
        assert picks[0] == picks[1] and len(set(picks[0])) == 3
