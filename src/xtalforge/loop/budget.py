"""Splitting each round's proposal budget across generators: a Thompson-sampling bandit.

What one proposal of a generator is worth is the chance that it is new (survives validity and
deduplication) times the chance that, evaluated, it is a hit. Each generator has a Beta
posterior on each:
- hit: a result counts as a soft hit of weight 0.5 reward_from(m) + 0.5 [e_above_hull <=
  `threshold`], in [0, 1] (reward_from is 1 on the hull, e^-1 at 0.1 eV/atom above it), so
  early rounds, where nothing is on the hull yet, still separate good generators from bad ones;
- new: unique / proposed from the round's generation counts. A generator that has run out of
  new structures (substitution in a small system) loses budget even while its few new ones hit.
Old evidence decays by `discount` per round, so the split follows recent yield.

The share of a generator is the posterior probability that its hit x new rate is the best
(estimated from `draws` Thompson samples), times its configured weight, floored at `floor` so
that no generator is ever starved: one with no budget would never get the evidence to recover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from xtalforge.generators.base import reward_from
from xtalforge.types import Candidate, Measurement


class BudgetBandit:
    def __init__(self, names: Sequence[str], weights: Mapping[str, float] | None = None, floor: float = 0.1,
                 threshold: float = 0.0, discount: float = 0.8, draws: int = 2000):
        """`floor`: least share of the budget per generator (capped at 1/len(names));
        `threshold`: e_above_hull in eV/atom at or below which a result is a full hit."""
        if not names:
            raise ValueError("the budget needs at least one generator")
        self.names = list(names)
        self.weights = {n: float((weights or {}).get(n, 1.0)) for n in self.names}
        self.floor = min(float(floor), 1.0 / len(self.names))
        self.threshold = threshold
        self.discount = discount
        self.draws = draws
        # Beta pseudo-counts [alpha, beta] per generator: hits among evaluations, new among proposals
        self.hit = {n: [1.0, 1.0] for n in self.names}
        self.new = {n: [1.0, 1.0] for n in self.names}
        self.last_round = -1  # the round whose results were last applied (resume-safe updates)

    # -- posterior -------------------------------------------------------------------------
    def update(self, round: int, results: Sequence[tuple[Candidate, Measurement]],
               generated: Mapping[str, tuple[int, int]] | None = None) -> bool:
        """Apply one round: its evaluated results (attributed by Candidate.source) and, per
        generator, (proposed, unique) counts. False, and nothing changes, when this round was
        applied already (a resumed round re-runs its update)."""
        if round <= self.last_round:
            return False
        for post in (self.hit, self.new):  # decay towards the Beta(1, 1) prior
            for ab in post.values():
                ab[0] = 1.0 + self.discount * (ab[0] - 1.0)
                ab[1] = 1.0 + self.discount * (ab[1] - 1.0)
        for cand, m in results:
            if cand.source not in self.hit:
                continue
            e = m.values.get("e_above_hull")
            h = 0.5 * reward_from(m) + 0.5 * float(e is not None and e <= self.threshold + 1e-9)
            self.hit[cand.source][0] += h
            self.hit[cand.source][1] += 1.0 - h
        for name, (proposed, unique) in (generated or {}).items():
            if name in self.new and proposed > 0:
                self.new[name][0] += unique
                self.new[name][1] += max(0, proposed - unique)
        self.last_round = round
        return True

    def mean(self, name: str) -> float:
        """Posterior mean of hit rate x new rate: expected hits per proposal, roughly."""
        (a, b), (c, d) = self.hit[name], self.new[name]
        return a / (a + b) * c / (c + d)

    # -- allocation ------------------------------------------------------------------------
    def shares(self, rng: np.random.Generator) -> dict[str, float]:
        """Fractions of the budget, summing to 1, each at least `floor`."""
        hit = np.array([self.hit[n] for n in self.names])
        new = np.array([self.new[n] for n in self.names])
        k = (self.draws, len(self.names))
        theta = rng.beta(hit[:, 0], hit[:, 1], size=k) * rng.beta(new[:, 0], new[:, 1], size=k)
        p_best = np.bincount(theta.argmax(axis=1), minlength=len(self.names)) / self.draws
        w = p_best * np.array([self.weights[n] for n in self.names])
        w = w / w.sum() if w.sum() > 0 else np.full(len(self.names), 1.0 / len(self.names))
        share = self.floor + (1.0 - self.floor * len(self.names)) * w
        return dict(zip(self.names, (share / share.sum()).tolist()))

    def split(self, total: int, shares: Mapping[str, float]) -> dict[str, int]:
        """Whole proposal counts from `shares` summing to `total` (largest remainders), at
        least 1 each."""
        raw = np.array([shares[n] * total for n in self.names])
        counts = np.maximum(np.floor(raw).astype(int), 1)
        while counts.sum() < total:
            counts[int(np.argmax(raw - counts))] += 1
        while counts.sum() > total and counts.max() > 1:
            counts[int(np.argmax(counts - raw))] -= 1
        return dict(zip(self.names, counts.tolist()))

    def share_metrics(self, shares: Mapping[str, float]) -> dict[str, float]:
        """budget_share_<gen>: the fraction of this round's proposals each generator got."""
        return {f"budget_share_{n}": float(shares[n]) for n in self.names}

    def posterior_metrics(self) -> dict[str, float]:
        """budget_posterior_<gen>: posterior mean of hits per proposal after the latest update."""
        return {f"budget_posterior_{n}": self.mean(n) for n in self.names}

    # -- checkpoint ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"hit": self.hit, "new": self.new, "last_round": self.last_round}

    def load_state_dict(self, state: dict) -> None:
        for post, key in ((self.hit, "hit"), (self.new, "new")):
            for n in self.names:  # a generator added on resume starts from the prior
                post[n] = [float(v) for v in state.get(key, {}).get(n, (1.0, 1.0))]
        self.last_round = int(state.get("last_round", -1))


STATE_KEY = "budget"


def load_bandit(store, names: Sequence[str], weights: Mapping[str, float], threshold: float) -> BudgetBandit:
    """The campaign's bandit as the store last saved it (the store is the source of truth)."""
    bandit = BudgetBandit(names, weights, threshold=threshold)
    state = store.load_state(STATE_KEY)
    if state:
        bandit.load_state_dict(state)
    return bandit


def save_bandit(store, round: int, bandit: BudgetBandit) -> None:
    store.save_state(STATE_KEY, round, bandit.state_dict())
