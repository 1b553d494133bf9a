"""Picking what the expensive oracle evaluates next, from a discrete pool of candidates."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Picks:
    indices: list[int]
    values: list[float]  # the acquisition value of each pick (its marginal gain when greedy)
    method: str


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
        d = np.min(((Z[:, None, :] - E[None]) ** 2).sum(-1), axis=1)
        picks = []
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


def acquire(
    kind: str,
    model,
    X_pool: np.ndarray,
    X_train: np.ndarray,
    q: int,
    rng: np.random.Generator,
    X_pending: np.ndarray | None = None,
    prefilter: int = 2048,
) -> Picks:
    """Pick `q` rows of X_pool to maximize the model's target.

    qLogNEI is greedy-sequential over the pool, each pick conditioned on the earlier ones and on
    the pending points (fantasized, not waited for). Past `prefilter` candidates the pool is
    first cut to the best by upper confidence bound, which keeps the exhaustive pass small.
    """
    n = len(X_pool)
    q = min(q, n)
    if q == 0:
        return Picks([], [], kind)
    if kind == "random" or model is None:
        idx = rng.choice(n, size=q, replace=False).tolist()
        return Picks(idx, [0.0] * q, "random")

    from xtalforge.oracles.surrogate import predict

    mean, std = predict(model, X_pool)
    if kind == "ucb":
        beta = 2.0
        order = np.argsort(-(mean + beta * std))[:q]
        return Picks(order.tolist(), (mean + beta * std)[order].tolist(), "ucb")
    if kind == "thompson":
        from xtalforge.oracles.surrogate import predict as _p  # noqa: F401

        picks: list[int] = []
        with torch.no_grad():
            tx = torch.as_tensor(X_pool[np.argsort(-(mean + 2 * std))[: min(n, prefilter)]], dtype=torch.float64)
            cand_idx = np.argsort(-(mean + 2 * std))[: min(n, prefilter)]
            samples = model.posterior(tx).rsample(torch.Size([q])).squeeze(-1).numpy()
        for s in samples:
            for j in np.argsort(-s):
                if int(cand_idx[j]) not in picks:
                    picks.append(int(cand_idx[j]))
                    break
        return Picks(picks, [0.0] * len(picks), "thompson")

    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.optim import optimize_acqf_discrete

    keep = np.arange(n)
    if n > prefilter:
        keep = np.argsort(-(mean + 2.0 * std))[:prefilter]
    choices = torch.as_tensor(X_pool[keep], dtype=torch.float64)
    pend = None
    if X_pending is not None and len(X_pending):
        pend = torch.as_tensor(X_pending, dtype=torch.float64)
    acqf = qLogNoisyExpectedImprovement(
        model=model, X_baseline=torch.as_tensor(X_train, dtype=torch.float64), X_pending=pend, prune_baseline=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cand, vals = optimize_acqf_discrete(acqf, q=q, choices=choices, max_batch_size=1024, unique=True)
    # map picked rows back to pool indices (exact row match on the chosen subset)
    picked: list[int] = []
    sub = choices.numpy()
    for row in cand.numpy():
        hits = np.where(np.all(np.isclose(sub, row[None, :]), axis=1))[0]
        for h in hits:
            if int(keep[h]) not in picked:
                picked.append(int(keep[h]))
                break
    return Picks(picked, [float(v) for v in vals.reshape(-1)][: len(picked)], "qlognei")


def pool_matrix(ids: Sequence[str], feats: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Stack features for `ids`, dropping those without finite features."""
    keep = [i for i in ids if i in feats and np.isfinite(feats[i]).all()]
    if not keep:
        return [], np.zeros((0, 0))
    return keep, np.stack([feats[i] for i in keep])
