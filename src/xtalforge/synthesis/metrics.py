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
