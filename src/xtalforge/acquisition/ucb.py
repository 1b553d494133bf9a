"""qUCB: batch upper confidence bound on the round's joint draws (Wilson et al. 2017's
reparameterization: mean + sqrt(beta * pi / 2) |draw - mean|), sequential-greedy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xtalforge.acquisition.base import AcquisitionArm, Round

if TYPE_CHECKING:
    import torch


def greedy_qucb(U: torch.Tensor, cand: np.ndarray, start: np.ndarray, q: int) -> tuple[list[int], list[float]]:
    """Sequential-greedy qUCB on draws: U (S, n) = mean + sqrt(beta*pi/2)|draw - mean|; the batch
    value is mean_s max over the batch."""
    import torch

    S = U.shape[0]
    M = U[:, start].max(1).values if len(start) else torch.full((S,), -math.inf, dtype=U.dtype)
    avail = torch.as_tensor(cand, dtype=torch.long)
    picks, vals = [], []
    for _ in range(min(q, len(avail))):
        V = torch.maximum(M[:, None], U[:, avail]).mean(0)
        k = int(torch.argmax(V))
        j = int(avail[k])
        picks.append(j)
        vals.append(float(V[k]))
        M = torch.maximum(M, U[:, j])
        avail = torch.cat([avail[:k], avail[k + 1 :]])
    return picks, vals


class QUCB(AcquisitionArm):
    """Greedy batch UCB with exploration weight `settings.ucb_beta`; infeasible draws rank last."""

    name = "ucb"
    needs_draws = True

    def pick(self, rd: Round, n: int, taken: Sequence[int],
             rng: np.random.Generator) -> tuple[list[int], list[float]]:
        U = rd.memo(self.name, lambda: self.upper_draws(rd))
        start = np.concatenate([rd.pending_columns(), rd.column(np.asarray(list(taken), dtype=int))]).astype(int)
        cols, vals = greedy_qucb(U, rd.column(rd.available(taken)), start, n)
        return [c - rd.offset for c in cols], vals

    def upper_draws(self, rd: Round) -> torch.Tensor:
        import torch

        obj = rd.objective_draws
        mu = obj.mean(0, keepdim=True)
        U = mu + math.sqrt(self.settings.ucb_beta * math.pi / 2) * (obj - mu).abs()
        return torch.where(rd.feasible, U, U.min() - 1.0)
