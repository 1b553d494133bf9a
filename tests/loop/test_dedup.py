"""Deduplication: symmetry-equivalent copies of real crystals collapse; distinct crystals stay."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xtalforge.loop.dedup import Deduplicator, fingerprint
from xtalforge.types import Candidate

# small ordered crystals from the shared test data (<= 12 atoms, so supercells stay cheap)
NAMES = [
    "pymatgen_test_structures/SrTiO3.cif",
    "pymatgen_test_structures/TiO2.cif",
    "pymatgen_test_structures/VO2.cif",
    "pymatgen_test_structures/Li2O.cif",
    "pymatgen_test_structures/CsCl.cif",
    "pymatgen_test_structures/SiO2.cif",
    "pymatgen_test_structures/BaNiO3.cif",
    "camd/fe2o3.cif",
    "chgnet_examples/mp-18767-LiMnO2.cif",
    "cod_minerals_from_ase/cod_9017338.cif",  # cristobalite: same formula as SiO2.cif (quartz)
]


def _read(path) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = Structure.from_file(path)
    s.remove_oxidation_states()
    s.remove_site_property("magmom") if "magmom" in s.site_properties else None
    return s


@pytest.fixture(scope="module")
def crystals(test_cifs):
    return [_read(test_cifs / n) for n in NAMES]


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def variants(s: Structure, rng: np.random.Generator) -> dict[str, Structure]:
    """Rotated, translated, supercell and site-permuted copies of `s` (and all four at once)."""
    rotated = Structure(Lattice(s.lattice.matrix @ _rotation(rng).T), s.species, s.frac_coords)
    translated = s.copy()
    translated.translate_sites(list(range(len(s))), rng.random(3), frac_coords=True, to_unit_cell=True)
    supercell = s * [1, 2, 1]
    perm = rng.permutation(len(s))
    permuted = Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm])
    every = Structure(Lattice((s * [2, 1, 1]).lattice.matrix @ _rotation(rng).T), (s * [2, 1, 1]).species,
                      (s * [2, 1, 1]).frac_coords)
    every.translate_sites(list(range(len(every))), rng.random(3), frac_coords=True, to_unit_cell=True)
    p2 = rng.permutation(len(every))
    every = Structure(every.lattice, [every.species[i] for i in p2], every.frac_coords[p2])
    return {"rotated": rotated, "translated": translated, "supercell": supercell, "permuted": permuted,
            "all": every}


def test_variants_collapse_to_the_original(crystals):
    rng = np.random.default_rng(7)
    originals = [Candidate(structure=s, source="test", round=0) for s in crystals]
    dedup = Deduplicator()
    assert len(dedup.unique(originals)) == len(crystals), "distinct crystals must all be kept"
    for orig in originals:
        for kind, v in variants(orig.structure, rng).items():
            c = Candidate(structure=v, source="test", round=0)
            assert dedup.match(v) == orig.id or c.id == orig.id, f"{orig.formula} {kind} not matched"
            assert not dedup.add(c), f"{orig.formula} {kind} counted as new"
    assert len(dedup) == len(crystals)


def test_variants_share_the_bucket_fingerprint(crystals):
    rng = np.random.default_rng(3)
    for s in crystals:
        key, desc = fingerprint(s)
        for kind, v in variants(s, rng).items():
            k2, m2 = fingerprint(v)
            assert k2 == key, f"{s.composition.reduced_formula} {kind}: {k2} != {key}"
            assert np.allclose(m2, desc, atol=1e-6), kind


def test_same_formula_different_crystal_is_kept(crystals):
    quartz, cristobalite = crystals[5], crystals[-1]
    assert quartz.composition.reduced_formula == cristobalite.composition.reduced_formula == "SiO2"
    dedup = Deduplicator([Candidate(structure=quartz, source="test", round=0)])
    assert dedup.add(Candidate(structure=cristobalite, source="test", round=0))
    # numerical noise (0.5 % strain, 0.02 Å jitter) does not make a new crystal
    strained = quartz.copy()
    strained.apply_strain([0.005, 0, 0])
    strained.perturb(0.02)
    assert not dedup.add(Candidate(structure=strained, source="test", round=0))


def test_known_candidates_seed_the_memory(crystals):
    known = [Candidate(structure=s, source="store", round=0) for s in crystals[:4]]
    dedup = Deduplicator(known)
    fresh = [Candidate(structure=s * [1, 1, 2], source="gen", round=1) for s in crystals[:6]]
    kept = dedup.unique(fresh)
    assert [c.formula for c in kept] == [s.composition.reduced_formula for s in crystals[4:6]]


def test_many_random_structures_are_fast_and_exact():
    """2,000 random 6-atom Ca-Ti-O cells (all distinct) plus a rotated copy of 200 of them."""
    rng = np.random.default_rng(0)
    cands = []
    for _ in range(2000):
        lat = Lattice.from_parameters(*rng.uniform(3.5, 6.5, 3), *rng.uniform(70, 110, 3))
        cands.append(Candidate(structure=Structure(lat, ["Ca", "Ti", "O", "O", "O", "O"], rng.random((6, 3))),
                               source="test", round=0, id=f"r{len(cands)}"))
    copies = [Candidate(structure=Structure(Lattice(c.structure.lattice.matrix @ _rotation(rng).T),
                                            c.structure.species, c.structure.frac_coords),
                        source="test", round=0, id=f"c{i}")
              for i, c in enumerate(cands[:200])]
    dedup = Deduplicator()
    t = time.perf_counter()
    kept = dedup.unique(cands + copies)
    dt = time.perf_counter() - t
    assert len(kept) == len(cands), "random cells are distinct; their rotated copies are not"
    assert dedup.matcher_calls < 10 * len(cands), "the pre-screen must spare most matcher calls"
    assert dt < 30, f"{dt:.1f} s for 2,200 structures"


def test_distinct_structures_sharing_a_canonical_id_both_survive():
    """The canonical hash rounds the lattice and ignores free coordinates, so two wurtzites
    with very different internal parameter u share it; the matcher keeps them apart."""
    from pymatgen.core import Lattice, Structure

    from xtalforge.loop.dedup import Deduplicator
    from xtalforge.types import Candidate

    def wurtzite(u: float) -> Structure:
        return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                         [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, u]])

    a, b = (Candidate(structure=wurtzite(u), source="t", round=0) for u in (0.375, 0.12))
    assert a.id == b.id  # the hash clash this test is about
    again = Candidate(structure=wurtzite(0.375), source="t", round=0)
    kept = Deduplicator().unique([a, b, again])
    assert len(kept) == 2 and kept[0].id != kept[1].id


def test_parallel_batches_give_the_serial_answer(crystals):
    """600 structures (random cells, their rotated copies, repeats, test crystals): two worker
    processes keep the same candidates, with the same ids, as one."""
    from xtalforge.loop.dedup import PARALLEL_MIN


    def batch() -> list[Candidate]:
        r = np.random.default_rng(5)
        out = []
        for i in range(300):
            lat = Lattice.from_parameters(*r.uniform(3.5, 6.5, 3), *r.uniform(70, 110, 3))
            s = Structure(lat, ["Ca", "Ti", "O", "O", "O"] if i % 2 else ["Mg", "Mg", "O", "O"],
                          r.random((5 if i % 2 else 4, 3)))
            out.append(Candidate(structure=s, source="t", round=0, id=f"r{i // 7}"))  # shared ids on purpose
        out += [Candidate(structure=Structure(Lattice(c.structure.lattice.matrix @ _rotation(r).T),
                                              c.structure.species, c.structure.frac_coords), source="t", round=0)
                for c in out[:200]]
        out += [Candidate(structure=s, source="t", round=0) for s in crystals] * 10
        return out

    serial = Deduplicator(workers=1).unique(batch())
    par_dedup = Deduplicator(workers=2)
    par = par_dedup.unique(batch())
    assert len(batch()) >= PARALLEL_MIN
    assert [c.id for c in par] == [c.id for c in serial]
    assert len(par) == 300 + len(crystals)
    # the memory after a parallel batch answers like the serial one
    again = Candidate(structure=batch()[0].structure * [1, 2, 1], source="t", round=1)
    assert not par_dedup.add(again)
    assert par_dedup.match(again.structure) == serial[0].id
