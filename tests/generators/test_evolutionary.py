"""Evolutionary generator: operators on real structures, parent choice, operator learning."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from xtalforge.generators.compositions import NoCompositionError
from xtalforge.generators.evolutionary import OPERATORS, Evolutionary, coord, crossover, strain, substitute, swap
from xtalforge.generators.registry import build_generator
from xtalforge.generators.substitution import system_ions
from xtalforge.types import Candidate

from .search_helpers import CATIO, assert_in_bounds, ctx, perovskite, rocksalt, rutile, verdict


@pytest.fixture(scope="module")
def history():
    """Five relaxed-looking Ca-Ti-O structures, best first, as the campaign would hand them over."""
    structs = [perovskite(), perovskite(lattice=3.95) * [1, 1, 2], rocksalt(), rutile(),
               perovskite(lattice=4.1)]
    structs[4].perturb(0.15, min_distance=0.05)
    hist = []
    for i, s in enumerate(structs):
        c = Candidate(structure=s, source="random_symmetric", round=0)
        hist.append((c, verdict(c, 0.05 * i)))
    return hist


def test_operators_keep_what_they_should(history):
    rng = np.random.default_rng(0)
    s = history[1][1].relaxed  # 10-atom CaTiO3
    st = strain(s, rng)
    assert st.composition == s.composition and st.volume == pytest.approx(s.volume)
    assert not np.allclose(st.lattice.matrix, s.lattice.matrix)
    sw = swap(s, rng)
    assert sw.composition == s.composition
    assert [str(x) for x in sw.species] != [str(x) for x in s.species]
    co = coord(s, rng)
    assert co.composition == s.composition and np.allclose(co.lattice.matrix, s.lattice.matrix)
    assert np.abs(co.cart_coords - s.cart_coords).max() > 0.01
    child = crossover(s, history[2][1].relaxed, rng)
    assert child is None or set(child.composition.elements) <= set(s.composition.elements)


def test_substitute_is_charge_compensated():
    """Li-Mn-O: turning some Mn into Li needs a compensating second change; the result stays neutral."""
    from xtalforge.generators.compositions import is_charge_balanced

    s = rocksalt("Mn", "O", 4.45) * [2, 1, 1]
    ions = system_ions(("Li", "Mn", "O"))
    made = [substitute(s, np.random.default_rng(k), ions) for k in range(20)]
    made = [m for m in made if m is not None]
    assert made
    assert any(m.composition != s.composition for m in made)
    assert all(is_charge_balanced(m.composition) or len(m.composition.elements) == 1 for m in made)


def test_children_respect_system_size_and_validity(history):
    gen = Evolutionary(CATIO, 12)
    cands = gen.propose(30, ctx(max_atoms=12, history=history))
    assert len(cands) >= 15
    assert_in_bounds(cands, CATIO, 12, "evolutionary")
    hist_ids = {c.id for c, _ in history}
    for c in cands:
        assert c.meta["operator"] in OPERATORS
        assert c.parents and set(c.parents) <= hist_ids
        assert len(c.parents) <= (2 if c.meta["operator"] == "crossover" else 1)
    assert len({c.meta["operator"] for c in cands}) >= 3


def test_smaller_cell_limit_is_respected(history):
    gen = build_generator("evolutionary", CATIO, 6)
    cands = gen.propose(15, ctx(max_atoms=6, history=history, seed=4))
    assert cands
    assert_in_bounds(cands, CATIO, 6, "evolutionary")


def test_parents_come_from_the_best(history):
    """One parent on the hull and the rest far above it: the best one breeds most children."""
    skewed = [(c, verdict(c, 0.0 if i == 0 else 1.0)) for i, (c, _) in enumerate(history)]
    gen = Evolutionary(CATIO, 12)
    cands = gen.propose(40, ctx(max_atoms=12, history=skewed, seed=5))
    counts = Counter(p for c in cands for p in c.parents)
    assert counts.most_common(1)[0][0] == history[0][0].id
    assert counts[history[0][0].id] > 0.5 * len(cands)


def test_population_is_capped(history):
    gen = Evolutionary(CATIO, 12, population_size=2)
    cands = gen.propose(20, ctx(max_atoms=12, history=history, seed=6))
    assert cands and {p for c in cands for p in c.parents} <= {history[0][0].id, history[1][0].id}


def test_no_history_seeds_from_prototypes():
    gen = Evolutionary(CATIO, 10)
    cands = gen.propose(10, ctx(max_atoms=10))
    assert cands, "seeds from shipped prototypes decorated within the system"
    assert_in_bounds(cands, CATIO, 10, "evolutionary")
    assert all(c.parents == [] and c.meta["seed"].startswith("builtin:") for c in cands)


def test_no_history_and_no_seeds_proposes_nothing(caplog):
    gen = Evolutionary(CATIO, 10, seed_from_prototypes=False)
    assert gen.propose(5, ctx(max_atoms=10)) == []
    assert "no relaxed structures yet" in caplog.text


def test_operator_weights_follow_success(history):
    gen = Evolutionary(CATIO, 12)
    cands = gen.propose(40, ctx(max_atoms=12, history=history, seed=7))
    assert any(c.meta["operator"] == "swap" for c in cands)
    p0 = dict(zip(OPERATORS, gen.operator_probs()))
    metrics = gen.update([(c, verdict(c, 0.0 if c.meta["operator"] == "swap" else 0.5)) for c in cands])
    p1 = dict(zip(OPERATORS, gen.operator_probs()))
    assert p1["swap"] > p0["swap"]
    tried = {c.meta["operator"] for c in cands} - {"swap"}
    assert tried and all(p1[op] < p0[op] for op in tried)
    assert metrics["p_swap"] == pytest.approx(p1["swap"])
    # results from another generator teach it nothing
    before = gen.operator_weights()
    other = Candidate(structure=perovskite(), source="substitution", round=1, meta={"operator": "strain"})
    gen.update([(other, verdict(other, 0.0))])
    assert gen.operator_weights() == before
    fresh = Evolutionary(CATIO, 12)
    fresh.load_state_dict(gen.state_dict())
    assert fresh.operator_weights() == before


def test_system_without_charge_balanced_compound_is_a_clear_error():
    with pytest.raises(NoCompositionError):
        Evolutionary(("Na", "K"), 10)


def test_history_through_ray_object_store(ray_local, history, caplog):
    """In a campaign the context reaches the generators through Ray's object store, whose numpy
    arrays are read-only, among them the LLL-reduced lattice a structure cached before it was sent:
    every operator must still work on that history, in a task and in process."""
    from xtalforge.loop.executor import propose_parallel

    for _, m in history:
        m.relaxed.distance_matrix  # what the campaign's hull and features do before sending
    shipped = ray_local.get(ray_local.put(list(history)))
    gen = Evolutionary(CATIO, 12)
    cands = gen.propose(30, ctx(max_atoms=12, history=shipped, seed=8))
    assert "attempts raised" not in caplog.text
    assert {"swap", "coord"} <= {c.meta["operator"] for c in cands}
    assert_in_bounds(cands, CATIO, 12, "evolutionary")
    for name in ("evolutionary", "substitution"):
        got = propose_parallel(build_generator(name, CATIO, 12), 8, ctx(max_atoms=12, history=shipped, seed=9),
                               chunks=2)
        assert got, name
        assert_in_bounds(got, CATIO, 12, name, "low" if name == "substitution" else "medium")


def test_prototype_seeds_are_drawn_once_in_prepare_and_travel_with_the_generator():
    """With nothing relaxed yet, prepare() seeds parents from the shipped prototypes once in
    the campaign's process; copies sent to proposal tasks breed from those seeds."""
    import copy

    gen = Evolutionary(CATIO, 12)
    got = gen.prepare(ctx(max_atoms=12))
    assert got["prototype_seeds"] == len(gen._seeds) > 0
    task_copy = copy.deepcopy(gen)
    pop = task_copy.population(ctx(max_atoms=12, seed=5))
    assert [s.composition for _, s, _, _ in pop] == [s.composition for _, s, _, _ in gen._seeds]
    kids = task_copy.propose(6, ctx(max_atoms=12, seed=5))
    assert kids and all(c.source == "evolutionary" for c in kids)
    # once the campaign has relaxed structures, they are the parents and no seeds are drawn
    history = [(kids[0], verdict(kids[0], 0.0))]
    assert gen.prepare(ctx(max_atoms=12, history=history)) == {} and gen._seeds == []
