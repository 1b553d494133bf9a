"""The learned synthesizability model: PU-bagged trees on composition features.

Implements the SynthesizabilityModel role (`name`, `score(candidates) -> P in [0, 1]`), plus
`score_formulas`, cross-validation, and save/load as a single .npz (arrays and a JSON header;
loaded with allow_pickle=False, so a model file cannot run code).
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Composition

from xtalforge.synthesis.composition import parse_formula
from xtalforge.synthesis.features import FEATURES_VERSION, feature_names, featurize
from xtalforge.synthesis.pu import TreeEnsemble, fit_pu_bagging
from xtalforge.types import Candidate

FORMAT = "xtalforge-synth-pu/1"


def _unique(comps: Sequence[Composition]) -> list[Composition]:
    seen: dict[str, Composition] = {}
    for c in comps:
        red = c.element_composition.reduced_composition
        seen.setdefault(red.reduced_formula, red)
    return list(seen.values())


class PUSynthesizabilityModel:
    """P(synthesizable) from composition, learned from known (positive) and hypothetical
    (unlabeled) materials. Structure is not used: two polymorphs get the same score."""

    name = "pu_bagging"

    def __init__(self, ensemble: TreeEnsemble, meta: dict | None = None):
        self.ensemble = ensemble
        self.meta = dict(meta or {})

    # -- training ----------------------------------------------------------------------------
    @classmethod
    def fit(cls, positives: Sequence[Composition], unlabeled: Sequence[Composition], n_bags: int = 100,
            seed: int = 0, min_samples_leaf: int = 1) -> PUSynthesizabilityModel:
        """Train on unique reduced formulas. A formula in both sets counts as positive only:
        it is known, whatever else says it is hypothetical."""
        pos = _unique(positives)
        known = {c.reduced_formula for c in pos}
        unl = [c for c in _unique(unlabeled) if c.reduced_formula not in known]
        t = time.perf_counter()
        res = fit_pu_bagging(featurize(pos), featurize(unl), n_bags=n_bags, seed=seed,
                             min_samples_leaf=min_samples_leaf)
        meta = {"format": FORMAT, "features_version": FEATURES_VERSION, "feature_names": feature_names(),
                "n_positive": res.n_positive, "n_unlabeled": res.n_unlabeled, "n_bags": n_bags, "seed": seed,
                "min_samples_leaf": min_samples_leaf, "fit_seconds": round(time.perf_counter() - t, 3),
                "oob_unlabeled_mean": float(np.nanmean(res.oob_unlabeled)) if res.oob_unlabeled.size else None}
        return cls(res.ensemble, meta)

    # -- scoring -----------------------------------------------------------------------------
    def score_compositions(self, comps: Sequence[Composition]) -> np.ndarray:
        """P(synthesizable) per composition, float64 in [0, 1]."""
        if not comps:
            return np.zeros(0)
        return np.clip(self.ensemble.predict(featurize(list(comps))), 0.0, 1.0)

    def score(self, candidates: Sequence[Candidate]) -> np.ndarray:
        return self.score_compositions([c.structure.composition.element_composition for c in candidates])

    def score_formulas(self, formulas: Sequence[str]) -> np.ndarray:
        """ValueError naming the first unparsable formula (0-based position)."""
        comps = []
        for i, f in enumerate(formulas):
            try:
                comps.append(parse_formula(f))
            except ValueError as err:
                raise ValueError(f"formula {i}: {err}") from None
        return self.score_compositions(comps)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One .npz file (the suffix is added when missing)."""
        p = Path(path)
        if p.suffix != ".npz":
            p = p.with_name(p.name + ".npz")
        p.parent.mkdir(parents=True, exist_ok=True)
        header = np.array(json.dumps(self.meta, sort_keys=True))
        with p.open("wb") as fh:
            np.savez_compressed(fh, meta=header, **self.ensemble.arrays())
        return p

    @classmethod
    def load(cls, path: str | Path) -> PUSynthesizabilityModel:
        p = Path(path)
        if not p.is_file() and Path(str(p) + ".npz").is_file():
            p = Path(str(p) + ".npz")
        if not p.is_file():
            raise FileNotFoundError(f"synthesizability model {p} does not exist")
        try:
            with np.load(p, allow_pickle=False) as d:
                meta = json.loads(str(d["meta"]))
                ens = TreeEnsemble.from_arrays(d)
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"{p} is not a synthesizability model ({err})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{p}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("features_version") != FEATURES_VERSION or meta.get("feature_names") != feature_names():
            raise ValueError(f"{p} was trained on features {meta.get('features_version')!r}; this xtalforge "
                             f"computes {FEATURES_VERSION!r}: retrain it with `xtalforge synth train`")
        if int(ens.feature.max()) >= len(feature_names()):
            raise ValueError(f"{p}: a tree splits on a feature that does not exist")
        return cls(ens, meta)


def cross_validate(positives: Sequence[Composition], unlabeled: Sequence[Composition], folds: int = 5,
                   n_bags: int = 100, seed: int = 0) -> dict[str, float]:
    """K-fold PU ROC AUC: train on k-1 folds of P and U, rank the held-out P against the
    held-out U. U holds some synthesizable materials, so this understates the AUC against true
    negatives (Elkan & Noto 2008); it is the number a PU model can honestly report."""
    from sklearn.metrics import roc_auc_score

    pos = _unique(positives)
    known = {c.reduced_formula for c in pos}
    unl = [c for c in _unique(unlabeled) if c.reduced_formula not in known]
    Xp, Xu = featurize(pos), featurize(unl)
    rng = np.random.default_rng(seed)
    fp, fu = rng.permutation(len(Xp)) % folds, rng.permutation(len(Xu)) % folds
    aucs, p_pos, p_unl = [], np.zeros(len(Xp)), np.zeros(len(Xu))
    for k in range(folds):
        res = fit_pu_bagging(Xp[fp != k], Xu[fu != k], n_bags=n_bags, seed=seed + k)
        sp, su = res.ensemble.predict(Xp[fp == k]), res.ensemble.predict(Xu[fu == k])
        p_pos[fp == k], p_unl[fu == k] = sp, su
        aucs.append(roc_auc_score(np.r_[np.ones(len(sp)), np.zeros(len(su))], np.r_[sp, su]))
    return {"roc_auc_mean": float(np.mean(aucs)), "roc_auc_std": float(np.std(aucs)), "folds": folds,
            "n_positive": len(Xp), "n_unlabeled": len(Xu),
            "recall_at_0.5": float((p_pos >= 0.5).mean()), "unlabeled_frac_at_0.5": float((p_unl >= 0.5).mean())}


def synthetic_unlabeled(positives: Sequence[Composition], n: int, seed: int = 0,
                        max_elements: int = 4, max_count: int = 8) -> list[Composition]:
    """Artificial hypothetical formulas, as SynthNN draws its unlabeled set: elements sampled by
    how often they occur among the positives, 2..max_elements of them, counts 1..max_count.
    Used when the user gives no unlabeled file; formulas that are known are skipped."""
    rng = np.random.default_rng(seed)
    known = {c.reduced_formula for c in positives}
    counts: dict[str, float] = {}
    for c in positives:
        for el in c.elements:
            counts[el.symbol] = counts.get(el.symbol, 0.0) + 1.0
    if len(counts) < 2:
        raise ValueError("the known materials span fewer than 2 elements; give --unlabeled")
    els = sorted(counts)
    w = np.array([counts[e] for e in els])
    w /= w.sum()
    out: dict[str, Composition] = {}
    for _ in range(20 * n):
        if len(out) >= n:
            break
        k = int(rng.integers(2, min(max_elements, len(els)) + 1))
        pick = rng.choice(len(els), size=k, replace=False, p=w)
        comp = Composition({els[i]: int(rng.integers(1, max_count + 1)) for i in pick}).reduced_composition
        if comp.reduced_formula not in known:
            out.setdefault(comp.reduced_formula, comp)
    return list(out.values())
