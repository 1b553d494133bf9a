"""Positive-unlabeled bagging (Mordelet & Vert 2014) with decision trees, stored as plain arrays.

Known (synthesized) materials are the positives P; hypothetical ones are unlabeled U, a mix
of unsynthesizable and not-yet-synthesized. Each bag trains a tree on all of P against a
random draw of |P| from U (as in Jang et al.'s CLscore, which bags graph networks the same
way), so no single draw of "negatives" decides the score. The score of a composition is the
mean over trees of the tree's positive-class probability: in [0, 1], and >= 0.5 means the
trees side with the known materials, the threshold CLscore uses.

Trees are exported to flat numpy arrays (children, split feature, threshold, leaf value) so a
saved model is an .npz with no pickled objects; prediction is a vectorized walk in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TreeEnsemble:
    """Decision trees laid end to end: node i of tree t is row offsets[t] + i."""

    left: np.ndarray  # int32, -1 at a leaf (child indices are local to the tree)
    right: np.ndarray  # int32
    feature: np.ndarray  # int32, -2 at a leaf
    threshold: np.ndarray  # float64; go left when x[feature] <= threshold
    value: np.ndarray  # float64, P(positive) at each node
    offsets: np.ndarray  # int64, first row of each tree

    @property
    def n_trees(self) -> int:
        return len(self.offsets)

    def predict_each(self, X: np.ndarray) -> np.ndarray:
        """(n_trees, n_samples) leaf values."""
        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        node = np.repeat(self.offsets[:, None], n, axis=1)  # global row per (tree, sample)
        while True:
            inner = self.left[node] >= 0
            if not inner.any():
                break
            t, s = np.nonzero(inner)
            g = node[t, s]
            go_left = X[s, self.feature[g]] <= self.threshold[g]
            base = self.offsets[t]
            node[t, s] = base + np.where(go_left, self.left[g], self.right[g])
        return self.value[node]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Mean positive-class probability over trees, shape (n_samples,)."""
        if len(X) == 0:
            return np.zeros(0)
        return self.predict_each(X).mean(axis=0)

    @classmethod
    def from_sklearn(cls, trees: list) -> TreeEnsemble:
        """From fitted sklearn DecisionTreeClassifiers trained on labels {0, 1}."""
        parts = {k: [] for k in ("left", "right", "feature", "threshold", "value")}
        offsets, start = [], 0
        for clf in trees:
            t = clf.tree_
            classes = list(clf.classes_)
            v = t.value[:, 0, :]
            v = v / np.clip(v.sum(axis=1, keepdims=True), 1e-12, None)
            pos = v[:, classes.index(1)] if 1 in classes else np.zeros(t.node_count)
            parts["left"].append(t.children_left.astype(np.int32))
            parts["right"].append(t.children_right.astype(np.int32))
            parts["feature"].append(t.feature.astype(np.int32))
            parts["threshold"].append(t.threshold.astype(np.float64))
            parts["value"].append(pos.astype(np.float64))
            offsets.append(start)
            start += t.node_count
        return cls(**{k: np.concatenate(v) for k, v in parts.items()}, offsets=np.asarray(offsets, dtype=np.int64))

    def arrays(self, prefix: str = "tree_") -> dict[str, np.ndarray]:
        return {f"{prefix}{k}": getattr(self, k) for k in ("left", "right", "feature", "threshold", "value", "offsets")}

    @classmethod
    def from_arrays(cls, d, prefix: str = "tree_") -> TreeEnsemble:
        out = cls(**{k: np.asarray(d[f"{prefix}{k}"]) for k in ("left", "right", "feature", "threshold", "value", "offsets")})
        out.validate()
        return out

    def validate(self) -> None:
        """A corrupt file must fail here, not index out of bounds mid-prediction."""
        n = len(self.left)
        if not (len(self.right) == len(self.feature) == len(self.threshold) == len(self.value) == n):
            raise ValueError("tree arrays differ in length")
        if len(self.offsets) == 0 or self.offsets.min() < 0 or self.offsets.max() >= n:
            raise ValueError("tree offsets out of range")
        ends = np.append(self.offsets[1:], n)
        for start, end in zip(self.offsets, ends):
            sl = slice(start, end)
            inner = self.left[sl] >= 0
            size = end - start
            if (self.left[sl][inner] >= size).any() or (self.right[sl][inner] >= size).any() or (self.right[sl][inner] < 0).any():
                raise ValueError("tree child index out of range")
            if (self.feature[sl][inner] < 0).any():
                raise ValueError("tree split on a negative feature index")
        if not np.isfinite(self.value).all() or (self.value < 0).any() or (self.value > 1).any():
            raise ValueError("tree leaf values outside [0, 1]")


@dataclass
class PUResult:
    ensemble: TreeEnsemble
    oob_unlabeled: np.ndarray  # out-of-bag score of each unlabeled row (NaN if never out of bag)
    n_positive: int
    n_unlabeled: int


def fit_pu_bagging(X_pos: np.ndarray, X_unl: np.ndarray, n_bags: int = 100, seed: int = 0,
                   max_features: str | float = "sqrt", min_samples_leaf: int = 1,
                   max_depth: int | None = None) -> PUResult:
    """Transductive PU bagging: each bag is P against |P| unlabeled drawn without replacement
    (all of U when U is smaller); the unlabeled rows not drawn get that tree's out-of-bag score."""
    from sklearn.tree import DecisionTreeClassifier

    X_pos, X_unl = np.asarray(X_pos, float), np.asarray(X_unl, float)
    n_p, n_u = len(X_pos), len(X_unl)
    if n_p < 2 or n_u < 2:
        raise ValueError(f"need at least 2 positive and 2 unlabeled examples, got {n_p} and {n_u}")
    rng = np.random.default_rng(seed)
    k = min(n_p, n_u)
    trees, oob_sum, oob_n = [], np.zeros(n_u), np.zeros(n_u)
    y = np.r_[np.ones(n_p), np.zeros(k)]
    for b in range(n_bags):
        draw = rng.choice(n_u, size=k, replace=False)
        clf = DecisionTreeClassifier(max_features=max_features, min_samples_leaf=min_samples_leaf,
                                     max_depth=max_depth, random_state=int(rng.integers(2**31 - 1)))
        clf.fit(np.vstack([X_pos, X_unl[draw]]), y)
        trees.append(clf)
        out = np.ones(n_u, bool)
        out[draw] = False
        if out.any():
            proba = clf.predict_proba(X_unl[out])
            oob_sum[out] += proba[:, list(clf.classes_).index(1)]
            oob_n[out] += 1
    with np.errstate(invalid="ignore"):
        oob = np.where(oob_n > 0, oob_sum / np.maximum(oob_n, 1), np.nan)
    return PUResult(TreeEnsemble.from_sklearn(trees), oob, n_p, n_u)
