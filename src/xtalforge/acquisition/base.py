"""The acquisition's vocabulary: objectives, constraints, picks, the round state every arm
shares, and the `AcquisitionArm` role an acquisition function plays.

Nothing here imports torch at module level: the config validates arm names against the registry,
and reading a config should not cost a torch import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from xtalforge.model.base import SurrogateModel


class AcquisitionError(ValueError):
    """An acquisition request that cannot be served; the message says why in the user's terms."""


@dataclass(frozen=True)
class Target:
    """An objective: a modeled outcome to minimize or maximize."""

    name: str
    minimize: bool = True

    @property
    def sign(self) -> float:
        """-1 for a minimized objective: the acquisition maximizes sign * value throughout."""
        return -1.0 if self.minimize else 1.0


@dataclass(frozen=True)
class Constraint:
    """value `op` threshold must hold, e.g. Constraint("e_above_hull", "<=", 0.1) (eV/atom)."""

    name: str
    op: Literal["<=", ">="]
    threshold: float

    def slack(self, v):
        """<= 0 where the constraint holds (works on numpy arrays and tensors)."""
        return v - self.threshold if self.op == "<=" else self.threshold - v


@dataclass
class Picks:
    indices: list[int]
    values: list[float]  # each pick's acquisition value when it was picked (log scale for qLog*)
    method: str
    arms: list[str] = field(default_factory=list)  # which acquisition function chose each pick


@dataclass(frozen=True)
class ArmSettings:
    """Settings of the shipped arms, given to every arm when the `Acquirer` builds it."""

    ucb_beta: float = 2.0  # UCB exploration weight: mean + sqrt(beta) * stdev
    moo_samples: int = 128  # quasi-MC samples of qLogNEHVI


@dataclass
class Round:
    """What one `Acquirer.select` call computed once and every arm shares.

    The candidates an arm may pick are the shortlist the pool screen kept: `X_candidates`, and an
    arm names them by position 0..n_candidates-1. Posterior draws (present when some arm of the
    portfolio `needs_draws`) have one column per point, in the order [baseline | pending |
    shortlist]; `column(position)` converts. When no arm of the portfolio needs the model, the
    shortlist is the whole (known-feasible) pool and nothing model-based is filled in.
    """

    surrogate: SurrogateModel
    objectives: list[Target]
    constraints: list[tuple[int, Constraint]]  # modeled constraints with their outcome column
    seed: int  # this round's seed, for any sampler an arm uses
    pool_idx: np.ndarray  # rows of X_pool that passed the known constraints
    short: np.ndarray  # the shortlist, as positions in pool_idx
    X_candidates: np.ndarray  # (n_candidates, d) features of the shortlist
    X_baseline: np.ndarray  # (n_base, d) measured points, pruned to the most promising
    X_pending: np.ndarray  # (n_pend, d) points submitted but not back
    draws: torch.Tensor | None = None  # (S, n_base + n_pend + n_candidates, n_outcomes) joint draws
    objective_draws: torch.Tensor | None = None  # (S, columns): sign * draws of the one objective
    feasible: torch.Tensor | None = None  # (S, columns) bool: every modeled constraint holds
    incumbent: torch.Tensor | None = None  # (S,) best feasible baseline objective per draw
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_base(self) -> int:
        return len(self.X_baseline)

    @property
    def n_pend(self) -> int:
        return len(self.X_pending)

    @property
    def n_candidates(self) -> int:
        return len(self.short)

    @property
    def offset(self) -> int:
        """Draw column of shortlist position 0."""
        return self.n_base + self.n_pend

    def column(self, position):
        """Draw column(s) of shortlist position(s)."""
        return position + self.offset

    def available(self, taken: Sequence[int]) -> np.ndarray:
        """Shortlist positions not yet in this round's batch, ascending."""
        return np.setdiff1d(np.arange(self.n_candidates), np.asarray(list(taken), dtype=int), assume_unique=True)

    def pending_columns(self) -> np.ndarray:
        """Draw columns of the pending points."""
        return np.arange(self.n_base, self.offset)

    def pool_index(self, position: int) -> int:
        """The X_pool row of a shortlist position."""
        return int(self.pool_idx[self.short[position]])

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute() once per round under `key`: an arm that runs twice in one round (a GP-Hedge
        nomination and its share of the batch) derives its matrices from the draws once."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


class AcquisitionArm(ABC):
    """One acquisition function: given the round, pick shortlist positions one batch at a time.

    Subclasses declare:
      name: the config name (`acquisition.kind` / `acquisition.portfolio`);
      needs_draws: whether `pick` reads the joint posterior draws of the round;
      needs_model: False for a model-free arm (random), which alone is handed the whole pool;
      single_objective / multi_objective: whether it serves one objective / several.
    """

    name: ClassVar[str]
    needs_draws: ClassVar[bool] = False
    needs_model: ClassVar[bool] = True
    single_objective: ClassVar[bool] = True
    multi_objective: ClassVar[bool] = False

    def __init__(self, settings: ArmSettings = ArmSettings()):
        self.settings = settings

    @classmethod
    def fits(cls, n_objectives: int) -> bool:
        """Whether this arm serves a problem with `n_objectives` objectives."""
        return cls.single_objective if n_objectives == 1 else cls.multi_objective

    @abstractmethod
    def pick(self, rd: Round, n: int, taken: Sequence[int],
             rng: np.random.Generator) -> tuple[list[int], list[float]]:
        """Up to `n` shortlist positions not in `taken`, in pick order, and each pick's value.

        `taken` holds positions already in this round's batch (picked by arms that ran before
        this one): count them as pending, as `rd.X_pending` is. `rng` is the round's generator."""
