"""Joint posterior draws over (baseline, pending, shortlist), drawn once a round for every arm.

Base samples are seeded (common random numbers, as BoTorch's own MC acquisition functions use),
so every arm and every greedy step compares candidates on the same draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xtalforge.acquisition.base import Constraint, Round

if TYPE_CHECKING:
    import torch


def joint_samples(models: Sequence, X: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """`n` joint posterior draws at the rows of X, one column per model: (n, len(X), m)."""
    import torch
    from botorch.utils.sampling import draw_sobol_normal_samples

    tx = torch.as_tensor(X, dtype=torch.float64)
    out = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, sub in enumerate(models):
            post = sub.posterior(tx)
            # scrambled Sobol normals: far less Monte-Carlo error than iid draws at equal count,
            # which matters because greedy selection overfits noisy value estimates
            base = draw_sobol_normal_samples(len(X), n, dtype=torch.float64, seed=int(seed) + 7919 * k)
            base = base.reshape(torch.Size([n]) + post.base_sample_shape)
            out.append(post.rsample_from_base_samples(torch.Size([n]), base).reshape(n, len(X)))
    return torch.stack(out, -1)


def log_feasibility(samples: torch.Tensor, cons: Sequence[tuple[int, Constraint]], eta: float = 1e-3) -> torch.Tensor:
    """Sum over modeled constraints of log sigmoid(-slack / eta): BoTorch's smoothed indicator."""
    import torch

    out = torch.zeros(samples.shape[:-1], dtype=samples.dtype)
    for j, c in cons:
        out = out + torch.nn.functional.logsigmoid(-c.slack(samples[..., j]) / eta)
    return out


def draw_round(rd: Round, n: int) -> None:
    """Fill `rd.draws` and `rd.feasible` with `n` joint draws over every column of the round;
    with one objective also `rd.objective_draws` (maximization sense) and `rd.incumbent`, the
    best feasible baseline value per draw (the lowest objective draw where none is feasible)."""
    import torch

    X_all = np.concatenate([rd.X_baseline, rd.X_pending, rd.X_candidates])
    draws = joint_samples(rd.surrogate.models, X_all, n, rd.seed)
    feas = torch.ones(draws.shape[:-1], dtype=torch.bool)
    for j, c in rd.constraints:
        feas &= c.slack(draws[..., j]) <= 0
    rd.draws, rd.feasible = draws, feas
    if len(rd.objectives) != 1:
        return
    t = rd.objectives[0]
    obj = t.sign * draws[..., rd.surrogate.index(t.name)]
    base = obj[:, : rd.n_base]
    best = torch.where(feas[:, : rd.n_base], base, torch.full_like(base, -math.inf)).max(1).values
    rd.incumbent = torch.where(torch.isfinite(best), best, obj.min(1).values)
    rd.objective_draws = obj
