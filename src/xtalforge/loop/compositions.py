"""Composition-aware search: stop spending the oracle on compositions whose ground state is settled.

The generators propose by structure, so a composition that substitutes well (SrTiO3 from every
perovskite in the library) keeps filling the pool long after its ground state was found, and
the acquisition keeps relaxing its polymorphs. The ledger counts the relaxations each reduced
composition has had and its best e_above_hull; a composition relaxed `settle_after` times is
settled, and only a shrinking share of its new proposals reaches the pool (2 in 3, then 1 in 2,
2 in 5 with each further relaxation), so later rounds spend their relaxations on compositions not yet tried.
Polymorph search in a settled composition slows down but never stops.

The ledger is learned state: it moves with the generators' update and is frozen with them
(`update_generators: false`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from xtalforge.types import Candidate, Measurement, Status

STATE_KEY = "compositions"


@dataclass
class CompositionLedger:
    """Relaxations and best e_above_hull (eV/atom) per reduced formula."""

    settle_after: int = 3
    counts: dict[str, int] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    last_round: int = -1  # the round whose results were last applied (resume-safe updates)

    def update(self, round: int, results: Sequence[tuple[Candidate, Measurement]]) -> bool:
        """Count one round's evaluated results; False, and nothing changes, when this round
        was counted already (a resumed round re-runs its update)."""
        if round <= self.last_round:
            return False
        for cand, m in results:
            if m.status != Status.ok:
                continue
            f = cand.structure.composition.reduced_formula
            self.counts[f] = self.counts.get(f, 0) + 1
            e = m.values.get("e_above_hull")
            if e is not None and np.isfinite(e):
                self.best[f] = min(self.best.get(f, float("inf")), float(e))
        self.last_round = round
        return True

    def keep_probability(self, formula: str) -> float:
        """Chance that a new proposal of `formula` reaches the pool: 1 until the composition is
        settled, then 2 / (3 + relaxations since it settled)."""
        n = self.counts.get(formula, 0)
        if n < self.settle_after:
            return 1.0
        return 2.0 / (n - self.settle_after + 3)

    def thin(self, cands: Sequence[Candidate], rng: np.random.Generator) -> list[Candidate]:
        """The candidates that reach the pool (order kept)."""
        return [c for c in cands
                if rng.random() < self.keep_probability(c.structure.composition.reduced_formula)]

    def metrics(self) -> dict[str, float]:
        settled = [f for f, n in self.counts.items() if n >= self.settle_after]
        return {"compositions_relaxed": float(len(self.counts)), "compositions_settled": float(len(settled))}

    def state_dict(self) -> dict:
        return {"counts": self.counts, "best": self.best, "last_round": self.last_round}

    @classmethod
    def from_state(cls, state: dict | None, settle_after: int = 3) -> CompositionLedger:
        state = state or {}
        return cls(settle_after, {k: int(v) for k, v in state.get("counts", {}).items()},
                   {k: float(v) for k, v in state.get("best", {}).items()}, int(state.get("last_round", -1)))
