"""The large-pool screen: which few hundred of N candidates the batch step considers.

Every candidate gets a posterior mean and a (LOVE-style) variance upper bound, is ranked by
single-point log-EI (times the probability of meeting the modeled constraints), by UCB and by the
mean, and the best `shortlist` survive. Scores from variance upper bounds are upper bounds of EI
and UCB, so a point left out at its bound could not have made the shortlist exactly: the screen
rescores a growing survivor set exactly until that holds ("certified").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from xtalforge.acquisition.base import Constraint, Target
from xtalforge.model.base import SurrogateModel


def single_point_logei(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """Analytic log expected improvement over `best` (maximization), numerically safe."""
    import torch
    from botorch.acquisition.analytic import _log_ei_helper

    sd = np.maximum(std, 1e-12)
    u = torch.as_tensor((mean - best) / sd, dtype=torch.float64)
    return (_log_ei_helper(u) + torch.log(torch.as_tensor(sd, dtype=torch.float64))).numpy()


def log_pof(mean: np.ndarray, std: np.ndarray, cons: Sequence[tuple[int, Constraint]]) -> np.ndarray:
    """log P(all modeled constraints hold) under independent Gaussian marginals."""
    import torch

    out = np.zeros(len(mean))
    for j, c in cons:
        u = torch.as_tensor(-c.slack(mean[:, j]) / np.maximum(std[:, j], 1e-12), dtype=torch.float64)
        out += torch.special.log_ndtr(u).numpy()
    return out


def _scores(surrogate: SurrogateModel, objective: Target, mean: np.ndarray, sd: np.ndarray,
            cons: Sequence[tuple[int, Constraint]], best: float, ucb_beta: float):
    j = surrogate.index(objective.name)
    om = objective.sign * mean[:, j]
    if not np.isfinite(best):  # nothing feasible measured yet: any feasible point improves
        best = float(om.min())
    lp = log_pof(mean, sd, cons)
    return single_point_logei(om, sd[:, j], best) + lp, om + math.sqrt(ucb_beta) * sd[:, j] + lp, om


def screen_single(surrogate: SurrogateModel, X: np.ndarray, objective: Target,
                  cons: Sequence[tuple[int, Constraint]], best: float, shortlist: int,
                  ucb_beta: float) -> tuple[np.ndarray, dict[str, float]]:
    """Shortlist (rows of X) for one objective: the best `shortlist` by single-point log-EI, a
    quarter as many by UCB and an eighth by mean; and what the screen did ({rescored,
    certified}). `best` is the incumbent (maximization sense; -inf when none is feasible).

    Scored first with variance upper bounds, then exactly on the survivors; the survivor set
    grows until no point left out could beat the shortlist's last member even at its bound."""
    K, N = shortlist, len(X)
    mean_b, sd_b = surrogate.screen(X)
    ei_b, ucb_b, om = _scores(surrogate, objective, mean_b, sd_b, cons, best, ucb_beta)
    M = max(4 * K, 2048)
    while True:
        cand = top_union([(ei_b, M), (ucb_b, M // 4), (om, K // 8)])
        mean_c, sd_c = surrogate.predict(X[cand])
        ei, ucb, _ = _scores(surrogate, objective, mean_c, sd_c, cons, best, ucb_beta)
        rest = np.ones(N, dtype=bool)
        rest[cand] = False
        certified = not rest.any() or (np.sort(ei)[-min(K, len(ei))] >= ei_b[rest].max()
                                        and np.sort(ucb)[-min(K // 4, len(ucb))] >= ucb_b[rest].max())
        if certified or M >= N:
            break
        M *= 4
    local = top_union([(ei, K), (ucb, K // 4), (om[cand], K // 8)])
    return cand[local], {"rescored": float(len(cand)), "certified": float(certified)}


def screen_multi(surrogate: SurrogateModel, X: np.ndarray, objectives: Sequence[Target],
                 cons: Sequence[tuple[int, Constraint]], best: np.ndarray, shortlist: int) -> np.ndarray:
    """Shortlist (rows of X) for several objectives: per objective the best by single-point
    log-EI, plus the points nearest the Pareto front of the posterior means. `best` holds each
    objective's incumbent (maximization sense; -inf where none is feasible)."""
    K = shortlist
    mean_b, sd_b = surrogate.screen(X)
    parts, means = [], []
    for k, t in enumerate(objectives):
        j = surrogate.index(t.name)
        om = t.sign * mean_b[:, j]
        b = best[k] if np.isfinite(best[k]) else float(om.min())
        parts.append((single_point_logei(om, sd_b[:, j], b) + log_pof(mean_b, sd_b, cons), 4 * K))
        means.append((om - om.mean()) / (om.std() + 1e-12))
    Z = np.stack(means, 1)
    parts.append((Z.sum(1), 4 * K))
    cand = top_union(parts)
    mean_c, sd_c = surrogate.predict(X[cand])
    lp = log_pof(mean_c, sd_c, cons)
    local_parts = []
    for k, t in enumerate(objectives):
        j = surrogate.index(t.name)
        om = t.sign * mean_c[:, j]
        b = best[k] if np.isfinite(best[k]) else float(om.min())
        local_parts.append((single_point_logei(om, sd_c[:, j], b) + lp, K // (len(objectives) + 1)))
    local_parts.append((pareto_rank_score(Z[cand]) + lp, K))
    return cand[top_union(local_parts, limit=K)]


def top_union(parts: Sequence[tuple[np.ndarray, int]], limit: int | None = None) -> np.ndarray:
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


def pareto_rank_score(Y: np.ndarray) -> np.ndarray:
    """Higher for points nearer the first non-dominated front of Y (maximization): minus the
    number of points that dominate each row (counted in chunks to bound memory)."""
    n = len(Y)
    dominated_by = np.zeros(n)
    for i in range(0, n, 512):
        a = Y[i : i + 512, None, :]
        dom = (Y[None] >= a).all(-1) & (Y[None] > a).any(-1)
        dominated_by[i : i + 512] = dom.sum(1)
    return -dominated_by
