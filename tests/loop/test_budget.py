"""The proposal budget bandit: shares follow yield, never starve, checkpoint through the store."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xtalforge.loop.budget import BudgetBandit, load_bandit, save_bandit
from xtalforge.loop.store import CampaignStore
from xtalforge.types import Candidate, Measurement

NAMES = ["random_symmetric", "substitution", "evolutionary"]


def _results(source: str, e_values: list[float]) -> list[tuple[Candidate, Measurement]]:
    out = []
    for i, e in enumerate(e_values):
        s = Structure(Lattice.cubic(3.9 + 0.01 * i), ["Ca", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        c = Candidate(structure=s, source=source, round=0, id=f"{source}-{i}")
        out.append((c, Measurement(candidate_id=c.id, oracle="mlip", fidelity=1, values={"e_above_hull": e})))
    return out


def _round(bandit: BudgetBandit, r: int, good: str) -> None:
    res = []
    for n in NAMES:
        res += _results(n, [0.0, 0.0, 0.01] if n == good else [0.3, 0.5, 0.4])
    assert bandit.update(r, res)


def test_no_evidence_splits_evenly():
    b = BudgetBandit(NAMES)
    shares = b.shares(np.random.default_rng(0))
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(abs(v - 1 / 3) < 0.05 for v in shares.values())
    counts = b.split(60, shares)
    assert sum(counts.values()) == 60 and all(18 <= v <= 22 for v in counts.values())


def test_configured_weights_set_the_prior_split():
    b = BudgetBandit(NAMES, weights={"random_symmetric": 2.0})
    shares = b.shares(np.random.default_rng(0))
    assert shares["random_symmetric"] > 1.5 * shares["substitution"]


def test_share_moves_to_the_generator_that_hits_but_never_to_zero():
    b = BudgetBandit(NAMES, floor=0.1)
    for r in range(6):
        _round(b, r, good="substitution")
    shares = b.shares(np.random.default_rng(1))
    assert shares["substitution"] > 0.6
    assert min(shares.values()) >= 0.1 - 1e-9, "the floor keeps every generator alive"
    counts = b.split(20, shares)
    assert sum(counts.values()) == 20 and min(counts.values()) >= 1
    assert counts["substitution"] == max(counts.values())
    metrics = {**b.share_metrics(shares), **b.posterior_metrics()}
    assert metrics["budget_share_substitution"] == pytest.approx(shares["substitution"])
    assert metrics["budget_posterior_substitution"] > metrics["budget_posterior_evolutionary"]


def test_recent_yield_wins_over_old_yield():
    b = BudgetBandit(NAMES, discount=0.6)
    for r in range(4):
        _round(b, r, good="substitution")
    for r in range(4, 10):
        _round(b, r, good="evolutionary")
    shares = b.shares(np.random.default_rng(2))
    assert shares["evolutionary"] > shares["substitution"]


def test_a_generator_that_stops_finding_new_structures_loses_budget():
    """Substitution's few new proposals all hit, but 9 in 10 of its proposals are duplicates."""
    b = BudgetBandit(NAMES)
    for r in range(4):
        res = _results("substitution", [0.0, 0.0]) + _results("random_symmetric", [0.0, 0.02, 0.3, 0.1])
        b.update(r, res, {"substitution": (30, 3), "random_symmetric": (20, 20), "evolutionary": (10, 8)})
    shares = b.shares(np.random.default_rng(4))
    assert shares["random_symmetric"] > shares["substitution"] >= 0.1 - 1e-9
    assert b.mean("substitution") < b.mean("random_symmetric")


def test_a_round_is_applied_once():
    b = BudgetBandit(NAMES)
    _round(b, 0, good="random_symmetric")
    state = b.state_dict()
    assert not b.update(0, _results("random_symmetric", [0.0] * 5)), "a resumed round must not count twice"
    assert b.state_dict() == state


def test_state_survives_the_store(tmp_path):
    store = CampaignStore(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        b = load_bandit(store, NAMES, {}, threshold=0.0)
        for r in range(3):
            _round(b, r, good="evolutionary")
        save_bandit(store, 2, b)
        again = load_bandit(store, NAMES + ["wyckoff"], {}, threshold=0.0)
        for n in NAMES:
            assert again.mean(n) == pytest.approx(b.mean(n))
        assert again.mean("wyckoff") == pytest.approx(0.25), "a generator added on resume starts at the prior"
        assert again.last_round == 2
    finally:
        store.close()
