"""Uniform random picks: the baseline every model-based arm must beat, and GP-Hedge's explorer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xtalforge.acquisition.base import AcquisitionArm, Round


class RandomArm(AcquisitionArm):
    """Uniform picks without replacement; alone, from the whole known-feasible pool."""

    name = "random"
    needs_model = False
    multi_objective = True

    def pick(self, rd: Round, n: int, taken: Sequence[int],
             rng: np.random.Generator) -> tuple[list[int], list[float]]:
        avail = rd.available(taken)
        pos = rng.choice(avail, size=min(n, len(avail)), replace=False)
        return [int(p) for p in pos], [0.0] * len(pos)
