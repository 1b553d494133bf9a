"""The Oracle role, and the one registry of oracle kinds a config may name.

An oracle measures candidates. The campaign loop never names one: it builds each entry of the
config's `oracles:` list through this registry and drives them all through the same four calls.

    class Oracle(Protocol):
        name: str          # measurements are stored under it
        fidelity: int      # 1 MLIP, 2 lab or DFT (a multi-fidelity surrogate uses it)
        role: str          # "screen" or "confirm" (below)
        def submit(self, candidates, round) -> None: ...
        def collect(self, timeout_s=0.0) -> list[Measurement]: ...   # what finished so far
        def pending(self) -> list[str]: ...                            # ids submitted, not back
        def shutdown(self) -> None: ...

Two roles:

- `screen`: evaluates the acquisition's picks from the candidate pool, every round, until they
  are all back (one per campaign; the MLIP by default). A measurement that carries
  `energy_per_atom` (eV/atom, on the hull's energy scale: MP-compatible, i.e. MP2020-corrected
  where the model needs it) and a `relaxed` structure enters the convex hull when it is stored,
  and gets `e_form_per_atom` and `e_above_hull` from it. The hull is updated there and nowhere
  else.
- `confirm`: a slower, higher-fidelity oracle (a lab, DFT) that gets the `per_round` most
  promising screened results it has not seen, answers whenever it answers, and whose pending
  ids are passed to the acquisition as pending points. Its results train the surrogate at its
  fidelity. With `wait_timeout_s` set, a round waits that long for its answers.

Optional capabilities, used when present: `embed(structures) -> array` (the featurizer's
structure embedding, on the oracle's workers), `wait_ready() -> seconds` (model loading, timed
apart), `busy_s` and `workers` (utilization), `notes() -> list[str]` (lines to show the user
after a collect), `round_metrics() -> dict` (oracle-specific metrics for the round),
`wait_for(ids, timeout_s)`, `trains: dict` (quantity -> the objective its values stand for).

Adding an oracle: write a class with the calls above, a pydantic model of its config entry,
and register it (from any module, before the config is parsed):

    register_oracle("toy", ToyOptions, lambda opts, ctx: ToyOracle(opts))

A config then names it as `oracles: [{kind: toy, ...options}]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from xtalforge.types import Candidate, Measurement

Role = Literal["screen", "confirm"]


@runtime_checkable
class Oracle(Protocol):
    """Anything that measures candidates; see the module docstring."""

    name: str
    fidelity: int
    role: Role

    def submit(self, candidates: Sequence[Candidate], round: int = -1) -> None: ...

    def collect(self, timeout_s: float = 0.0) -> list[Measurement]: ...

    def pending(self) -> list[str]: ...

    def shutdown(self) -> None: ...


@dataclass
class OracleContext:
    """What an oracle's factory may use: the campaign's config and folder, its store (for
    oracles whose queue is durable, like a lab's) and the energy-correction policy."""

    config: Any  # xtalforge.config.CampaignConfig; Any keeps this module below config.py
    run_dir: Path
    store: Any  # xtalforge.loop.store.CampaignStore


Factory = Callable[[BaseModel, OracleContext], Oracle]


@dataclass(frozen=True)
class OracleKind:
    """A registered kind: the model of its config entry, its factory and its role."""

    kind: str
    options: type[BaseModel]
    build: Factory
    role: Role


class UnknownOracle(KeyError):
    """A config names an oracle kind nobody registered."""

    def __str__(self) -> str:
        return self.args[0]


def register_oracle(kind: str, options: type[BaseModel], build: Factory, role: Role = "screen",
                    registry: dict[str, OracleKind] | None = None) -> None:
    """Make `kind` available to configs: `options` validates its entry (everything but `kind`),
    `build(options, context)` makes the oracle when a campaign starts its services."""
    (_REGISTRY if registry is None else registry)[kind] = OracleKind(kind, options, build, role)


def oracle_kind(kind: str) -> OracleKind:
    """The registered kind, or UnknownOracle with one line naming the known kinds."""
    _builtins()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise UnknownOracle(f"unknown oracle kind {kind!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def oracle_kinds() -> list[str]:
    _builtins()
    return sorted(_REGISTRY)


_REGISTRY: dict[str, OracleKind] = {}


def _builtins() -> None:
    # the shipped kinds register on first use, so that importing this module stays cheap and a
    # third party's register_oracle call may come before or after
    if "mlip" not in _REGISTRY:
        from xtalforge.oracles import registry  # noqa: F401  (registers the shipped kinds)
