"""The composition ledger: settled compositions thin out of the pool, counts survive the store."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from xtalforge.loop.compositions import STATE_KEY, CompositionLedger
from xtalforge.loop.store import CampaignStore
from xtalforge.types import Candidate, Measurement, Status


def _perovskite(a: str, i: int) -> Candidate:
    s = Structure(Lattice.cubic(3.9 + 0.01 * i), [a, "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Candidate(structure=s, source="substitution", round=0, id=f"{a}-{i}")


def _measured(cands: list[Candidate], e: float, status: Status = Status.ok) -> list[tuple[Candidate, Measurement]]:
    return [(c, Measurement(candidate_id=c.id, oracle="mlip", fidelity=1, values={"e_above_hull": e}, status=status))
            for c in cands]


def test_settled_composition_thins_and_others_pass():
    ledger = CompositionLedger(settle_after=3)
    assert ledger.update(0, _measured([_perovskite("Sr", i) for i in range(2)], 0.0))
    assert ledger.keep_probability("SrTiO3") == 1.0, "two relaxations do not settle a composition"
    assert ledger.update(1, _measured([_perovskite("Sr", i) for i in range(2, 6)], 0.02)
                         + _measured([_perovskite("Ba", 0)], float("nan"), Status.failed))
    assert ledger.counts == {"SrTiO3": 6}, "failed relaxations are not counted"
    assert ledger.best["SrTiO3"] == 0.0
    assert ledger.keep_probability("SrTiO3") == 2.0 / 6
    assert not ledger.update(1, _measured([_perovskite("Sr", 9)], 0.0)), "a round is counted once"

    pool = [_perovskite("Sr", 10 + i) for i in range(300)] + [_perovskite("Ba", 10 + i) for i in range(300)]
    kept = ledger.thin(pool, np.random.default_rng(0))
    n_sr = sum(c.structure.composition.reduced_formula == "SrTiO3" for c in kept)
    n_ba = len(kept) - n_sr
    assert n_ba == 300, "an untried composition is never thinned"
    assert 70 < n_sr < 130, n_sr  # about a third of 300
    assert ledger.metrics() == {"compositions_relaxed": 1.0, "compositions_settled": 1.0}


def test_ledger_round_trips_through_the_store(tmp_path):
    ledger = CompositionLedger()
    ledger.update(0, _measured([_perovskite("Sr", i) for i in range(4)], 0.01))
    store = CampaignStore(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        store.set_stage(0, "updated", {}, states={STATE_KEY: ledger.state_dict()})
        back = CompositionLedger.from_state(store.load_state(STATE_KEY))
    finally:
        store.close()
    assert back == ledger
    assert CompositionLedger.from_state(None) == CompositionLedger()
