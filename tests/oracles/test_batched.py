"""The batched CHGNet FIRE against CHGNet's own StructOptimizer, CHGNet's predictions and ASE's
Frechet cell algebra."""

import contextlib
import io

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from threadpoolctl import threadpool_limits

from xtalforge.oracles.mlip.batched import ChgnetEvaluator, Timings, frechet_cell_forces, relax_batched

NAMES = ["SrTiO3", "Si", "Li2O", "CsCl"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(chgnet_model):
    """One torch and one BLAS thread, as in a Ray actor: on two shared, busy cores, threads
    spinning against each other make these relaxations 20-50x slower in wall time. (After
    the model fixture, whose loader sets its own thread count.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


def _start(test_cifs, name: str, seed: int) -> Structure:
    s = Structure.from_file(test_cifs / "pymatgen_test_structures" / f"{name}.cif")
    s.remove_oxidation_states()
    rng = np.random.default_rng(seed)
    s.apply_strain(rng.uniform(-0.03, 0.05, 3))  # anisotropic strain: the cell must move
    cart = s.cart_coords + rng.normal(0, 0.04, (len(s), 3))  # and the atoms
    return Structure(s.lattice, s.species, cart, coords_are_cartesian=True)


def test_frechet_cell_forces_match_scipy_expm_frechet():
    """The one block-exp call per system equals ASE's nine scipy expm_frechet calls."""
    from scipy.linalg import expm_frechet

    rng = np.random.default_rng(1)
    logs = rng.normal(0, 0.05, (3, 3, 3))
    grads = rng.normal(0, 3.0, (3, 3, 3))
    got = frechet_cell_forces(logs, grads)
    for b in range(3):
        want = np.zeros((3, 3))
        for mu in range(3):
            for nu in range(3):
                d = np.zeros((3, 3))
                d[mu, nu] = 1.0
                want[mu, nu] = np.sum(expm_frechet(logs[b], d, compute_expm=False) * grads[b])
        np.testing.assert_allclose(got[b], want, rtol=1e-9, atol=1e-12)


def test_evaluator_matches_chgnet_predictions(test_cifs, chgnet_model):
    """One backward pass gives what CHGNet's predict_structure gives (eV, eV/Å, GPa)."""
    structures = [_start(test_cifs, n, 0) for n in NAMES[:3]]
    timings = Timings()
    evs = ChgnetEvaluator(chgnet_model, timings)(structures)
    ref = chgnet_model.predict_structure(structures, task="efsm")
    for s, ev, r in zip(structures, evs, ref):
        assert not ev.error
        assert ev.energy / len(s) == pytest.approx(float(r["e"]), abs=1e-5)
        np.testing.assert_allclose(ev.forces, r["f"], atol=2e-4)
        stress_gpa = ev.stress * 160.21766208
        np.testing.assert_allclose(stress_gpa, 0.5 * (r["s"] + r["s"].T), atol=2e-2)
        np.testing.assert_allclose(ev.magmoms, r["m"], atol=1e-4)
    assert timings.calls == 1 and timings.evaluations == 3 and timings.graph_s > 0 and timings.model_s > 0


def test_batched_matches_struct_optimizer_within_5_meV(test_cifs, chgnet_model):
    """Same structures, same FIRE: final energies within 5 meV/atom, with structures swapped in
    and out of a batch of 2."""
    from chgnet.model import StructOptimizer

    structures = [_start(test_cifs, n, k) for k, n in enumerate(NAMES)]
    timings = Timings()
    got = relax_batched(chgnet_model, structures, fmax=0.1, max_steps=80, max_batch=2, timings=timings)
    opt = StructOptimizer(model=chgnet_model, optimizer_class="FIRE", use_device="cpu", on_isolated_atoms="ignore")
    for s, r in zip(structures, got):
        with contextlib.redirect_stdout(io.StringIO()):
            ref = opt.relax(s, fmax=0.1, steps=80, verbose=False)
        e_ref = float(ref["trajectory"].energies[-1]) / len(s)
        assert r.ok and r.converged, (s.formula, r.error)
        assert abs(r.energy_per_atom - e_ref) < 0.005, (s.formula, r.energy_per_atom, e_ref)
        assert abs(r.structure.volume - ref["final_structure"].volume) / r.structure.volume < 0.01
        assert r.max_force < 0.1 and len(r.magmoms) == len(s)
        assert r.structure.site_properties["magmom"] == r.magmoms
    # in-flight batching: never more than 2 in a call, so more calls than the longest relaxation
    assert timings.evaluations <= 2 * timings.calls
    assert timings.calls > max(r.steps for r in got)


def test_explosion_in_a_batch_fails_only_that_structure(test_cifs, chgnet_model):
    fused = Structure(Lattice.cubic(3.0), ["Ca", "O"], [[0, 0, 0], [0.05, 0, 0]])
    good = Structure.from_file(test_cifs / "pymatgen_test_structures" / "Si.cif")
    res = relax_batched(chgnet_model, [fused, good], fmax=0.1, max_steps=30)
    assert not res[0].ok and ("fused" in res[0].error or "energy" in res[0].error)
    assert res[1].ok and res[1].converged


def test_fixed_cell_keeps_the_lattice(test_cifs, chgnet_model):
    s = _start(test_cifs, "Li2O", 3)
    r = relax_batched(chgnet_model, [s], fmax=0.05, max_steps=60, relax_cell=False)[0]
    assert r.ok and r.converged
    np.testing.assert_allclose(r.structure.lattice.matrix, s.lattice.matrix, atol=1e-8)


def test_soft_timeout_marks_timed_out(test_cifs, chgnet_model):
    s = _start(test_cifs, "SrTiO3", 5)
    r = relax_batched(chgnet_model, [s], fmax=1e-4, max_steps=10_000, timeout_s=0.5)[0]
    assert not r.ok and r.timed_out and "timed out" in r.error
