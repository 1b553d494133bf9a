"""Random symmetric (AIRSS-style, PyXtal) generator: bounds and learning from rewards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from xtalforge.generators.compositions import NoCompositionError
from xtalforge.generators.random_symmetric import RandomSymmetric

from .search_helpers import CATIO, assert_in_bounds, ctx, verdict


@pytest.fixture(scope="module")
def proposals():
    gen = RandomSymmetric(CATIO, 10)
    return gen.propose(16, ctx(max_atoms=10, seed=0))


def test_proposals_respect_system_size_and_validity(proposals):
    assert len(proposals) >= 12
    assert_in_bounds(proposals, CATIO, 10, "random_symmetric")
    assert all(1 <= c.meta["spacegroup"] <= 230 for c in proposals)
    assert all(len(c.structure.composition.elements) >= 2 for c in proposals)


def test_update_shifts_compositions_and_spacegroups_towards_low_energy(proposals):
    gen = RandomSymmetric(CATIO, 10)
    good = proposals[0]
    f_good, sg_good = good.formula, good.meta["spacegroup"]
    p0, q0 = gen.composition_probs().copy(), gen.spacegroup_probs().copy()
    results = [(c, verdict(c, 0.0 if c.formula == f_good else 0.8)) for c in proposals]
    metrics = gen.update(results)
    p1, q1 = gen.composition_probs(), gen.spacegroup_probs()
    i = gen.compositions.index(f_good)
    assert p1[i] > p0[i]
    others = {c.formula for c in proposals} - {f_good}
    assert all(p1[gen.compositions.index(f)] < p0[gen.compositions.index(f)] for f in others)
    assert q1[sg_good - 1] > 3 * q0[sg_good - 1], "one good result in a space group must be felt"
    assert metrics[f"p_{f_good}"] == pytest.approx(p1[i])
    # the next proposals draw the rewarded composition more often, on the same random stream
    fresh = RandomSymmetric(CATIO, 10)

    def draws(g: RandomSymmetric) -> Counter:
        rng = np.random.default_rng(1)
        return Counter(g.compositions[rng.choice(len(g.compositions), p=g.composition_probs())] for _ in range(400))

    assert draws(gen)[f_good] > draws(fresh)[f_good]
    fresh.load_state_dict(gen.state_dict())
    assert np.allclose(fresh.composition_probs(), p1) and np.allclose(fresh.spacegroup_probs(), q1)


def test_other_generators_results_are_ignored(proposals):
    gen = RandomSymmetric(CATIO, 10)
    p0 = gen.composition_probs().copy()
    c = proposals[0]
    foreign = type(c)(structure=c.structure, source="substitution", round=0, meta=dict(c.meta))
    gen.update([(foreign, verdict(foreign, 0.0))])
    assert np.allclose(gen.composition_probs(), p0)


def test_system_without_charge_balanced_compound_is_a_clear_error():
    with pytest.raises(NoCompositionError):
        RandomSymmetric(("Na", "K"), 10)


def test_shared_tolerance_table_changes_no_distance_check():
    """pyxtal's Wyckoff merge checks periodic images with an explicit tolerance; handing it one
    shared tolerance table (instead of building one per call) must give the same answers."""
    import pyxtal.operations as ops
    import pyxtal.symmetry as sym

    from xtalforge.generators.random_symmetric import _share_pyxtal_tolerances

    _share_pyxtal_tolerances()
    _share_pyxtal_tolerances()  # idempotent: one wrapper, not a wrapper of a wrapper
    assert sym.check_images.shares_tolerances and sym.check_images is not ops.check_images
    rng = np.random.default_rng(0)
    lattice = np.diag([3.0, 4.0, 5.0])
    for _ in range(40):
        coords = rng.random((int(rng.integers(1, 4)), 3))
        species = list(rng.choice(["Ca", "Ti", "O"], size=len(coords)))
        for tol in (None, 0.5, 1.5, 2.5):
            assert sym.check_images(coords, species, lattice, tol=tol) == ops.check_images(coords, species, lattice,
                                                                                            tol=tol)
