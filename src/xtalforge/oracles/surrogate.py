"""The GP surrogate (BoTorch SingleTaskGP): inputs normalized, outcomes standardized."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch


class SurrogateError(ValueError):
    pass


@dataclass
class FitReport:
    n_train: int
    nll: float  # mean negative marginal log likelihood per point (standardized scale)
    seconds: float


def check_training_data(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop rows whose features or target are NaN/inf, refusing when nothing usable is left."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise SurrogateError(f"features {X.shape} and targets {y.shape} do not line up")
    keep = np.isfinite(X).all(axis=1) & np.isfinite(y)
    if keep.sum() == 0:
        raise SurrogateError("no finite training points: every oracle value or feature is NaN/inf")
    return X[keep], y[keep]


def fit_gp(X: np.ndarray, y: np.ndarray, state: dict | None = None):
    """Fit a SingleTaskGP to maximize y. Returns (model, FitReport).

    `state` (the last round's hyperparameters) warm-starts the fit."""
    import time

    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Normalize, Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    t0 = time.perf_counter()
    X, y = check_training_data(X, y)
    tx = torch.as_tensor(X, dtype=torch.float64)
    ty = torch.as_tensor(y, dtype=torch.float64).unsqueeze(-1)
    if len(y) == 1 or float(ty.std()) == 0.0:
        # a constant target has no scale to standardize by; jitter keeps the fit well-posed
        ty = ty + 1e-6 * torch.randn_like(ty)
    # bounds from the data; constant columns get a unit range so Normalize never divides by 0
    lo, hi = tx.min(0).values, tx.max(0).values
    hi = torch.where(hi - lo < 1e-9, lo + 1.0, hi)
    model = SingleTaskGP(tx, ty, input_transform=Normalize(d=tx.shape[-1], bounds=torch.stack([lo, hi])),
                         outcome_transform=Standardize(m=1))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    if state:
        try:
            model.load_state_dict(state, strict=False)
        except Exception:
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit_gpytorch_mll(mll)
        except Exception:
            pass  # hyperparameters stay at their priors' defaults; the GP still predicts
    model.eval()
    with torch.no_grad():
        model.train()
        out = model(*model.train_inputs)
        nll = -float(mll(out, model.train_targets)) if len(y) > 0 else math.nan
        model.eval()
    return model, FitReport(n_train=len(y), nll=nll, seconds=time.perf_counter() - t0)


def predict(model, X: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation on the original target scale."""
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(X), batch):
            post = model.posterior(torch.as_tensor(X[i : i + batch], dtype=torch.float64))
            means.append(post.mean.squeeze(-1).numpy())
            stds.append(post.variance.clamp_min(0).sqrt().squeeze(-1).numpy())
    if not means:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(means), np.concatenate(stds)


def gp_state(model) -> dict:
    """Hyperparameters only (no training data), for warm starts; JSON-safe."""
    return {k: v.tolist() for k, v in model.state_dict().items() if "train" not in k}


def gp_state_from_json(d: dict) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in d.items()}
