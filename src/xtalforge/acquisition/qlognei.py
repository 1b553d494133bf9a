"""qLogNEI: batch log noisy expected improvement (Ament et al. 2023), sequential-greedy on the
round's joint draws.

Each greedy step is a (draws x shortlist) max and mean, so all q steps take milliseconds; the
batch is BoTorch's sequential-greedy qLogNEI batch restricted to the shortlist
(benchmarks/acquisition_speed.py measures how close its value comes to the exhaustive one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xtalforge.acquisition.base import AcquisitionArm, Round
from xtalforge.acquisition.draws import log_feasibility

if TYPE_CHECKING:
    import torch


def greedy_lognei(L: torch.Tensor, cand: np.ndarray, start: np.ndarray, q: int) -> tuple[list[int], list[float]]:
    """Sequential-greedy qLogNEI on draws. L (S, n) holds each draw's log smoothed improvement of
    each column (feasibility included); the batch value is log mean_s max_{x in batch} exp(L_sx).
    `start` columns (pending points) are in the batch from the outset; picks come from `cand`.

    The max and mean run in linear space after one shift by max(L) (a log-sum-exp per step costs
    ten times more); a step where every remaining gain underflows falls back to log space."""
    import torch

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


class QLogNEI(AcquisitionArm):
    """The default: greedy batch qLogNEI, pending points and outcome constraints included."""

    name = "qlognei"
    needs_draws = True

    def pick(self, rd: Round, n: int, taken: Sequence[int],
             rng: np.random.Generator) -> tuple[list[int], list[float]]:
        L = rd.memo(self.name, lambda: self.log_improvement(rd))
        start = np.concatenate([rd.pending_columns(), rd.column(np.asarray(list(taken), dtype=int))]).astype(int)
        cols, vals = greedy_lognei(L, rd.column(rd.available(taken)), start, n)
        return [c - rd.offset for c in cols], vals

    @staticmethod
    def log_improvement(rd: Round) -> torch.Tensor:
        """(S, columns): log smoothed improvement over each draw's incumbent, plus log feasibility."""
        from botorch.utils.safe_math import log_softplus

        obj = rd.objective_draws
        return log_softplus(obj - rd.incumbent[:, None], tau=1e-6) + log_feasibility(rd.draws, rd.constraints)
