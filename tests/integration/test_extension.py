"""A user adds an oracle and an acquisition function from their own module (a class and one
registry call each, nothing edited under src/) and runs a two-round campaign with them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from xtalforge.acquisition.base import AcquisitionArm, Round
from xtalforge.acquisition.registry import register_arm
from xtalforge.config import ConfigError, parse_config
from xtalforge.loop.campaign import Campaign
from xtalforge.oracles.base import OracleContext, register_oracle
from xtalforge.types import Candidate, Measurement, Status

# eV/atom per element: a made-up, deterministic energy model, lower for denser packing of O
TOY_ENERGY = {"Li": -1.9, "O": -4.9}


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "toy"
    per_atom: dict[str, float] = TOY_ENERGY


class ToyOracle:
    """Answers at once: an energy per atom from the composition and the volume per atom (eV/atom),
    on the unrelaxed structure."""

    fidelity = 1
    role = "screen"

    def __init__(self, opts: ToyOptions):
        self.name, self.per_atom = opts.name, opts.per_atom
        self.queue: list[tuple[Candidate, int]] = []
        self.calls = 0

    def submit(self, candidates: Sequence[Candidate], round: int = -1) -> None:
        self.queue += [(c, round) for c in candidates]

    def collect(self, timeout_s: float = 0.0) -> list[Measurement]:
        out = []
        for c, r in self.queue:
            s = c.structure
            comp = s.composition.fractional_composition
            e = sum(self.per_atom[el.symbol] * x for el, x in comp.items()) + 0.01 * abs(s.volume / len(s) - 12.0)
            out.append(Measurement(c.id, self.name, self.fidelity, values={"energy_per_atom": e},
                                   status=Status.ok, relaxed=s, round=r))
        self.calls += len(out)
        self.queue = []
        return out

    def pending(self) -> list[str]:
        return [c.id for c, _ in self.queue]

    def shutdown(self) -> None:
        self.queue = []


class LowestMean(AcquisitionArm):
    """Greedy on the posterior mean: the shortlist's best predicted candidates."""

    name = "lowest_mean"
    needs_model = True
    multi_objective = False

    def pick(self, rd: Round, n: int, taken: Sequence[int], rng: np.random.Generator) -> tuple[list[int], list[float]]:
        avail = rd.available(taken)
        mean, _ = rd.surrogate.predict(rd.X_candidates[avail])
        score = rd.objectives[0].sign * mean[:, rd.surrogate.index(rd.objectives[0].name)]
        best = avail[np.argsort(-score, kind="stable")[:n]]
        return [int(i) for i in best], [float(v) for v in np.sort(-score)[:n] * -1]


BUILT: list[ToyOracle] = []


def _build(opts: ToyOptions, ctx: OracleContext) -> ToyOracle:
    BUILT.append(ToyOracle(opts))
    return BUILT[-1]


register_oracle("toy", ToyOptions, _build, role="screen")
register_arm(LowestMean)


def _config(tmp_path, **over):
    return parse_config({
        "name": "toy", "chemical_system": ["Li", "O"], "max_atoms": 6, "rounds": 2, "proposals_per_round": 16,
        "generators": [{"name": "random_symmetric"}], "oracles": [{"kind": "toy"}],
        "acquisition": {"kind": "lowest_mean", "batch_size": 3, "featurizer": "magpie+structure"},
        "synthesis": {"routes_per_target": 0},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tests"},
        "output_dir": str(tmp_path / "runs"), **over,
    })


def test_a_toy_oracle_and_a_toy_arm_run_a_campaign(tmp_path, ray_local):
    cfg = _config(tmp_path)
    assert cfg.screen_oracle().name == "toy" and cfg.mlip is None
    camp = Campaign.create(cfg, progress=False, echo=lambda *_: None)
    stats = camp.run()
    assert [s.round for s in stats] == [0, 1]
    toy = BUILT[-1]
    assert toy.calls == 6  # 3 picks a round, every one measured by the toy oracle
    again = Campaign.open(camp.run_dir, progress=False)
    try:
        res = again.load()
        assert len(res.measured) == 6 and all(m.oracle == "toy" for m in res.measured.values())
        # the hull took the toy energies in where results are stored, and e_above_hull is current
        e_hull = res.e_above_hull()
        assert set(e_hull) == set(res.measured) and all(np.isfinite(list(e_hull.values())))
        metrics = again.store.round_metrics()
        assert metrics[0]["evaluations_toy"] == 3.0 and metrics[1]["evaluations_total_toy"] == 6.0
        # round 2 had a fitted model (2+ results): the toy arm made the picks
        assert metrics[1]["acq_picks_lowest_mean"] == 3.0 and metrics[1]["acquisition_method_is_model"] == 1.0
    finally:
        again.store.close()


def test_an_unknown_oracle_or_arm_is_one_line_naming_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, oracles=[{"kind": "dft"}])
    assert "unknown oracle kind 'dft'" in str(err.value) and "mlip" in str(err.value) and "toy" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, acquisition={"kind": "magic"})
    assert "magic" in str(err.value) and "lowest_mean" in str(err.value)
