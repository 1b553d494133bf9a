"""The MLIP oracle on a real Ray pool: explosions, killed and hung workers, time budgets, and an
ASE calculator with a property oracle in place of CHGNet."""

import time

import pytest
import ray
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Lattice, Structure

from xtalforge.references.hull import Hull
from xtalforge.oracles.mlip.oracle import MLIPOracle
from xtalforge.types import Candidate, Status

EMT = "ase:ase.calculators.emt.EMT"


def _collect_all(oracle: MLIPOracle, limit_s: float = 240) -> dict:
    got = {}
    deadline = time.time() + limit_s
    while oracle.pending() and time.time() < deadline:
        for m in oracle.collect(timeout_s=2):
            got[m.candidate_id] = m
    return got


def _wait_until_busy(oracle: MLIPOracle, limit_s: float = 120) -> None:
    deadline = time.time() + limit_s
    while not oracle.busy and time.time() < deadline:
        oracle.collect(timeout_s=0)
        time.sleep(0.02)
    assert oracle.busy, "the worker never started"


def _retries(caplog, cid: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"retrying {cid} once")]


def test_oracle_survives_explosion_and_killed_actor(ray_local, test_cifs, caplog):
    hull = Hull(["Sr", "Ti", "O", "Ca"])
    # fmax 1e-3 keeps the worker busy for all 40 steps, so the kill lands mid-relaxation
    oracle = MLIPOracle(hull, workers=1, fmax=1e-3, max_steps=40, timeout_s=120, batched=True)
    try:
        good = Candidate(structure=Structure.from_file(test_cifs / "pymatgen_test_structures" / "SrTiO3.cif"),
                         source="t", round=0)
        bad = Candidate(structure=Structure(Lattice.cubic(3.0), ["Ca", "O"], [[0, 0, 0], [0.05, 0, 0]]),
                        source="t", round=0)
        oracle.submit([bad, good])
        _wait_until_busy(oracle)
        first = oracle.actors[0]
        ray.kill(first, no_restart=True)  # the batch it holds must be retried once on a new worker
        got = _collect_all(oracle)
        assert set(got) == {good.id, bad.id}
        assert oracle.actors[0] is not first
        g = got[good.id]
        assert g.status == Status.ok, g.error
        assert g.values["e_above_hull"] <= 0.0 + 1e-6  # only compound on the hull
        assert 0 < g.values["steps"] <= 40
        assert g.values["max_force"] < 1e-3 if g.values["converged"] else g.values["steps"] == 40
        assert g.values["corrected_energy_per_atom"] < g.values["energy_per_atom"]  # MP2020 oxide correction
        assert g.relaxed is not None and len(g.relaxed.site_properties["magmom"]) == len(g.relaxed)
        assert got[bad.id].status == Status.failed and "fused" in got[bad.id].error
        assert len(_retries(caplog, good.id)) == 1 and "worker died" in _retries(caplog, good.id)[0]
    finally:
        oracle.shutdown()


def test_relaxation_past_its_budget_is_retried_once_then_failed(ray_local, test_cifs, caplog):
    """A per-relaxation timeout_s far below what the relaxation needs, one at a time (ASE FIRE)."""
    s = Structure.from_file(test_cifs / "pymatgen_test_structures" / "LiFePO4.cif")
    s.apply_strain([0.04, -0.03, 0.05])
    slow = Candidate(structure=s, source="t", round=0)
    oracle = MLIPOracle(Hull(["Li", "Fe", "P", "O"]), workers=1, fmax=1e-4, max_steps=100_000, timeout_s=1.0,
                        batched=False)
    try:
        oracle.submit([slow])
        t0 = time.time()
        got = _collect_all(oracle, limit_s=180)
        m = got[slow.id]
        assert m.status == Status.failed and "timed out after 1 s" in m.error
        assert len(_retries(caplog, slow.id)) == 1
        assert not oracle.pending()
        # stopped inside the worker, between steps: no worker was lost, none was replaced
        assert len(oracle.actors) == 1 and not oracle.loading
        assert ray.get(oracle.actors[0].ready.remote()) > 0
        assert time.time() - t0 < 120
    finally:
        oracle.shutdown()


def test_hung_worker_is_replaced_and_its_work_retried_once(ray_local, caplog):
    """One model call that outlasts the budget (EMT's first neighbor list on 4000 atoms) cannot be
    stopped from inside: the worker is killed and replaced, the relaxation retried once."""
    fcc = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
    huge = Candidate(structure=fcc * (10, 10, 10), source="t", round=0, id="huge-cu")
    oracle = MLIPOracle(Hull(["Cu"], [PDEntry("Cu", 0.0)], use_mp_elements=False), workers=1, model=EMT,
                        timeout_s=0.2, hang_grace_s=0.3, apply_mp2020=False)
    try:
        oracle.submit([huge])
        _wait_until_busy(oracle)
        first = oracle.actors[0]
        got = _collect_all(oracle, limit_s=120)
        m = got["huge-cu"]
        assert m.status == Status.failed and "worker hung" in m.error
        assert len(_retries(caplog, "huge-cu")) == 1
        assert oracle.actors[0] is not first
        assert ray.get(oracle.actors[0].ready.remote()) > 0  # the pool is whole again
    finally:
        oracle.shutdown()


def test_oracle_that_raises_is_retried_once_then_failed_with_the_reason(ray_local, caplog):
    """EMT has no potential for Fe: the calculator raises inside the worker. The round must not
    fail, the worker must survive, and the candidate is retried once, then failed with the
    exception's message; a good candidate in the same queue still comes back."""
    fe = Candidate(structure=Structure.from_spacegroup("Im-3m", Lattice.cubic(2.87), ["Fe"], [[0, 0, 0]]),
                   source="t", round=0, id="fe-no-emt")
    cu = Candidate(structure=Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]]),
                   source="t", round=0, id="cu-emt")
    oracle = MLIPOracle(Hull(["Cu", "Fe"], [PDEntry("Cu", 0.0), PDEntry("Fe", 0.0)], use_mp_elements=False),
                        workers=1, model=EMT, fmax=0.05, apply_mp2020=False)
    try:
        oracle.submit([fe, cu])
        got = _collect_all(oracle, limit_s=120)
        assert set(got) == {"fe-no-emt", "cu-emt"}
        m = got["fe-no-emt"]
        assert m.status == Status.failed
        assert "NotImplementedError" in m.error and "Fe" in m.error
        assert len(_retries(caplog, "fe-no-emt")) == 1
        assert got["cu-emt"].status == Status.ok, got["cu-emt"].error
        assert not _retries(caplog, "cu-emt")
        first = oracle.actors[0]
        assert ray.get(first.ready.remote()) > 0 and not oracle.loading  # no worker was lost
    finally:
        oracle.shutdown()


def test_ase_calculator_oracle_with_bulk_modulus(ray_local):
    """EMT through the oracle, with the bulk-modulus property oracle in the worker."""
    fcc = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.7), ["Cu"], [[0, 0, 0]])
    cu = Candidate(structure=fcc, source="t", round=0)
    ref = PDEntry("Cu", 0.0)  # EMT's energies are relative to its own fcc reference, not MP's scale
    oracle = MLIPOracle(Hull(["Cu"], [ref], use_mp_elements=False), workers=1, model=EMT, fmax=0.01,
                        apply_mp2020=False, properties=["bulk_modulus"], batched="auto")
    try:
        assert oracle.batched is False  # only CHGNet has the batched engine
        oracle.submit([cu])
        m = _collect_all(oracle, limit_s=120)[cu.id]
        assert m.status == Status.ok, m.error
        assert m.values["bulk_modulus"] == pytest.approx(134.4, rel=0.01)  # ASE's EOS on EMT Cu
        assert m.values["density"] == pytest.approx(9.17, rel=0.01)  # EMT a = 3.589 Å
        assert m.values["e_above_hull"] == pytest.approx(0.0, abs=0.01)
        assert "total_magmom" not in m.values
    finally:
        oracle.shutdown()


def test_bad_model_name_fails_at_once():
    with pytest.raises(ValueError, match="cannot import"):
        MLIPOracle(Hull(["Cu"]), model="ase:ase.calculators.nothing.Here")


def test_idle_workers_counts_workers_left_without_work_while_others_relax(ray_local):
    """The loop fits its surrogate while a worker has nothing left to do: one slow relaxation
    on two workers leaves one idle; with nothing out, no worker counts as idle."""
    fcc = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]]) * (4, 4, 4)
    fcc.perturb(0.15, min_distance=0.05)
    slow = Candidate(structure=fcc, source="t", round=0, id="cu-256")
    oracle = MLIPOracle(Hull(["Cu"], [PDEntry("Cu", 0.0)], use_mp_elements=False), workers=2, model=EMT,
                        fmax=1e-4, max_steps=400, apply_mp2020=False)
    try:
        assert ray.get([a.ready.remote() for a in oracle.actors])
        oracle.collect(timeout_s=0)  # the pool has loaded
        assert oracle.idle_workers() == 0, "nothing out: nothing to overlap with"
        oracle.submit([slow])
        _wait_until_busy(oracle)
        assert oracle.pending() == ["cu-256"] and oracle.idle_workers() == 1
        assert _collect_all(oracle, limit_s=120)["cu-256"].status == Status.ok
        assert oracle.idle_workers() == 0
    finally:
        oracle.shutdown()
