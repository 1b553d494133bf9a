"""Substitution (SAPS-style) generator on the shipped prototypes, user files and campaign history."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from pymatgen.core import Species

from xtalforge.generators.compositions import NoCompositionError
from xtalforge.generators.prototypes import builtin_paths, load_prototypes
from xtalforge.generators.registry import build_generator
from xtalforge.generators.substitution import Substitution, partial_substitution, system_ions
from xtalforge.loop.dedup import exact_key
from xtalforge.types import Candidate

from .search_helpers import CATIO, assert_in_bounds, ctx, perovskite, verdict


@pytest.fixture(scope="module")
def catio() -> Substitution:
    return Substitution(CATIO, 12, prototypes=[])  # the textbook set alone (tests/.../test_substitution_known.py: the snapshot)


def test_shipped_prototypes_are_ordered_textbook_types():
    paths = builtin_paths()
    assert 15 <= len(paths) <= 30
    protos = load_prototypes([], builtin=True, max_atoms=200)
    assert len(protos) == len(paths), "every shipped prototype must load"
    for p in protos:
        s = p.primitive.structure
        assert s.is_ordered and abs(s.charge) < 1e-6, p.key
        # orbits partition the sites
        assert sorted(i for o in p.primitive.orbits for i in o) == list(range(len(s))), p.key


def test_proposals_stay_in_the_system_and_size_limit(catio):
    cands = catio.propose(30, ctx(max_atoms=12))
    assert len(cands) >= 10
    assert_in_bounds(cands, CATIO, 12, "substitution", "low")
    assert len({exact_key(c.structure) for c in cands}) == len(cands), "no decoration proposed twice"
    for c in cands:
        assert c.meta["prototype"].startswith("builtin:")
    formulas = {c.formula for c in cands}
    assert {"CaTiO3", "CaO", "TiO2"} <= formulas, formulas


def test_smaller_cell_limit_is_respected():
    gen = build_generator("substitution", CATIO, 5)
    cands = gen.propose(20, ctx(max_atoms=5, seed=3))
    assert cands
    assert_in_bounds(cands, CATIO, 5, "substitution", "low")


def test_partial_substitution_is_charge_compensated():
    """Replacing part of the Mn of a Li-Mn-O spinel-like cell keeps the cell neutral."""
    ions = system_ions(("Li", "Mn", "O"))
    species = ["Li+"] * 2 + ["Mn4+"] * 2 + ["Mn3+"] * 2 + ["O2-"] * 8
    orbits = [(0, 1), (2, 3, 4, 5), tuple(range(6, 14))]
    changed = 0
    for seed in range(40):
        res = partial_substitution(species, orbits, ions, lambda a, b: 1.0, np.random.default_rng(seed))
        if res is None:
            continue
        new, pairs = res
        assert abs(sum(Species.from_str(x).oxi_state for x in new)) < 1e-6, (new, pairs)
        assert new != species and 1 <= len(pairs) <= 2
        changed += 1
    assert changed >= 10


def test_history_structures_become_prototypes():
    """The campaign's relaxed CaTiO3 yields Sr-containing derivatives in Ca-Sr-Ti-O (full or partial)."""
    elements = ("Ca", "Sr", "Ti", "O")
    best = Candidate(structure=perovskite(), source="random_symmetric", round=0)
    gen = Substitution(elements, 10, prototypes=[], builtin=False)
    cands = gen.propose(12, ctx(elements, max_atoms=10, history=[(best, verdict(best, 0.0))]))
    assert cands
    assert_in_bounds(cands, elements, 10, "substitution", "low")
    assert all(c.parents == [best.id] and c.meta["prototype"] == f"history:{best.id}" for c in cands)
    assert any("Sr" in c.formula for c in cands)
    assert any(c.meta["partial"] for c in cands), "the doubled cell allows a partial Ca -> Sr substitution"


def test_update_favours_prototypes_that_hit(catio):
    gen = Substitution(CATIO, 12, prototypes=[])
    cands = gen.propose(30, ctx(max_atoms=12, seed=1))
    good = "builtin:perovskite_SrTiO3"
    assert any(c.meta["prototype"] == good for c in cands)
    before = {p.key: gen.prototype_weight(p) for p in gen.prototypes}
    results = [(c, verdict(c, 0.0 if c.meta["prototype"] == good else 0.4)) for c in cands]
    metrics = gen.update(results)
    after = {p.key: gen.prototype_weight(p) for p in gen.prototypes}
    assert after[good] > before[good]
    tried = {c.meta["prototype"] for c in cands} - {good}
    assert all(after[k] < before[k] for k in tried)
    assert metrics["w_perovskite_SrTiO3"] == pytest.approx(after[good])
    # the next round draws the perovskite prototype more often than before the update
    fresh = Substitution(CATIO, 12, prototypes=[])

    def share(g):
        picks = Counter()
        for seed in range(3):
            picks.update(c.meta["prototype"] for c in g.propose(15, ctx(max_atoms=12, seed=10 + seed)))
        return picks[good] / sum(picks.values())

    assert share(gen) > share(fresh)
    # the learned weights survive a checkpoint
    fresh.load_state_dict(gen.state_dict())
    assert {p.key: fresh.prototype_weight(p) for p in fresh.prototypes} == after


def test_update_favours_substitution_pairs_that_hit():
    gen = Substitution(CATIO, 12, prototypes=[])
    cands = gen.propose(30, ctx(max_atoms=12, seed=2))
    good = "Mg2+>Ca2+"  # rocksalt MgO -> CaO and friends
    assert any(good in c.meta["pairs"] for c in cands)
    gen.update([(c, verdict(c, 0.0 if good in c.meta["pairs"] else 0.3)) for c in cands])
    assert gen.pair_weight(good) > 1.0
    others = {p for c in cands for p in c.meta["pairs"] if good not in c.meta["pairs"]}
    assert others and all(gen.pair_weight(p) < 1.0 for p in others)


def test_bad_prototype_files_are_skipped_with_a_message(test_cifs, tmp_path, caplog):
    disordered = test_cifs / "pymatgen_test_structures" / "Li10GeP2S12.cif"
    outside = test_cifs / "pymatgen_test_structures" / "BaNiO3.cif"  # Ba, Ni: outside Ca-Ti-O
    with caplog.at_level(logging.WARNING):
        gen = Substitution(CATIO, 12, prototypes=[str(disordered), str(tmp_path / "missing.cif"), str(outside)],
                           builtin=False)
    text = caplog.text
    assert "partial occupancies" in text and "does not exist" in text
    assert [p.key for p in gen.prototypes] == ["file:BaNiO3"]
    cands = gen.propose(10, ctx(max_atoms=12))
    assert cands, "a prototype outside the system is substituted into it"
    assert_in_bounds(cands, CATIO, 12, "substitution", "low")


def test_system_without_charge_balanced_compound_is_a_clear_error():
    with pytest.raises(NoCompositionError, match="no charge-balanced compound"):
        Substitution(("Na", "K"), 10)


def test_generator_travels_to_ray_without_pymatgens_table(catio):
    """Ray pickles the generator into every proposal task; pymatgen's substitution table
    rebuilds itself on unpickling (seconds), so only the memo of probabilities may travel."""
    import pickle

    catio.propose(5, ctx(max_atoms=12))
    blob = pickle.dumps(catio)
    assert b"SubstitutionProbability" not in blob
    copy = pickle.loads(blob)
    pairs = list(catio.table._memo)[:20]
    assert pairs and all(copy.table.p(*k) == catio.table.p(*k) for k in pairs)
    assert copy.table.p("Sr2+", "Ca2+") > 0 and copy.table.p("O2-", "Ca2+") == 0.0  # new pairs still answer
    a, b = catio.propose(10, ctx(max_atoms=12, seed=3)), copy.propose(10, ctx(max_atoms=12, seed=3))
    assert [c.id for c in a] == [c.id for c in b]
