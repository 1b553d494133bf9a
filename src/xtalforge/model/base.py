"""The SurrogateModel role: what the acquisition and the loop use of a surrogate, and nothing more.

A surrogate maps feature vectors (one row per candidate, the featurizer's columns) to posterior
means and standard deviations of every modeled outcome, in the field's units (e.g. eV/atom for
`e_above_hull`). `model.surrogate.Surrogate` (one GP per outcome on BoTorch) implements it; any
class with these members can stand in for it.

The acquisition draws joint posterior samples, so the role exposes BoTorch models (`models`, one
per outcome, and `model`, all outcomes as one multi-output model): the batch methods need joint
draws over many points, which means and variances alone cannot give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from botorch.models.model import Model


@dataclass
class FitReport:
    """How one outcome's model was fitted."""

    n_train: int
    nll: float  # mean negative marginal log likelihood per point (standardized scale)
    seconds: float
    kind: str = "exact"  # exact | subset | multi_fidelity (+ "_subset")
    n_dropped: int = 0  # rows dropped for NaN/inf values or features
    n_hyper: int = 0  # points the hyperparameters were fitted on


@dataclass
class OutcomeData:
    """Training data of one modeled quantity: features X (n, d), values y (n,) in the field's
    units, and optionally the fidelity (int per row) of the oracle that measured each value."""

    X: np.ndarray
    y: np.ndarray
    fidelity: np.ndarray | None = None
    ids: list[str] = field(default_factory=list)


@runtime_checkable
class SurrogateModel(Protocol):
    """A fitted probabilistic model of several outcomes over feature vectors.

    Prediction methods take X of shape (N, d) and return arrays of shape (N, len(outcomes)),
    columns in `outcomes` order, in the outcomes' own units."""

    outcomes: list[str]
    """Names of the modeled outcomes, in column order."""

    train_X: dict[str, np.ndarray]
    """Per outcome, the (finite) training features of the last fit at the fidelity it predicts:
    the acquisition's default baseline of already-measured points."""

    train_y: dict[str, np.ndarray]
    """Per outcome, the training values of the last fit: GP-Hedge standardizes rewards by them."""

    models: Sequence[Model]
    """One BoTorch model per outcome (joint posterior draws per outcome)."""

    model: Model | None
    """All outcomes as one BoTorch multi-output model (qLogNEHVI); None before the first fit."""

    def fit(self, data: Mapping[str, OutcomeData]) -> Mapping[str, FitReport]:
        """Fit every outcome in `data` (replacing the previous fit); one report per outcome."""
        ...

    def index(self, name: str) -> int:
        """The column of outcome `name`; raises a ValueError naming the modeled ones."""
        ...

    def predict(self, X: np.ndarray, observation_noise: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and standard deviations; `observation_noise` adds the fitted noise
        (the spread of a fresh measurement)."""
        ...

    def screen(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact posterior means and upper bounds on the standard deviations, cheaper than
        `predict` on large pools. Returning `predict`'s exact values is a valid (tight) bound."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What the next fit warm-starts from (JSON-safe; no training data)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        ...
