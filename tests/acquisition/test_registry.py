"""The arm registry: an arm defined here, outside src/, registered with one call, validates in a
config and picks through the Acquirer on a real fitted GP; unknown and misfit names give one line."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest

from xtalforge.acquisition import (Acquirer, AcquisitionArm, AcquisitionError, Round, Target, arm_names, get_arm,
                                   register_arm)
from xtalforge.config import ConfigError, parse_config
from xtalforge.model.surrogate import OutcomeData, Surrogate


class Exploit(AcquisitionArm):
    """The shortlisted candidates with the best posterior mean of the objective."""

    name = "test_exploit"

    def pick(self, rd: Round, n: int, taken: Sequence[int], rng: np.random.Generator):
        free = rd.available(taken)
        t = rd.objectives[0]
        mean, _ = rd.surrogate.predict(rd.X_candidates[free])
        order = np.argsort(-t.sign * mean[:, rd.surrogate.index(t.name)], kind="stable")[:n]
        return free[order].tolist(), [float(v) for v in mean[order, 0]]


class Careless(AcquisitionArm):
    """Returns the same position twice: the Acquirer must refuse it."""

    name = "test_careless"

    def pick(self, rd, n, taken, rng):
        return [0, 0], [0.0, 0.0]


register_arm(Exploit)
register_arm(Careless)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = rng.random((30, 3))
    s = Surrogate(maxiter=30)
    s.fit({"y": OutcomeData(X, np.sin(4 * X[:, 0]) + X[:, 1])})
    return s, rng.random((400, 3))


def test_a_registered_arm_picks_through_the_acquirer(fitted):
    s, pool = fitted
    acq = Acquirer([Target("y", minimize=False)], kinds=["test_exploit"], shortlist=32)
    picks = acq.select(s, pool, 4, np.random.default_rng(0))
    assert picks.method == "test_exploit" and picks.arms == ["test_exploit"] * 4
    # the screen keeps the best means, so the arm's picks are the pool's 4 best posterior means
    best = np.argsort(-s.predict(pool)[0][:, 0], kind="stable")[:4]
    assert picks.indices == best.tolist()


def test_a_registered_arm_shares_a_portfolio(fitted):
    s, pool = fitted
    ids = [f"c{i}" for i in range(len(pool))]
    acq = Acquirer([Target("y", minimize=False)], kinds=["test_exploit", "qlognei"], shortlist=32,
                   mc_samples=128)
    picks = acq.select(s, pool, 6, np.random.default_rng(0), ids=ids)
    assert len(set(picks.indices)) == 6 and set(picks.arms) <= {"test_exploit", "qlognei"}
    assert set(acq.nominees) == {"test_exploit", "qlognei"}
    metrics = acq.update(s, {i: pool[k] for k, i in enumerate(ids)})
    assert {"acq_weight_test_exploit", "acq_reward_test_exploit"} <= set(metrics)


def test_an_arm_returning_a_bad_pick_is_refused(fitted):
    s, pool = fitted
    with pytest.raises(AcquisitionError, match="test_careless.*invalid pick"):
        Acquirer([Target("y")], kinds=["test_careless"], shortlist=32).select(s, pool, 2, np.random.default_rng(0))


def test_registry_lists_the_shipped_and_registered_arms():
    assert {"qlognei", "ucb", "thompson", "random", "qlognehvi", "test_exploit"} <= set(arm_names())
    assert "qlognehvi" not in arm_names(1) and set(arm_names(2)) == {"qlognehvi", "random"}
    assert get_arm("test_exploit") is Exploit and get_arm("qlognei").needs_draws
    with pytest.raises(AcquisitionError, match=r"unknown acquisition 'nope' \(known: .*qlognei"):
        get_arm("nope")
    with pytest.raises(TypeError, match="name"):
        register_arm(type("Nameless", (Exploit,), {"name": ""}))
    with pytest.raises(AcquisitionError, match="does not fit several objectives"):
        Acquirer([Target("y"), Target("g")], kinds=["test_exploit"])


def _acquisition(**acq) -> list[str]:
    try:
        parse_config({"name": "t", "chemical_system": ["Ca", "Ti", "O"], "acquisition": acq})
    except ConfigError as err:
        return err.problems
    return []


def test_config_validates_names_against_the_registry():
    assert _acquisition(kind="test_exploit") == []
    assert _acquisition(portfolio=["test_exploit", "ucb"]) == []
    assert _acquisition(objectives=[{"name": "a"}, {"name": "b"}], portfolio=["qlognehvi", "random"]) == []
    [line] = _acquisition(kind="qlogni")
    assert line.startswith("acquisition: kind: unknown acquisition 'qlogni' (known: ") and "test_exploit" in line
    [line] = _acquisition(portfolio=["ucb", "nope"])
    assert line.startswith("acquisition: portfolio: unknown acquisition 'nope'")
    [line] = _acquisition(kind="qlognehvi")
    # arms other test modules registered may be listed too: the registry is per process
    assert line.startswith("acquisition: kind: qlognehvi does not serve one objective (use: ")
    assert {"qlognei", "random", "test_exploit"} <= set(line.split("(use: ")[1].rstrip(")").split(", "))
    assert "qlognehvi" not in line.split("(use:")[1]
    [line] = _acquisition(objectives=[{"name": "a"}, {"name": "b"}], kind="qlognei")
    assert line == "acquisition: kind: qlognei does not serve 2 objectives (use: qlognehvi, random)"


def test_reading_a_config_does_not_import_torch():
    code = ("import sys; from xtalforge.config import parse_config; "
            "parse_config({'name': 't', 'chemical_system': ['Ca', 'O'], 'acquisition': {'portfolio': ['ucb', 'random']}}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
