"""How the loop consumes P(synthesizable): per-round metrics and the acquisition hooks."""

from __future__ import annotations

import numpy as np


def synth_metrics(p: np.ndarray, threshold: float = 0.5, prefix: str = "p_synth") -> dict[str, float]:
    """Distribution of P(synthesizable) over a set of candidates, for MLflow (`step=round`).

    Keys: `p_synth_mean`, `p_synth_median`, `p_synth_frac_ok` (share >= threshold) and
    `p_synth_n`; NaN (and n = 0) for an empty set, which MLflow accepts."""
    p = np.asarray(p, dtype=float).ravel()
    p = p[np.isfinite(p)]
    if p.size == 0:
        return {f"{prefix}_mean": float("nan"), f"{prefix}_median": float("nan"),
                f"{prefix}_frac_ok": float("nan"), f"{prefix}_n": 0.0}
    return {f"{prefix}_mean": float(p.mean()), f"{prefix}_median": float(np.median(p)),
            f"{prefix}_frac_ok": float((p >= threshold).mean()), f"{prefix}_n": float(p.size)}


def feasible_mask(p: np.ndarray, min_p_synth: float) -> np.ndarray:
    """`as: constraint`: the pool rows the acquisition may pick (P >= min_p_synth)."""
    return np.asarray(p, dtype=float) >= min_p_synth


def weighted_acquisition(values: np.ndarray, p: np.ndarray) -> np.ndarray:
    """`as: objective`: weight a non-negative acquisition value (e.g. expected improvement) by
    P(synthesizable), i.e. the expected improvement of a crystal that can also be made, as in
    constrained EI (Gardner et al. 2014) with the constraint's probability known exactly."""
    return np.asarray(values, dtype=float) * np.clip(np.asarray(p, dtype=float), 0.0, 1.0)


def log_weighted_acquisition(log_values: np.ndarray, p: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """`as: objective` for log-scale acquisitions (qLogNEI): log(EI * p) = log EI + log p."""
    return np.asarray(log_values, dtype=float) + np.log(np.clip(np.asarray(p, dtype=float), floor, 1.0))
