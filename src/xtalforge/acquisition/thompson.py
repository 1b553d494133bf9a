"""Thompson sampling over the shortlist: one pick per joint posterior draw."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xtalforge.acquisition.base import AcquisitionArm, Round

if TYPE_CHECKING:
    import torch


def thompson(F: torch.Tensor, cand: np.ndarray, q: int, first_draw: int = 0) -> tuple[list[int], list[float]]:
    """One pick per posterior draw: the argmax of draw s among candidates not yet picked.
    F (S, n) holds objective draws with infeasible entries at -inf."""
    import torch

    avail = torch.as_tensor(cand, dtype=torch.long)
    picks, vals = [], []
    s = first_draw
    while len(picks) < min(q, len(cand)):
        row = F[s % F.shape[0], avail]
        k = int(torch.argmax(row))
        picks.append(int(avail[k]))
        vals.append(float(row[k]))
        avail = torch.cat([avail[:k], avail[k + 1 :]])
        s += 1
    return picks, vals


class Thompson(AcquisitionArm):
    """Each pick is the best candidate of its own posterior draw (feasible on that draw); picks
    made earlier this round use up the first draws, so two arms never share a draw."""

    name = "thompson"
    needs_draws = True

    def pick(self, rd: Round, n: int, taken: Sequence[int],
             rng: np.random.Generator) -> tuple[list[int], list[float]]:
        import torch

        obj = rd.objective_draws
        F = rd.memo(self.name, lambda: torch.where(rd.feasible, obj, torch.full_like(obj, -float("inf"))))
        cols, vals = thompson(F, rd.column(rd.available(taken)), n, first_draw=len(taken))
        return [c - rd.offset for c in cols], vals
