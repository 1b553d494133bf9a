"""The Generator role."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from xtalforge.types import Candidate, Measurement, RoundContext


@runtime_checkable
class Generator(Protocol):
    name: str

    def propose(self, n: int, ctx: RoundContext) -> list[Candidate]:
        """Up to `n` new structures inside ctx.elements with at most ctx.max_atoms atoms."""
        ...

    def update(self, results: Sequence[tuple[Candidate, Measurement]]) -> dict[str, float]:
        """Learn from the oracle's verdicts on this generator's (or anyone's) proposals.

        Returns metrics to log (weights, success rates)."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def reward_from(m: Measurement, scale: float = 0.1) -> float:
    """A reward in (0, 1]: 1 on the hull, decaying with e_above_hull (eV/atom) on `scale`."""
    import math

    e = m.values.get("e_above_hull")
    if e is None or not math.isfinite(e):
        return 0.0
    return math.exp(-max(e, 0.0) / scale)
