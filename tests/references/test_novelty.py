"""Novelty: a rediscovered known phase gets its material id, a new structure gets none."""

import time

from pymatgen.core import Lattice, Structure

from xtalforge.references.novelty import KnownStructures, known_match

from .conftest import cubic_catio3, rocksalt_cao


def test_rocksalt_cao_is_mp_2605_not_novel(ca_ti_o):
    assert known_match(rocksalt_cao(), ca_ti_o.phases) == "mp-2605"
    # the volume does not matter (an MLIP relaxes to a few percent off DFT): StructureMatcher scales
    strained = rocksalt_cao()
    strained.scale_lattice(strained.volume * 1.08)
    assert known_match(strained, ca_ti_o.phases) == "mp-2605"


def test_cubic_perovskite_is_the_known_cubic_phase_not_pnma(ca_ti_o):
    assert known_match(cubic_catio3(), ca_ti_o.phases) == "mp-5827"
    pnma = ca_ti_o.by_id()["mp-4019"].structure
    assert known_match(pnma, ca_ti_o.phases) == "mp-4019"


def test_a_structure_matching_no_known_phase_is_novel(ca_ti_o):
    cscl_type = Structure(Lattice.cubic(2.9), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert known_match(cscl_type, ca_ti_o.phases) == ""


def test_user_references_count_as_known(ca_ti_o):
    cscl_type = Structure(Lattice.cubic(2.9), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    index = KnownStructures(ca_ti_o.phases)
    n = len(index)
    index.add("my-lab-cscl", cscl_type)
    assert len(index) == n + 1
    assert index.match(cscl_type.copy().make_supercell([2, 1, 1])) == "my-lab-cscl"


def test_matching_compares_only_polymorphs_of_the_formula(ca_ti_o):
    index = KnownStructures(ca_ti_o.phases)
    probes = [rocksalt_cao(), cubic_catio3()] * 5
    t0 = time.perf_counter()
    got = [index.match(s) for s in probes]
    per = (time.perf_counter() - t0) / len(probes)
    print(f"known_match against {len(index)} Ca-Ti-O structures: {per * 1000:.0f} ms per structure")
    assert got == ["mp-2605", "mp-5827"] * 5
    assert per < 0.5
