"""Model-free pool helpers: stacking candidate features, and a diverse first batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xtalforge.acquisition.base import Picks


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
