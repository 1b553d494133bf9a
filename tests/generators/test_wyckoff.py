"""The Wyckoff generator: encoding, symmetric decoding, masks, likelihoods, state, fine-tuning.

Models are tiny (~80 k parameters) and pre-trained for seconds on a handful of the shared test
CIFs; fixed seeds throughout.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Lattice, Structure

from xtalforge.generators.wyckoff import Constraints, WyckoffGenerator, decode, encode
from xtalforge.generators.wyckoff.rl import reward
from xtalforge.generators.wyckoff.sampler import collate, sample
from xtalforge.generators.wyckoff.tables import letter_index, wyckoff_tables
from xtalforge.generators.wyckoff.train import load_checkpoint, nll_loss, save_checkpoint
from xtalforge.types import Candidate, Measurement, RoundContext

PRETRAIN = ["SrTiO3", "TiO2", "Li2O", "CsCl", "VO2", "BaNiO3", "Si"]
CTO = ("Ca", "Ti", "O")


@pytest.fixture(scope="module")
def tables():
    return wyckoff_tables()


@pytest.fixture(scope="module")
def pretrain_files(test_cifs):
    return [str(test_cifs / "pymatgen_test_structures" / f"{n}.cif") for n in PRETRAIN]


@pytest.fixture(scope="module")
def gen(pretrain_files) -> WyckoffGenerator:
    """A tiny model pre-trained on 7 crystals; tests that change it work on a pickled copy."""
    return WyckoffGenerator(CTO, 6, pretrain_data=pretrain_files, pretrain_epochs=60, seed=0,
                            lr=3e-4, kl_samples=16, metric_samples=8)


def _ctx(seed: int, max_atoms: int = 6, elements=CTO, history=None) -> RoundContext:
    return RoundContext(round=0, elements=elements, max_atoms=max_atoms, rng=np.random.default_rng(seed),
                        history=history or [])


def test_tables_follow_the_international_tables(tables):
    assert tables.mult[221 - 1, letter_index("a")] == 1 and tables.mult[221 - 1, letter_index("d")] == 3
    assert tables.dof[221 - 1, letter_index("d")] == 0
    assert tables.cellsize[225 - 1] == 4 and tables.cellsize[166 - 1] == 3  # F and R (hexagonal axes)
    assert tables.valid[47 - 1].sum() == 27  # Pmmm uses every letter up to 'A'
    # P6/mmm 12o is (x, 2x, z): y follows x, so only x and z are free
    assert tables.free[191 - 1, letter_index("o")].tolist() == [True, False, True]
    assert tables.mult[1 - 1, letter_index("a")] == 1 and tables.valid[1 - 1].sum() == 1


def test_ordered_test_cifs_survive_encode_decode(test_cifs, tables):
    matcher = StructureMatcher()
    files = sorted(test_cifs.glob("*/*.cif"))
    checked, failed = 0, []
    for f in files:
        s = Structure.from_file(f)
        if not s.is_ordered:  # Li10GeP2S12 has partial occupancies
            continue
        s.remove_oxidation_states()
        q = encode(s, tables)
        assert q is not None, f.name
        back = decode(q, tables)
        checked += 1
        if not matcher.fit(s, back):
            failed.append(f.name)
        # the JSON form the campaign store keeps round-trips too
        assert decode(type(q).from_json(json.loads(json.dumps(q.to_json()))), tables).composition == back.composition
    assert checked >= 30
    assert failed == []


def _maps_onto_itself(s: Structure, ops) -> bool:
    frac = s.frac_coords
    species = np.array([site.specie.Z for site in s])
    for op in ops:
        moved = op.operate_multi(frac)
        for x, z in zip(moved, species):
            d = frac[species == z] - x
            d -= np.rint(d)
            if np.abs(d).sum(1).min() > 1e-4:
                return False
    return True


def test_samples_are_symmetric_by_construction(gen, tables):
    seqs, _ = sample(gen.policy, 16, gen.cons, torch.Generator().manual_seed(3))
    assert len({q.sg for q in seqs}) >= 2
    for q in seqs:
        s = decode(q, tables)
        general = tables.wyckoff(q.sg, int(np.flatnonzero(tables.mult[q.sg - 1] == tables.mult[q.sg - 1].max())[0]))
        assert _maps_onto_itself(s, general.ops), (q.sg, q.letters)


def test_sampled_log_prob_equals_teacher_forcing(gen):
    cons = Constraints(elements=(8, 20, 22), max_atoms=4)
    seqs, lp = sample(gen.policy, 32, cons, torch.Generator().manual_seed(1))
    tf = gen.policy.log_prob(collate(seqs, gen.policy.cfg.max_sites), cons)
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp, tf.detach(), atol=1e-3, rtol=1e-4)


def test_samples_respect_element_masks_and_size_limits(gen, tables):
    cands = gen.propose(40, _ctx(0))
    assert len(cands) >= 20
    for c in cands:
        assert {e.symbol for e in c.structure.composition.elements} <= set(CTO)
        assert len(c.structure) <= 6
        assert c.source == "wyckoff" and c.meta["wyckoff"]["sg"] == c.meta["spacegroup"]
    # the model was trained on Sr, Li, Cs, V, Ba, Ni, Si too: the mask alone keeps them out
    seqs, _ = sample(gen.policy, 64, Constraints(elements=(8,), max_atoms=2), torch.Generator().manual_seed(2))
    for q in seqs:
        assert set(q.species) == {8}
        assert q.n_atoms(tables) <= 2 * tables.cellsize[q.sg - 1]
    seqs, _ = sample(gen.policy, 32, Constraints(elements=(22, 8), max_atoms=5, spacegroups=(221,)),
                     torch.Generator().manual_seed(4))
    assert {q.sg for q in seqs} == {221} and all(q.n_atoms(tables) <= 5 for q in seqs)


def test_pretraining_fits_and_checkpoint_round_trips(gen, pretrain_files, tables, tmp_path):
    from xtalforge.generators.wyckoff.generator import load_structures
    from xtalforge.generators.wyckoff.model import WyckoffTransformer

    seqs = [encode(s, tables) for s in load_structures(pretrain_files)]
    batch = collate(seqs, gen.policy.cfg.max_sites)
    torch.manual_seed(0)
    fresh = WyckoffTransformer(gen.policy.cfg, tables)
    with torch.no_grad():
        before = float(nll_loss(fresh, batch)[0])
        after = float(nll_loss(gen.ref, batch)[0])
    assert after < before - 20  # nats per crystal
    folder = save_checkpoint(gen.ref, tmp_path / "ckpt")
    state = torch.load(folder / "model.pt", weights_only=True)  # plain tensors, nothing to unpickle
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    back = load_checkpoint(folder)
    with torch.no_grad():
        assert torch.allclose(back.log_prob(batch), gen.ref.log_prob(batch))
    g2 = WyckoffGenerator(CTO, 6, checkpoint=str(folder))
    assert g2.ready and g2.source.startswith("checkpoint")
    with pytest.raises(ValueError, match="xtalforge pretrain"):
        WyckoffGenerator(CTO, 6, checkpoint=str(tmp_path / "missing"))


def test_state_is_json_and_a_pickled_copy_samples_the_same(gen):
    state = json.loads(json.dumps(gen.state_dict()))
    restored = WyckoffGenerator(CTO, 6, checkpoint=None)  # no weights: proposes nothing
    assert not restored.ready and restored.propose(5, _ctx(1)) == []
    restored.load_state_dict(state)
    copy = pickle.loads(pickle.dumps(gen))  # what a Ray task receives
    ids = [c.id for c in gen.propose(8, _ctx(7))]
    assert ids and [c.id for c in restored.propose(8, _ctx(7))] == ids
    assert [c.id for c in copy.propose(8, _ctx(7))] == ids


def test_reward_terms():
    s = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.9), ["Ca", "Ti", "O"], [[0.5] * 3, [0, 0, 0], [0.5, 0, 0]])
    c = Candidate(structure=s, source="wyckoff", round=0, id="x")
    on_hull = Measurement("x", "mlip", 1, {"e_above_hull": 0.0, "synthesizability": 0.5})
    above = Measurement("x", "mlip", 1, {"e_above_hull": 0.1})
    assert reward(c, on_hull) == pytest.approx(1.0)
    assert reward(c, above) == pytest.approx(np.exp(-1.0))
    both = {"e_above_hull": 1.0, "synthesizability": 1.0}
    assert reward(c, on_hull, both) == pytest.approx(0.75)
    assert reward(c, above, both) == pytest.approx(np.exp(-1.0) / 2)  # missing value scores 0
    # by default synthesizability counts (weight 0.5) only where the campaign scores it
    scored = Measurement("x", "mlip", 1, {"e_above_hull": 0.0, "p_synth": 0.4})
    assert reward(c, scored) == pytest.approx((1.0 + 0.5 * 0.4) / 1.5)
    gap = {"band_gap": {"weight": 1.0, "target": 2.0, "scale": 0.5}}
    assert reward(c, Measurement("x", "p", 1, {"band_gap": 2.0}), gap) == pytest.approx(1.0)


def test_fine_tuning_raises_mean_reward(gen):
    """Synthetic oracle: e_above_hull = 0.3 eV/atom x (1 - oxygen fraction), so oxygen-rich
    crystals are rewarded; six rounds of 24 proposals must move the policy there."""
    g = pickle.loads(pickle.dumps(gen))

    def e_hull(s: Structure) -> float:
        return 0.3 * (1 - s.composition.get_atomic_fraction(Element("O")))

    def mean_reward(seed: int) -> float:
        return float(np.mean([np.exp(-e_hull(c.structure) / 0.1) for c in g.propose(96, _ctx(seed))]))

    before = mean_reward(1000)
    history = []
    for r in range(6):
        cands = g.propose(24, _ctx(r))
        m = g.update([(c, Measurement(c.id, "synthetic", 1, {"e_above_hull": e_hull(c.structure)})) for c in cands])
        history.append(m)
    after = mean_reward(1000)
    assert after > before + 0.1, (before, after)
    assert all(m["n_results"] >= 20 for m in history)
    for key in ("mean_reward", "kl", "validity", "uniqueness"):
        assert np.isfinite(history[-1][key])
    assert history[-1]["kl"] > 0  # it moved away from the reference, on a leash
    assert gen.policy is not g.policy  # the shared fixture is untouched


def test_prepare_pretrains_on_the_history(test_cifs):
    """From scratch: nothing to propose until the search has found low-energy structures."""
    g = WyckoffGenerator(CTO, 5, pretrain_on_history=True, pretrain_epochs=30, min_history=2)
    assert g.prepare(_ctx(0)) == {} and g.propose(4, _ctx(0)) == []
    sto = Structure.from_file(test_cifs / "pymatgen_test_structures" / "SrTiO3.cif")
    sto.remove_oxidation_states()
    sto.replace_species({"Sr": "Ca"})
    tio2 = Structure.from_file(test_cifs / "pymatgen_test_structures" / "VO2.cif")
    tio2.replace_species({"V": "Ti"})
    hist = [(Candidate(structure=s, source="random_symmetric", round=0),
             Measurement("h", "mlip", 1, {"e_above_hull": e}, relaxed=s)) for s, e in ((sto, 0.0), (tio2, 0.05))]
    out = g.prepare(_ctx(0, 5, history=hist))
    assert out["pretrain_structures"] == 2 and g.ready and g.source.startswith("history")
    assert g.prepare(_ctx(0, 5, history=hist)) == {}  # once
    cands = g.propose(10, _ctx(1, 5))
    assert cands and all(len(c.structure) <= 5 for c in cands)
