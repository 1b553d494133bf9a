"""Composition features for the synthesizability model.

Three groups, all from data that ship with the installed packages (nothing is downloaded):
- Magpie statistics (Ward et al. 2016): fraction-weighted mean, mean absolute deviation, min,
  max and range of 22 elemental properties, read from SMACT's copy of the Magpie table;
- chemistry priors: the most probable charge-neutral oxidation-state assignment under the ICSD
  oxidation-state frequencies (SMACT's ICSD-24 counts), whether it passes the Pauling
  electronegativity ordering, ionic character, and stoichiometry norms;
- atomic fractions over elements H..Fm, the input SynthNN learns its atom embedding from.

The feature list is versioned: a saved model records `FEATURES_VERSION` and its feature names,
and refuses to score with a different featurizer.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
from pymatgen.core import Composition, Element

from xtalforge.synthesis.composition import icsd_oxidation_counts

FEATURES_VERSION = "comp-v1"  # bump when feature_names() or their meaning changes
MAX_Z = 100  # atomic fractions up to Fm
_STATS = ("mean", "avgdev", "min", "max", "range")
_NO_ASSIGNMENT = -30.0  # log-probability reported when no neutral assignment exists
_MAX_STATES = 6  # most frequent oxidation states per element considered


@lru_cache(maxsize=1)
def _magpie() -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Property names and a per-element vector; missing values are the column mean."""
    with resources.files("smact").joinpath("data/magpie.csv").open(encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    def num(v: str | None) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return np.nan

    key = next(iter(rows[0]))  # the element-symbol column ("Element" or "element")
    cols = [k for k in rows[0] if k != key]
    table = np.array([[num(r[k]) for k in cols] for r in rows])
    keep = ~np.isnan(table).all(axis=0)  # a non-numeric column (if any) carries no property
    names, table = tuple(k for k, ok in zip(cols, keep) if ok), table[:, keep]
    col_mean = np.nanmean(table, axis=0)
    table = np.where(np.isnan(table), col_mean, table)
    return names, {r[key]: table[i] for i, r in enumerate(rows)} | {"_mean": col_mean}


@lru_cache(maxsize=1)
def _log_shares() -> dict[str, list[tuple[int, float]]]:
    """Per element: its most frequent ICSD oxidation states with log(share of occurrences)."""
    out = {}
    for el, counts in icsd_oxidation_counts().items():
        tot = sum(counts.values())
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:_MAX_STATES]
        out[el] = [(q, math.log(c / tot)) for q, c in top]
    return out


def feature_names() -> list[str]:
    props, _ = _magpie()
    names = [f"magpie_{s}_{p}" for p in props for s in _STATS]
    names += ["n_elements", "n_atoms_reduced_log", "frac_max", "frac_min",
              "norm_2", "norm_3", "norm_5", "norm_10", "intermetallic", "metal_fraction",
              "ox_neutral_exists", "ox_mixed_possible", "ox_best_logp", "ox_best_logp_pauling", "ox_n_neutral_log",
              "ox_best_max_abs_q", "ox_best_mean_abs_q", "ionic_char_max", "ionic_char_mean"]
    names += [f"frac_{Element.from_Z(z).symbol}" for z in range(1, MAX_Z + 1)]
    return names


def _oxidation_features(comp: Composition) -> list[float]:
    """Best charge-neutral assignment (one state per element) under ICSD frequencies, and
    whether a mixed-valence one exists (the total charge can cross zero: Fe3O4)."""
    shares = _log_shares()
    els = [el.symbol for el in comp.elements]
    amounts = np.array([comp[e] for e in els], dtype=float)
    none = [0.0, 0.0, _NO_ASSIGNMENT, _NO_ASSIGNMENT, 0.0, 0.0, 0.0]
    if len(els) == 1:  # an element: charge 0, trivially neutral
        return [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # charge 0 in a compound is the ICSD's label for metallic bonding; allow it only there
    metallic = all(Element(e).is_metal or Element(e).is_metalloid for e in els)
    options = [[(q, v) for q, v in shares.get(e, []) if q != 0 or metallic] for e in els]
    if any(not o for o in options):
        return none
    lo = sum(a * min(q for q, _ in o) for a, o in zip(amounts, options))
    hi = sum(a * max(q for q, _ in o) for a, o in zip(amounts, options))
    mixed = float(lo <= 1e-9 and hi >= -1e-9)
    q = np.array(list(itertools.product(*[[s for s, _ in o] for o in options])), dtype=float)
    lp = np.array(list(itertools.product(*[[v for _, v in o] for o in options]))).sum(1)
    neutral = np.abs(q @ amounts) < 1e-6
    if not neutral.any():
        return [0.0, mixed] + none[2:]
    qn, lpn = q[neutral], lp[neutral]
    best = int(np.argmax(lpn))
    x = np.array([Element(e).X if not math.isnan(Element(e).X) else 2.0 for e in els])
    pauling = np.array([not (row > 0).any() or not (row < 0).any() or x[row > 0].max() < x[row < 0].min()
                        for row in qn])
    w = amounts / amounts.sum()
    return [1.0, mixed, float(lpn[best]), float(lpn[pauling].max()) if pauling.any() else _NO_ASSIGNMENT,
            math.log1p(int(neutral.sum())), float(np.abs(qn[best]).max()), float((w * np.abs(qn[best])).sum())]


def composition_vector(comp: Composition) -> np.ndarray:
    """One row of features for one composition (see `feature_names`)."""
    comp = comp.element_composition.reduced_composition
    props, table = _magpie()
    els = [el.symbol for el in comp.elements]
    amounts = np.array([comp[e] for e in els], dtype=float)
    w = amounts / amounts.sum()
    P = np.stack([table.get(e, table["_mean"]) for e in els])  # (n_el, n_props)
    mean = w @ P
    avgdev = w @ np.abs(P - mean)
    stats = np.stack([mean, avgdev, P.min(0), P.max(0), P.max(0) - P.min(0)], axis=1).ravel()
    metals = [Element(e).is_metal or Element(e).is_metalloid for e in els]
    stoich = [len(els), math.log(amounts.sum()), w.max(), w.min()] + [float((w ** p).sum() ** (1 / p)) for p in (2, 3, 5, 10)]
    stoich += [float(all(metals)), float(w[np.array(metals)].sum())]
    x = np.array([Element(e).X if not math.isnan(Element(e).X) else 2.0 for e in els])
    ic = 1 - np.exp(-0.25 * (x[:, None] - x[None, :]) ** 2)
    ionic = [float(ic.max()), float(w @ ic @ w)]
    frac = np.zeros(MAX_Z)
    for e, wi in zip(els, w):
        z = Element(e).Z
        if z <= MAX_Z:
            frac[z - 1] = wi
    return np.concatenate([stats, stoich, _oxidation_features(comp), ionic, frac])


def featurize(comps: Sequence[Composition]) -> np.ndarray:
    """(n, n_features) float64 matrix."""
    if not comps:
        return np.zeros((0, len(feature_names())))
    return np.stack([composition_vector(c) for c in comps])
