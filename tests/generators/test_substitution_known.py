"""Substitution on the reference snapshot's structures (prototypes: known), target system hidden."""

from __future__ import annotations

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher

from xtalforge.generators.compositions import is_charge_balanced
from xtalforge.generators.prototypes import best_assignment, known_sources
from xtalforge.generators.registry import build_generator
from xtalforge.generators.substitution import Substitution
from xtalforge.references.known import load_known

from .search_helpers import assert_in_bounds, ctx

SRTIO = ("Sr", "Ti", "O")


@pytest.fixture(scope="module")
def saps() -> Substitution:
    return build_generator("substitution", SRTIO, 12, {"prototypes": "known", "exclude_chemsys": ["Sr-Ti-O"],
                                                      "builtin": False})


def test_best_assignment_is_one_to_one():
    score = {("Ba", "Sr"): 0.5, ("Ba", "Ti"): 0.1, ("Zr", "Ti"): 0.4, ("Zr", "Sr"): 0.2, ("O", "O"): 1.0}
    f = lambda a, b: score.get((a, b), 0.0)  # noqa: E731
    assert best_assignment(["Ba", "Zr", "O"], ["Sr", "Ti", "O"], f) == pytest.approx(0.5 * 0.4 * 1.0)
    assert best_assignment(["Ba", "Zr", "O", "S"], ["Sr", "Ti", "O"], f) == 0.0


def test_library_leaves_the_hidden_system_out_and_ranks_close_analogues_first(saps):
    sources = known_sources(SRTIO, 12, saps.element_score, ["O-Sr-Ti"], limit=60)
    assert len(sources) == 60
    assert all(s.chemsys != "O-Sr-Ti" and len(s.chemsys.split("-")) == 3 for s in sources)
    assert all(len(s.structure) <= 12 and s.e_above_hull <= 0.025 + 1e-9 for s in sources)
    scores = [s.score for s in sources]
    assert scores == sorted(scores, reverse=True)
    systems = {s.chemsys for s in sources}
    # Ba, Ca for Sr; Zr, Hf, Sn for Ti: the perovskite and Ruddlesden-Popper families
    assert {"Ba-O-Ti", "Ca-O-Ti", "O-Sr-Zr"} & systems, systems
    unhidden = known_sources(SRTIO, 12, saps.element_score, (), limit=60)
    assert "O-Sr-Ti" in {s.chemsys for s in unhidden}, "the system itself ranks first when it is not hidden"


def test_known_prototypes_propose_valid_candidates(saps):
    assert saps.prototypes and all(p.key.startswith("known:") for p in saps.prototypes)
    cands = saps.propose(40, ctx(SRTIO, max_atoms=12, seed=1))
    assert len(cands) >= 20
    assert_in_bounds(cands, SRTIO, 12, "substitution", "low")
    assert all(c.meta["prototype"].startswith("known:") for c in cands)


def test_hidden_ground_state_is_reachable_by_substitution(saps):
    """Sr2TiO4 (K2NiF4 type) is hidden, but Sr2ZrO4/Ba2TiO4-type analogues are not: substituting
    them proposes a cell that matches the hidden ground state before any relaxation."""
    target = next(p for p in load_known(SRTIO, ["snapshot"]).phases if p.material_id == "mp-5532").structure
    cands = saps.propose(200, ctx(SRTIO, max_atoms=12, seed=0))
    same = [c for c in cands if c.formula == "Sr2TiO4"]
    assert same, "no Sr2TiO4 proposed"
    assert any(StructureMatcher().fit(c.structure, target) for c in same)


def test_default_adds_the_snapshot_library_to_the_textbook_set():
    gen = Substitution(SRTIO, 12)
    kinds = {p.key.split(":")[0] for p in gen.prototypes}
    assert kinds == {"builtin", "known"}
    textbook = Substitution(SRTIO, 12, prototypes=[])
    assert textbook.prototypes and all(p.key.startswith("builtin:") for p in textbook.prototypes)


def test_rarer_oxidation_states_of_known_ground_states_are_proposed():
    # NaBiO3 (Bi5+) is on the MP hull, yet SMACT's "medium" commonality rejects it
    assert not is_charge_balanced("NaBiO3", "medium") and is_charge_balanced("NaBiO3", "low")
    gen = build_generator("substitution", ("Bi", "Na", "O"), 12, {"prototypes": "known", "exclude_chemsys": ["Bi-Na-O"]})
    formulas = {c.structure.composition.reduced_formula for c in gen.propose(120, ctx(("Bi", "Na", "O"), 12, seed=0))}
    assert {"NaBiO3", "Na5BiO5"} & formulas, sorted(formulas)


def test_antiperovskites_with_anionic_tin_serve_as_prototypes():
    """Sr3SnO holds Sn4-, in pymatgen's common oxidation states of tin but not in ICSD's: it is a
    prototype all the same, and Sr -> Ba on it proposes the hidden ground state Ba3SnO."""
    bsn = ("Ba", "O", "Sn")
    gen = build_generator("substitution", bsn, 12, {"prototypes": "known", "exclude_chemsys": ["Ba-O-Sn"],
                                                    "builtin": False})
    assert "known:mp-7961" in {p.key for p in gen.prototypes}
    target = next(p for p in load_known(bsn, ["snapshot"]).phases if p.material_id == "mp-29243").structure
    cands = gen.propose(300, ctx(bsn, max_atoms=12, seed=0))
    assert any(c.formula == "Ba3SnO" and StructureMatcher().fit(c.structure, target) for c in cands)
