"""The Acquirer: one `select` a round over a discrete pool, GP-Hedge across rounds.

Why not `optimize_acqf_discrete` over the whole pool: it re-evaluates the joint posterior of
(baseline, batch so far, candidate) for every candidate at every greedy step, which took 72 s for
8 picks out of 20,000 on 2 cores. Here one pick of q from N costs:

1. the screen (`screen.py`) over all N, keeping the best `shortlist`;
2. one joint posterior over (pruned baseline, pending, shortlist) and `mc_samples` fixed draws
   from it (`draws.py`), shared by every arm that `needs_draws`;
3. each arm's own batch step on the shortlist (`qlognei.py`, `ucb.py`, ...).

Candidates pending at an oracle enter every arm as pending points. Across rounds the Acquirer
adapts which arm it trusts (GP-Hedge: each arm nominates a batch, is rewarded by how good its
nominees turned out, and shares the next batch in proportion to exp(eta * total reward)). Its
state is JSON-safe for the campaign store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from xtalforge.acquisition.base import (AcquisitionArm, AcquisitionError, ArmSettings, Constraint, Picks,
                                        Round, Target)
from xtalforge.acquisition.draws import draw_round
from xtalforge.acquisition.registry import arm_names, get_arm
from xtalforge.acquisition.screen import screen_multi, screen_single
from xtalforge.model.base import SurrogateModel


class Acquirer:
    """Picks q candidates a round for one or several objectives under outcome constraints,
    aware of pending points, and learns across rounds which acquisition function to trust.

    `kinds` names registered arms (`registry.arm_names()`); more than one is a GP-Hedge
    portfolio (Hoffman, Brochu & de Freitas 2011): every arm nominates a full batch, the batch
    actually run is shared among arms by p_arm ~ (1 - mix) * softmax(eta * gain) + mix / n_arms,
    and `update` adds to each arm's gain the standardized quality of its nominees (measured value
    where known, else the refit posterior mean). Objectives are modeled outcomes; a constraint
    on a modeled outcome is an outcome constraint (smoothed feasibility on posterior draws), a
    constraint on a value known per candidate (e.g. a synthesizability score passed in `known`)
    filters the pool.
    """

    def __init__(self, objectives: Sequence[Target], constraints: Sequence[Constraint] = (),
                 kinds: Sequence[str] = ("qlognei",), shortlist: int = 512, moo_shortlist: int = 128,
                 mc_samples: int = 2048, ucb_beta: float = 2.0, hedge_eta: float = 1.0,
                 hedge_mix: float = 0.1, baseline: int = 256, seed: int = 0):
        if not objectives:
            raise AcquisitionError("name at least one objective")
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        classes = [get_arm(k) for k in kinds]  # UnknownArm (an AcquisitionError) names the known ones
        bad = [cls.name for cls in classes if not cls.fits(len(self.objectives))]
        if bad or not kinds:
            n = "one objective" if len(self.objectives) == 1 else "several objectives"
            raise AcquisitionError(f"acquisition {bad or list(kinds)} does not fit {n} "
                                   f"(use: {', '.join(arm_names(len(self.objectives)))})")
        self.kinds = list(dict.fromkeys(kinds))
        settings = ArmSettings(ucb_beta=ucb_beta)
        self.arms: dict[str, AcquisitionArm] = {k: get_arm(k)(settings) for k in self.kinds}
        self.shortlist, self.moo_shortlist = shortlist, moo_shortlist
        self.mc_samples, self.ucb_beta = mc_samples, ucb_beta
        self.hedge_eta, self.hedge_mix = hedge_eta, hedge_mix
        self.baseline, self.seed = baseline, seed
        self.gains: dict[str, float] = {k: 0.0 for k in self.kinds}
        self.nominees: dict[str, list[str]] = {}
        self.rounds = 0
        self._known: frozenset[str] = frozenset()
        self.last_screen: dict[str, float] = {}

    # -- portfolio -------------------------------------------------------------------------
    def probabilities(self) -> dict[str, float]:
        g = np.array([self.gains[k] for k in self.kinds])
        p = np.exp(self.hedge_eta * (g - g.max()))
        p = (1 - self.hedge_mix) * p / p.sum() + self.hedge_mix / len(p)
        return dict(zip(self.kinds, p.tolist()))

    def state_dict(self) -> dict:
        return {"version": 1, "kinds": self.kinds, "gains": self.gains, "nominees": self.nominees,
                "rounds": self.rounds}

    def load_state_dict(self, state: Mapping | None) -> None:
        if not state:
            return
        for k, v in dict(state.get("gains", {})).items():
            if k in self.gains:
                self.gains[k] = float(v)
        self.nominees = {k: list(v) for k, v in dict(state.get("nominees", {})).items() if k in self.gains}
        self.rounds = int(state.get("rounds", 0))

    def update(self, surrogate: SurrogateModel, features: Mapping[str, np.ndarray],
               observed: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
        """Reward each arm by its last nominees (standardized, maximization sense) under the
        refit `surrogate`; measured values replace posterior means where `observed` has them.
        Returns metrics (acq_reward_<arm>, acq_weight_<arm>) for MLflow."""
        metrics: dict[str, float] = {}
        observed = observed or {}
        for arm, ids in self.nominees.items():
            rows = [i for i in ids if i in features and np.isfinite(features[i]).all()]
            if not rows or arm not in self.gains:
                continue
            mu, _ = surrogate.predict(np.stack([features[i] for i in rows]))
            score = np.zeros(len(rows))
            for t in self.objectives:
                j = surrogate.index(t.name)
                y = surrogate.train_y[t.name]
                m, s = float(np.mean(y)), float(np.std(y)) or 1.0
                v = np.array([observed.get(cid, {}).get(t.name, np.nan) for cid in rows], dtype=float)
                v = np.where(np.isfinite(v), v, mu[:, j])
                score += t.sign * (v - m) / s
            r = float(score.mean() / len(self.objectives))
            self.gains[arm] += r
            metrics[f"acq_reward_{arm}"] = r
        self.nominees = {}
        metrics.update({f"acq_weight_{k}": v for k, v in self.probabilities().items()})
        return metrics

    # -- selection -------------------------------------------------------------------------
    def select(self, surrogate: SurrogateModel, X_pool: np.ndarray, q: int, rng: np.random.Generator,
               X_baseline: np.ndarray | None = None, X_pending: np.ndarray | None = None,
               known: Mapping[str, np.ndarray] | None = None, ids: Sequence[str] | None = None) -> Picks:
        """Indices of `q` rows of X_pool to evaluate next.

        X_baseline: points already measured (default: the surrogate's training inputs of the
        objectives); X_pending: points submitted but not back; known: per-pool-row values of
        quantities that need no model (constraints on them filter the pool); ids: pool ids,
        needed for GP-Hedge's rewards next round."""
        X_pool = np.asarray(X_pool, dtype=np.float64)
        if len(X_pool) == 0:
            raise AcquisitionError("the pool is empty: no candidates to pick from (all were picked "
                                   "already, or the generators proposed nothing new)")
        if q <= 0:
            return Picks([], [], "none")
        self._check_names(surrogate, known)
        self._known = frozenset(known or {})
        pool_idx = self._feasible_known(X_pool, known)
        if q >= len(pool_idx):
            return Picks(pool_idx.tolist(), [0.0] * len(pool_idx), "all", ["all"] * len(pool_idx))
        self.rounds += 1
        if any(arm.needs_model for arm in self.arms.values()):
            rd = self._prepare(surrogate, X_pool, pool_idx, X_baseline, X_pending)
        else:  # model-free arms alone pick from the whole pool, unscreened
            rd = self._round(surrogate, X_pool, pool_idx, np.arange(len(pool_idx)), [],
                             np.zeros((0, X_pool.shape[1])), np.zeros((0, X_pool.shape[1])))
        probs = self.probabilities()
        counts = rng.multinomial(q, [probs[k] for k in self.kinds]) if len(self.kinds) > 1 else np.array([q])
        if len(self.kinds) > 1 and ids is not None:
            # every arm nominates a full batch: that is what GP-Hedge rewards next round
            for name in self.kinds:
                pos, _ = self._pick(name, rd, q, [], rng)
                self.nominees[name] = [ids[rd.pool_index(p)] for p in pos]
        taken: list[int] = []
        vals: list[float] = []
        arms: list[str] = []
        for k in np.argsort(-counts, kind="stable"):
            if counts[k] == 0:
                continue
            name = self.kinds[int(k)]
            pos, v = self._pick(name, rd, int(counts[k]), taken, rng)
            taken += pos
            vals += v
            arms += [name] * len(pos)
        method = self.kinds[0] if len(self.kinds) == 1 else "hedge(" + ",".join(self.kinds) + ")"
        return Picks([rd.pool_index(p) for p in taken], vals, method, arms)

    def _pick(self, name: str, rd: Round, n: int, taken: Sequence[int],
              rng: np.random.Generator) -> tuple[list[int], list[float]]:
        pos, vals = self.arms[name].pick(rd, n, taken, rng)
        pos = [int(p) for p in pos]
        free = set(rd.available(taken).tolist())
        if len(pos) > n or len(set(pos)) != len(pos) or not free.issuperset(pos) or len(vals) != len(pos):
            raise AcquisitionError(f"acquisition {name!r} returned an invalid pick: {len(pos)} positions for "
                                   f"{n} asked, each once, among the {len(free)} not yet taken, one value each")
        return pos, [float(v) for v in vals]

    def _check_names(self, surrogate: SurrogateModel | None, known: Mapping | None) -> None:
        if surrogate is None:  # fine for model-free arms alone (random picks before any data)
            if any(arm.needs_model for arm in self.arms.values()):
                raise AcquisitionError(f"{', '.join(self.kinds)} need a fitted surrogate; none was given")
            return
        modeled = set(getattr(surrogate, "outcomes", []))
        for t in self.objectives:
            if t.name not in modeled:
                raise AcquisitionError(f"objective {t.name!r} has no model: no oracle has measured it "
                                       f"(modeled: {', '.join(sorted(modeled)) or 'nothing'})")
        for c in self.constraints:
            if c.name not in modeled and (known is None or c.name not in known):
                raise AcquisitionError(f"constraint on {c.name!r}: no oracle measures it and no value "
                                       f"per candidate was given")

    def _feasible_known(self, X_pool: np.ndarray, known: Mapping | None) -> np.ndarray:
        ok = np.isfinite(X_pool).all(axis=1)
        names = []
        for c in self.constraints:
            if known is not None and c.name in known:
                v = np.asarray(known[c.name], dtype=float)
                if v.shape != (len(X_pool),):
                    raise AcquisitionError(f"{c.name}: {v.shape[0] if v.ndim else 0} values for {len(X_pool)} candidates")
                with np.errstate(invalid="ignore"):
                    ok &= np.isfinite(v) & (c.slack(v) <= 0)
                names.append(f"{c.name} {c.op} {c.threshold:g}")
        if not ok.any():
            raise AcquisitionError("no candidate in the pool has finite features"
                                   + (f" and meets {', '.join(names)}" if names else ""))
        return np.flatnonzero(ok)

    def _modeled_constraints(self, surrogate: SurrogateModel) -> list[tuple[int, Constraint]]:
        """Constraints on modeled outcomes that no known per-candidate value settles."""
        return [(surrogate.index(c.name), c) for c in self.constraints
                if c.name in surrogate.outcomes and c.name not in self._known]

    def _baseline(self, surrogate: SurrogateModel, X_baseline: np.ndarray | None) -> np.ndarray:
        if X_baseline is None or len(X_baseline) == 0:
            X_baseline = np.concatenate([surrogate.train_X[t.name] for t in self.objectives])
        Xb = np.unique(np.asarray(X_baseline, dtype=np.float64), axis=0)
        return Xb[np.isfinite(Xb).all(axis=1)]

    def _round(self, surrogate: SurrogateModel, X_pool: np.ndarray, pool_idx: np.ndarray, short: np.ndarray,
               cons: list[tuple[int, Constraint]], Xb: np.ndarray, Xpend: np.ndarray) -> Round:
        return Round(surrogate=surrogate, objectives=self.objectives, constraints=cons,
                     seed=self.seed + self.rounds, pool_idx=pool_idx, short=short,
                     X_candidates=X_pool[pool_idx][short], X_baseline=Xb, X_pending=Xpend)

    def _prepare(self, surrogate: SurrogateModel, X_pool, pool_idx, X_baseline, X_pending) -> Round:
        """Screen the pool, prune the baseline, and draw joint samples once for every arm."""
        cons = self._modeled_constraints(surrogate)
        Xp = X_pool[pool_idx]
        Xb = self._baseline(surrogate, X_baseline)
        bmean, _ = surrogate.screen(Xb)  # exact means; baseline variances are not needed
        bfeas = np.ones(len(Xb), dtype=bool)
        for j, c in cons:
            bfeas &= c.slack(bmean[:, j]) <= 0
        bobj = np.stack([t.sign * bmean[:, surrogate.index(t.name)] for t in self.objectives], 1)
        best = np.where(bfeas.any(), np.where(bfeas[:, None], bobj, -np.inf).max(0), -np.inf)
        if len(self.objectives) == 1:
            short, self.last_screen = screen_single(surrogate, Xp, self.objectives[0], cons, float(best[0]),
                                                    self.shortlist, self.ucb_beta)
            keep_b = np.argsort(-np.where(bfeas, bobj[:, 0], bobj[:, 0] - 1e6))[: self.baseline]
        else:
            short = screen_multi(surrogate, Xp, self.objectives, cons, best, self.moo_shortlist)
            z = (bobj - bobj.mean(0)) / (bobj.std(0) + 1e-12)
            keep_b = np.argsort(-z.sum(1))[: self.baseline]
        Xb = Xb[keep_b]
        Xpend = np.zeros((0, Xp.shape[1])) if X_pending is None else np.asarray(X_pending, dtype=np.float64)
        Xpend = Xpend[np.isfinite(Xpend).all(axis=1)] if len(Xpend) else Xpend
        rd = self._round(surrogate, X_pool, pool_idx, short, cons, Xb, Xpend)
        if any(arm.needs_draws for arm in self.arms.values()):
            draw_round(rd, self.mc_samples)
        return rd
