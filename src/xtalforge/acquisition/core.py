"""Picking what the expensive oracle evaluates next, from a discrete pool of candidates.

Why not `optimize_acqf_discrete` over the whole pool: it re-evaluates the joint posterior of
(baseline, batch so far, candidate) for every candidate at every greedy step, which took 72 s for
8 picks out of 20,000 on 2 cores. Here one pick of q from N costs:

1. a screen over all N: posterior mean and (LOVE) variance, ranked by single-point log-EI (times
   the probability of meeting modeled constraints) and by UCB; the best `shortlist` survive;
2. one joint posterior over (pruned baseline, pending, shortlist) and `mc_samples` fixed draws
   from it (common random numbers, as BoTorch's own MC acquisition functions use);
3. exact sequential-greedy batch selection on those draws: for qLogNEI each greedy step is a
   (samples x shortlist) max and log-mean-exp, so all q steps take milliseconds.

The batch built this way is the sequential-greedy qLogNEI batch restricted to the shortlist;
benchmarks/acquisition_speed.py measures how close its qLogNEI value comes to the exhaustive one.
Several objectives use BoTorch's qLogNEHVI on a (smaller) shortlist. Candidates pending at an
oracle enter every method as pending points: their draws count as already in the batch.

Across rounds an `Acquirer` adapts which acquisition function it trusts (GP-Hedge: each arm
nominates a batch, is rewarded by how good its nominees turned out, and shares the next batch in
proportion to exp(eta * total reward)). Its state is JSON-safe for the campaign store.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

KINDS = ("qlognei", "ucb", "thompson", "random", "qlognehvi")
SINGLE_KINDS = ("qlognei", "ucb", "thompson", "random")
MULTI_KINDS = ("qlognehvi", "random")
DTYPE = torch.float64


class AcquisitionError(ValueError):
    """An acquisition request that cannot be served; the message says why in the user's terms."""


@dataclass(frozen=True)
class Target:
    """An objective: a modeled outcome to minimize or maximize."""

    name: str
    minimize: bool = True

    @property
    def sign(self) -> float:
        return -1.0 if self.minimize else 1.0


@dataclass(frozen=True)
class Constraint:
    """value `op` threshold must hold, e.g. Constraint("e_above_hull", "<=", 0.1) (eV/atom)."""

    name: str
    op: Literal["<=", ">="]
    threshold: float

    def slack(self, v):
        """<= 0 where the constraint holds (works on numpy arrays and tensors)."""
        return v - self.threshold if self.op == "<=" else self.threshold - v


@dataclass
class Picks:
    indices: list[int]
    values: list[float]  # each pick's acquisition value when it was picked (log scale for qLog*)
    method: str
    arms: list[str] = field(default_factory=list)  # which acquisition function chose each pick


# -- helpers kept from the walking skeleton ---------------------------------------------------
def farthest_point(X: np.ndarray, q: int, rng: np.random.Generator, exclude: np.ndarray | None = None) -> Picks:
    """A diverse batch with no model: greedy max-min distance in standardized feature space,
    seeded by a random point (or by the already-measured `exclude` points)."""
    n = len(X)
    q = min(q, n)
    if q == 0:
        return Picks([], [], "farthest_point")
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    if exclude is not None and len(exclude):
        E = (exclude - mu) / sd
        d = np.full(n, np.inf)
        for k in range(0, len(E), 256):  # chunks bound the (n x k x d) temporary
            d = np.minimum(d, np.min(((Z[:, None, :] - E[None, k : k + 256]) ** 2).sum(-1), axis=1))
        picks: list[int] = []
    else:
        first = int(rng.integers(n))
        picks = [first]
        d = ((Z - Z[first]) ** 2).sum(-1)
    vals = [0.0] * len(picks)
    while len(picks) < q:
        d[picks] = -1
        i = int(np.argmax(d))
        vals.append(float(np.sqrt(max(d[i], 0))))
        picks.append(i)
        d = np.minimum(d, ((Z - Z[i]) ** 2).sum(-1))
    return Picks(picks, vals, "farthest_point")


def pool_matrix(ids: Sequence[str], feats: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Stack features for `ids`, dropping those without finite features."""
    keep = [i for i in ids if i in feats and np.isfinite(feats[i]).all()]
    if not keep:
        return [], np.zeros((0, 0))
    return keep, np.stack([feats[i] for i in keep])


# -- sample-based batch selection on a shortlist ----------------------------------------------
def joint_samples(models: Sequence, X: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """`n` joint posterior draws at the rows of X, one column per model: (n, len(X), m).

    Base samples are seeded, so repeated calls give the same draws (common random numbers)."""
    from botorch.utils.sampling import draw_sobol_normal_samples

    tx = torch.as_tensor(X, dtype=DTYPE)
    out = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, sub in enumerate(models):
            post = sub.posterior(tx)
            # scrambled Sobol normals: far less Monte-Carlo error than iid draws at equal count,
            # which matters because greedy selection overfits noisy value estimates
            base = draw_sobol_normal_samples(len(X), n, dtype=DTYPE, seed=int(seed) + 7919 * k)
            base = base.reshape(torch.Size([n]) + post.base_sample_shape)
            out.append(post.rsample_from_base_samples(torch.Size([n]), base).reshape(n, len(X)))
    return torch.stack(out, -1)


def _log_feasibility(samples: torch.Tensor, cons: Sequence[tuple[int, Constraint]], eta: float = 1e-3) -> torch.Tensor:
    """Sum over modeled constraints of log sigmoid(-slack / eta): BoTorch's smoothed indicator."""
    out = torch.zeros(samples.shape[:-1], dtype=samples.dtype)
    for j, c in cons:
        out = out + torch.nn.functional.logsigmoid(-c.slack(samples[..., j]) / eta)
    return out


def greedy_lognei(L: torch.Tensor, cand: np.ndarray, start: np.ndarray, q: int) -> tuple[list[int], list[float]]:
    """Sequential-greedy qLogNEI on draws. L (S, n) holds each draw's log smoothed improvement of
    each column (feasibility included); the batch value is log mean_s max_{x in batch} exp(L_sx).
    `start` columns (pending points) are in the batch from the outset; picks come from `cand`.

    The max and mean run in linear space after one shift by max(L) (a log-sum-exp per step costs
    ten times more); a step where every remaining gain underflows falls back to log space."""
    S = L.shape[0]
    logS = math.log(S)
    c = float(L[:, cand].max()) if len(cand) else 0.0
    E = torch.exp(L - c)
    M = L[:, start].max(1).values if len(start) else torch.full((S,), -math.inf, dtype=L.dtype)
    Mexp = torch.exp(M - c)
    avail = torch.as_tensor(cand, dtype=torch.long)
    picks, vals = [], []
    for _ in range(min(q, len(avail))):
        V = torch.maximum(Mexp[:, None], E[:, avail]).mean(0)
        if float(V.max()) <= float(Mexp.mean()):  # no visible gain: rank exactly in log space
            V = torch.logsumexp(torch.maximum(M[:, None], L[:, avail]), 0) - logS
            k = int(torch.argmax(V))
            val = float(V[k])
        else:
            k = int(torch.argmax(V))
            val = math.log(float(V[k])) + c
        j = int(avail[k])
        picks.append(j)
        vals.append(val)
        M = torch.maximum(M, L[:, j])
        Mexp = torch.maximum(Mexp, E[:, j])
        avail = torch.cat([avail[:k], avail[k + 1 :]])
    return picks, vals


def greedy_qucb(U: torch.Tensor, cand: np.ndarray, start: np.ndarray, q: int) -> tuple[list[int], list[float]]:
    """Sequential-greedy qUCB on draws: U (S, n) = mean + sqrt(beta*pi/2)|draw - mean|; the batch
    value is mean_s max over the batch."""
    S = U.shape[0]
    M = U[:, start].max(1).values if len(start) else torch.full((S,), -math.inf, dtype=U.dtype)
    avail = torch.as_tensor(cand, dtype=torch.long)
    picks, vals = [], []
    for _ in range(min(q, len(avail))):
        V = torch.maximum(M[:, None], U[:, avail]).mean(0)
        k = int(torch.argmax(V))
        j = int(avail[k])
        picks.append(j)
        vals.append(float(V[k]))
        M = torch.maximum(M, U[:, j])
        avail = torch.cat([avail[:k], avail[k + 1 :]])
    return picks, vals


def thompson(F: torch.Tensor, cand: np.ndarray, q: int, first_draw: int = 0) -> tuple[list[int], list[float]]:
    """One pick per posterior draw: the argmax of draw s among candidates not yet picked.
    F (S, n) holds objective draws with infeasible entries at -inf."""
    avail = torch.as_tensor(cand, dtype=torch.long)
    picks, vals = [], []
    s = first_draw
    while len(picks) < min(q, len(cand)):
        row = F[s % F.shape[0], avail]
        k = int(torch.argmax(row))
        picks.append(int(avail[k]))
        vals.append(float(row[k]))
        avail = torch.cat([avail[:k], avail[k + 1 :]])
        s += 1
    return picks, vals


def single_point_logei(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """Analytic log expected improvement over `best` (maximization), numerically safe."""
    from botorch.acquisition.analytic import _log_ei_helper

    sd = np.maximum(std, 1e-12)
    u = torch.as_tensor((mean - best) / sd, dtype=DTYPE)
    return (_log_ei_helper(u) + torch.log(torch.as_tensor(sd, dtype=DTYPE))).numpy()


def log_pof(mean: np.ndarray, std: np.ndarray, cons: Sequence[tuple[int, Constraint]]) -> np.ndarray:
    """log P(all modeled constraints hold) under independent Gaussian marginals."""
    out = np.zeros(len(mean))
    for j, c in cons:
        u = torch.as_tensor(-c.slack(mean[:, j]) / np.maximum(std[:, j], 1e-12), dtype=DTYPE)
        out += torch.special.log_ndtr(u).numpy()
    return out


# -- the acquirer: one call per round, GP-Hedge across rounds ----------------------------------
@dataclass
class _Round:
    """What one select() call computed once and every arm shares."""

    pool_idx: np.ndarray  # rows of X_pool that passed the known constraints
    short: np.ndarray  # shortlist, as positions in pool_idx
    n_base: int
    n_pend: int
    draws: torch.Tensor | None = None  # (S, n_base + n_pend + len(short), m)
    L: torch.Tensor | None = None  # log smoothed improvement (qLogNEI)
    U: torch.Tensor | None = None  # qUCB draws
    F: torch.Tensor | None = None  # objective draws, infeasible at -inf (Thompson)
    Xb: np.ndarray | None = None
    Xpend: np.ndarray | None = None
    Xcand: np.ndarray | None = None

    @property
    def offset(self) -> int:
        return self.n_base + self.n_pend

    def cand_cols(self, taken: Sequence[int]) -> np.ndarray:
        cols = np.arange(self.offset, self.offset + len(self.short))
        return np.setdiff1d(cols, np.asarray(list(taken), dtype=int), assume_unique=True)

    def pool_index(self, col: int) -> int:
        return int(self.pool_idx[self.short[col - self.offset]])


class Acquirer:
    """Picks q candidates a round for one or several objectives under outcome constraints,
    aware of pending points, and learns across rounds which acquisition function to trust.

    `kinds` with more than one entry is a GP-Hedge portfolio (Hoffman, Brochu & de Freitas 2011):
    every arm nominates a full batch, the batch actually run is shared among arms by
    p_arm ~ (1 - mix) * softmax(eta * gain) + mix / n_arms, and `update` adds to each arm's gain
    the standardized quality of its nominees (measured value where known, else the refit
    posterior mean). Objectives are modeled outcomes; a constraint on a modeled outcome is an
    outcome constraint (smoothed feasibility on posterior draws), a constraint on a value known
    per candidate (e.g. a synthesizability score passed in `known`) filters the pool.
    """

    def __init__(self, objectives: Sequence[Target], constraints: Sequence[Constraint] = (),
                 kinds: Sequence[str] = ("qlognei",), shortlist: int = 512, moo_shortlist: int = 128,
                 mc_samples: int = 2048, ucb_beta: float = 2.0, hedge_eta: float = 1.0,
                 hedge_mix: float = 0.1, baseline: int = 256, seed: int = 0):
        if not objectives:
            raise AcquisitionError("name at least one objective")
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        allowed = SINGLE_KINDS if len(self.objectives) == 1 else MULTI_KINDS
        bad = [k for k in kinds if k not in allowed]
        if bad or not kinds:
            n = "one objective" if len(self.objectives) == 1 else "several objectives"
            raise AcquisitionError(f"acquisition {bad or list(kinds)} does not fit {n} (use: {', '.join(allowed)})")
        self.kinds = list(dict.fromkeys(kinds))
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

    def update(self, surrogate, features: Mapping[str, np.ndarray],
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
    def select(self, surrogate, X_pool: np.ndarray, q: int, rng: np.random.Generator,
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
        if self.kinds == ["random"]:
            idx = rng.choice(pool_idx, size=q, replace=False).tolist()
            return Picks([int(i) for i in idx], [0.0] * q, "random", ["random"] * q)
        rd = self._prepare(surrogate, X_pool, pool_idx, X_baseline, X_pending)
        probs = self.probabilities()
        counts = rng.multinomial(q, [probs[k] for k in self.kinds]) if len(self.kinds) > 1 else np.array([q])
        if len(self.kinds) > 1 and ids is not None:
            # every arm nominates a full batch: that is what GP-Hedge rewards next round
            for arm in self.kinds:
                cols, _ = self._run_arm(arm, rd, surrogate, q, [], rng)
                self.nominees[arm] = [ids[rd.pool_index(c)] for c in cols]
        taken: list[int] = []
        vals: list[float] = []
        arms: list[str] = []
        for k in np.argsort(-counts, kind="stable"):
            if counts[k] == 0:
                continue
            arm = self.kinds[int(k)]
            cols, v = self._run_arm(arm, rd, surrogate, int(counts[k]), taken, rng)
            taken += cols
            vals += v
            arms += [arm] * len(cols)
        method = self.kinds[0] if len(self.kinds) == 1 else "hedge(" + ",".join(self.kinds) + ")"
        return Picks([rd.pool_index(c) for c in taken], vals, method, arms)

    def _check_names(self, surrogate, known: Mapping | None) -> None:
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

    def _modeled_constraints(self, surrogate) -> list[tuple[int, Constraint]]:
        """Constraints on modeled outcomes that no known per-candidate value settles."""
        return [(surrogate.index(c.name), c) for c in self.constraints
                if c.name in surrogate.outcomes and c.name not in self._known]

    def _baseline(self, surrogate, X_baseline: np.ndarray | None) -> np.ndarray:
        if X_baseline is None or len(X_baseline) == 0:
            X_baseline = np.concatenate([surrogate.train_X[t.name] for t in self.objectives])
        Xb = np.unique(np.asarray(X_baseline, dtype=np.float64), axis=0)
        return Xb[np.isfinite(Xb).all(axis=1)]

    def _prepare(self, surrogate, X_pool, pool_idx, X_baseline, X_pending) -> _Round:
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
            short = self._screen_single(surrogate, Xp, cons, float(best[0]))
            keep_b = np.argsort(-np.where(bfeas, bobj[:, 0], bobj[:, 0] - 1e6))[: self.baseline]
        else:
            short = self._screen_multi(surrogate, Xp, cons, best)
            z = (bobj - bobj.mean(0)) / (bobj.std(0) + 1e-12)
            keep_b = np.argsort(-z.sum(1))[: self.baseline]
        Xb = Xb[keep_b]
        Xpend = np.zeros((0, Xp.shape[1])) if X_pending is None else np.asarray(X_pending, dtype=np.float64)
        Xpend = Xpend[np.isfinite(Xpend).all(axis=1)] if len(Xpend) else Xpend
        rd = _Round(pool_idx=pool_idx, short=short, n_base=len(Xb), n_pend=len(Xpend), Xb=Xb, Xpend=Xpend,
                    Xcand=Xp[short])
        if any(k in ("qlognei", "ucb", "thompson") for k in self.kinds):
            self._draw(rd, surrogate, np.concatenate([Xb, Xpend, Xp[short]]), cons)
        return rd

    def _scores(self, surrogate, mean, sd, cons, best: float):
        t = self.objectives[0]
        j = surrogate.index(t.name)
        om = t.sign * mean[:, j]
        if not np.isfinite(best):  # nothing feasible measured yet: any feasible point improves
            best = float(om.min())
        lp = log_pof(mean, sd, cons)
        return single_point_logei(om, sd[:, j], best) + lp, om + math.sqrt(self.ucb_beta) * sd[:, j] + lp, om

    def _screen_single(self, surrogate, Xp, cons, best: float) -> np.ndarray:
        """Shortlist: the best `shortlist` by single-point log-EI, a quarter as many by UCB and an
        eighth by mean. Scored first with variance upper bounds (which bound EI and UCB from
        above), then exactly on the survivors; the survivor set grows until the shortlist is
        certified: no point left out could beat its last member even at its bound."""
        K, N = self.shortlist, len(Xp)
        mean_b, sd_b = surrogate.screen(Xp)
        ei_b, ucb_b, om = self._scores(surrogate, mean_b, sd_b, cons, best)
        M = max(4 * K, 2048)
        while True:
            cand = _union([(ei_b, M), (ucb_b, M // 4), (om, K // 8)])
            mean_c, sd_c = surrogate.predict(Xp[cand])
            ei, ucb, _ = self._scores(surrogate, mean_c, sd_c, cons, best)
            rest = np.ones(N, dtype=bool)
            rest[cand] = False
            certified = not rest.any() or (np.sort(ei)[-min(K, len(ei))] >= ei_b[rest].max()
                                            and np.sort(ucb)[-min(K // 4, len(ucb))] >= ucb_b[rest].max())
            if certified or M >= N:
                break
            M *= 4
        self.last_screen = {"rescored": float(len(cand)), "certified": float(certified)}
        local = _union([(ei, K), (ucb, K // 4), (om[cand], K // 8)])
        return cand[local]

    def _screen_multi(self, surrogate, Xp, cons, best: np.ndarray) -> np.ndarray:
        """Shortlist for several objectives: per objective the best by single-point log-EI, plus
        the points nearest the Pareto front of the posterior means."""
        K = self.moo_shortlist
        mean_b, sd_b = surrogate.screen(Xp)
        parts, means = [], []
        for k, t in enumerate(self.objectives):
            j = surrogate.index(t.name)
            om = t.sign * mean_b[:, j]
            b = best[k] if np.isfinite(best[k]) else float(om.min())
            parts.append((single_point_logei(om, sd_b[:, j], b) + log_pof(mean_b, sd_b, cons), 4 * K))
            means.append((om - om.mean()) / (om.std() + 1e-12))
        Z = np.stack(means, 1)
        parts.append((Z.sum(1), 4 * K))
        cand = _union(parts)
        mean_c, sd_c = surrogate.predict(Xp[cand])
        lp = log_pof(mean_c, sd_c, cons)
        local_parts = []
        for k, t in enumerate(self.objectives):
            j = surrogate.index(t.name)
            om = t.sign * mean_c[:, j]
            b = best[k] if np.isfinite(best[k]) else float(om.min())
            local_parts.append((single_point_logei(om, sd_c[:, j], b) + lp, K // (len(self.objectives) + 1)))
        local_parts.append((_pareto_rank_score(Z[cand]) + lp, K))
        return cand[_union(local_parts, limit=K)]

    def _draw(self, rd: _Round, surrogate, X_all: np.ndarray, cons) -> None:
        from botorch.utils.safe_math import log_softplus

        t = self.objectives[0]
        draws = joint_samples(surrogate.models, X_all, self.mc_samples, self.seed + self.rounds)
        obj = t.sign * draws[..., surrogate.index(t.name)]
        feas = torch.ones(obj.shape, dtype=torch.bool)
        for j, c in cons:
            feas &= c.slack(draws[..., j]) <= 0
        base = obj[:, : rd.n_base]
        best = torch.where(feas[:, : rd.n_base], base, torch.full_like(base, -math.inf)).max(1).values
        best = torch.where(torch.isfinite(best), best, obj.min(1).values)
        rd.L = log_softplus(obj - best[:, None], tau=1e-6) + _log_feasibility(draws, cons)
        mu = obj.mean(0, keepdim=True)
        U = mu + math.sqrt(self.ucb_beta * math.pi / 2) * (obj - mu).abs()
        rd.U = torch.where(feas, U, U.min() - 1.0)
        rd.F = torch.where(feas, obj, torch.full_like(obj, -math.inf))
        rd.draws = draws

    def _run_arm(self, arm: str, rd: _Round, surrogate, n: int, taken: Sequence[int],
                 rng: np.random.Generator) -> tuple[list[int], list[float]]:
        cand = rd.cand_cols(taken)
        start = np.concatenate([np.arange(rd.n_base, rd.offset), np.asarray(list(taken), dtype=int)]).astype(int)
        if arm == "qlognei":
            return greedy_lognei(rd.L, cand, start, n)
        if arm == "ucb":
            return greedy_qucb(rd.U, cand, start, n)
        if arm == "thompson":
            return thompson(rd.F, cand, n, first_draw=len(taken))
        if arm == "random":
            cols = rng.choice(cand, size=min(n, len(cand)), replace=False)
            return [int(c) for c in cols], [0.0] * len(cols)
        if arm == "qlognehvi":
            return self._qlognehvi(rd, surrogate, n, cand, taken)
        raise AcquisitionError(f"unknown acquisition {arm!r} (have: {', '.join(KINDS)})")

    def _qlognehvi(self, rd: _Round, surrogate, n: int, cand: np.ndarray, taken: Sequence[int]):
        """Sequential-greedy BoTorch qLogNEHVI over the shortlist."""
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
        from botorch.sampling import SobolQMCNormalSampler

        cons = self._modeled_constraints(surrogate)
        idx = [surrogate.index(t.name) for t in self.objectives]
        signs = torch.tensor([t.sign for t in self.objectives], dtype=DTYPE)
        bmean, _ = surrogate.predict(rd.Xb)
        bobj = bmean[:, idx] * signs.numpy()
        span = np.maximum(bobj.max(0) - bobj.min(0), 1e-3)
        ref = torch.as_tensor(bobj.min(0) - 0.1 * span, dtype=DTYPE)
        Xc = torch.as_tensor(rd.Xcand, dtype=DTYPE)
        pend = torch.as_tensor(rd.Xpend, dtype=DTYPE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acqf = qLogNoisyExpectedHypervolumeImprovement(
                model=surrogate.model, ref_point=ref, X_baseline=torch.as_tensor(rd.Xb, dtype=DTYPE),
                sampler=SobolQMCNormalSampler(torch.Size([128]), seed=self.seed + self.rounds),
                objective=WeightedMCMultiOutputObjective(signs, outcomes=idx, num_outcomes=len(surrogate.outcomes)),
                constraints=[(lambda Y, j=j, c=c: c.slack(Y[..., j])) for j, c in cons] or None,
                X_pending=None, prune_baseline=True, cache_pending=True)
            picked = [int(c) - rd.offset for c in taken]
            avail = [int(c) - rd.offset for c in cand]
            cols, vals = [], []
            for _ in range(min(n, len(avail))):
                P = torch.cat([pend, Xc[picked]]) if len(picked) or len(pend) else None
                acqf.set_X_pending(P)
                with torch.no_grad():
                    v = torch.cat([acqf(Xc[avail[i : i + 64]].unsqueeze(-2)) for i in range(0, len(avail), 64)])
                k = int(torch.argmax(v))
                picked.append(avail[k])
                cols.append(avail[k] + rd.offset)
                vals.append(float(v[k]))
                avail.pop(k)
        return cols, vals


def _union(parts: Sequence[tuple[np.ndarray, int]], limit: int | None = None) -> np.ndarray:
    """Indices of the top-n of each score array, in order of first appearance, deduplicated."""
    out: list[int] = []
    seen: set[int] = set()
    for score, n in parts:
        top = np.argpartition(-score, min(n, len(score)) - 1)[:n] if 0 < n < len(score) else np.arange(len(score))
        for i in top[np.argsort(-score[top], kind="stable")]:
            if int(i) not in seen:
                seen.add(int(i))
                out.append(int(i))
                if limit is not None and len(out) >= limit:
                    return np.asarray(out, dtype=int)
    return np.asarray(out, dtype=int)


def _pareto_rank_score(Y: np.ndarray) -> np.ndarray:
    """Higher for points nearer the first non-dominated front of Y (maximization): minus the
    number of points that dominate each row (counted in chunks to bound memory)."""
    n = len(Y)
    dominated_by = np.zeros(n)
    for i in range(0, n, 512):
        a = Y[i : i + 512, None, :]
        dom = (Y[None] >= a).all(-1) & (Y[None] > a).any(-1)
        dominated_by[i : i + 512] = dom.sum(1)
    return -dominated_by


def acquire(kind: str, model, X_pool: np.ndarray, X_train: np.ndarray, q: int, rng: np.random.Generator,
            X_pending: np.ndarray | None = None, objective: str | None = None, minimize: bool = False) -> Picks:
    """One-shot pick with a single acquisition function over a fitted `Surrogate` (its first
    outcome by default, maximized unless `minimize`)."""
    n = min(q, len(X_pool))
    if n == 0:
        return Picks([], [], kind)
    if kind == "random" or model is None:
        return Picks(rng.choice(len(X_pool), size=n, replace=False).tolist(), [0.0] * n, "random")
    acq = Acquirer([Target(objective or model.outcomes[0], minimize=minimize)], kinds=[kind])
    return acq.select(model, X_pool, n, rng, X_baseline=X_train, X_pending=X_pending)
