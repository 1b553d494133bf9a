"""The Wyckoff generator pre-trained on Materials Project crystals, as shipped: loading, the
split by composition, conditioned sampling, refusal of damaged checkpoints, campaign use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from pymatgen.core import Element

from xtalforge.generators.wyckoff import Constraints, WyckoffGenerator
from xtalforge.generators.wyckoff.drawing import draw, structure_problem
from xtalforge.generators.wyckoff.generator import trained_systems_within
from xtalforge.generators.wyckoff.mp_data import normalise_chemsys, read_mp, split_of
from xtalforge.generators.wyckoff.sampler import sample
from xtalforge.generators.wyckoff.tables import wyckoff_tables
from xtalforge.generators.wyckoff.train import CheckpointError, load_checkpoint, read_card, shipped_checkpoint
from xtalforge.types import Measurement, RoundContext

BZO = ("Ba", "Zr", "O")


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(shipped_checkpoint())


@pytest.fixture(scope="module")
def card():
    return read_card(shipped_checkpoint())["info"]


def _zs(elements) -> tuple[int, ...]:
    return tuple(sorted(Element(e).Z for e in elements))


def test_shipped_checkpoint_loads_and_its_card_says_what_it_learned_from(shipped, card):
    assert shipped.cfg.max_sites >= 12 and not shipped.training
    assert card["data"]["max_atoms"] == 20 and "Materials Project" in card["data"]["attribution"]
    split = card["split"]
    assert "reduced composition" in split["method"] and split["structures"]["train"] > 10_000
    assert split["structures"]["test"] > 1000 and split["compositions"]["test"] > 1000
    assert card["size"]["parameters"] == sum(p.numel() for p in shipped.parameters())
    assert np.isfinite(card["metrics"]["best_val_nll"]) and np.isfinite(card["metrics"]["test_nll"])
    assert {"Ba", "Zr", "O", "Ca", "Ti"} <= set(card["elements"])
    assert "Ca-O-Ti" in card["chemical_systems"] and len(card["chemical_systems"]) > 1000
    assert (shipped_checkpoint() / "CARD.md").is_file()


def test_split_is_by_composition_and_fixed_by_the_seed(data_dir):
    assert split_of("BaZrO3", 0) == split_of("BaZrO3", 0)
    assert {split_of(f"Li{i}O", 0) for i in range(1, 40)} == {"train", "val", "test"}
    mp = data_dir / "mp_reference" / "mp_structures.csv.gz"
    entries, _ = read_mp(mp, max_atoms=20, seed=0)
    by_formula: dict[str, set[str]] = {}
    for e in entries:
        by_formula.setdefault(e.reduced_formula, set()).add(e.split)
    assert max(len(s) for s in by_formula.values()) == 1  # polymorphs never straddle splits
    assert sum(len(ids) > 1 for ids in _polymorphs(entries).values()) > 500  # and there are many
    kept, dropped = read_mp(mp, max_atoms=20, seed=0, exclude_chemsys=["Zr-Ba-O"])
    assert len(kept) + len(dropped) == len(entries) and dropped
    systems = {e.chemsys for e in kept}
    assert not systems & {"Ba-O-Zr", "Ba-O", "O-Zr", "Ba-Zr"} and {"Ba", "O", "Zr"} <= systems
    with pytest.raises(ValueError, match="Xx"):
        normalise_chemsys("Ba-Xx-O")


def _polymorphs(entries) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in entries:
        out.setdefault(e.reduced_formula, []).append(e.material_id)
    return out


def test_sampling_in_a_chemical_system_keeps_its_elements_and_size(shipped):
    tables = wyckoff_tables()
    cons = Constraints(elements=_zs(BZO), max_atoms=10)
    got, why = draw(shipped, 24, cons, tables, torch.Generator().manual_seed(0))
    assert len(got) >= 12, why
    for d in got:
        assert {str(e) for e in d.structure.composition.elements} <= set(BZO)
        assert len(d.structure) <= 10 and structure_problem(d.structure) == ""
    # charge-balanced first: the preference shows against the unconstrained draw
    seqs, lp = sample(shipped, 64, cons, torch.Generator().manual_seed(1))
    assert all(set(q.species) <= set(_zs(BZO)) for q in seqs)
    assert sum(d.balanced for d in got) / len(got) >= 0.5


def test_distance_aware_coordinates_keep_atoms_apart_and_the_model_log_prob(shipped):
    """The sampler redraws an orbit's last coordinate when it would put atoms closer than
    0.5 Å by its cell estimate: more draws decode to a valid crystal than the model's own,
    and each draw's log-probability is still the teacher-forced one."""
    from xtalforge.generators.wyckoff.encoding import decode
    from xtalforge.generators.wyckoff.sampler import collate
    from xtalforge.structure import min_distance

    tables = wyckoff_tables()
    cons = Constraints(max_atoms=20)

    def valid(q) -> bool:
        try:
            return min_distance(decode(q, tables)) >= 0.5
        except Exception:
            return False

    spaced, lp = sample(shipped, 200, cons, torch.Generator().manual_seed(3))
    own, _ = sample(shipped, 200, cons, torch.Generator().manual_seed(3), min_distance=None)
    n_spaced, n_own = sum(map(valid, spaced)), sum(map(valid, own))
    assert n_spaced >= 0.94 * 200 and n_spaced > n_own, (n_spaced, n_own)
    forced = shipped.log_prob(collate(spaced[:32], shipped.cfg.max_sites), cons)
    assert torch.allclose(forced, lp[:32], atol=1e-3)


def test_a_target_composition_and_space_group_are_respected(shipped):
    tables = wyckoff_tables()
    cons = Constraints(elements=_zs(BZO), max_atoms=10)
    got, why = draw(shipped, 8, cons, tables, torch.Generator().manual_seed(2), composition={56: 1, 40: 1, 8: 3})
    assert got, why
    assert {d.structure.composition.reduced_formula for d in got} == {"BaZrO3"}
    cubic = Constraints(elements=_zs(BZO), max_atoms=10, spacegroups=(221,))
    seqs, _ = sample(shipped, 16, cubic, torch.Generator().manual_seed(3))
    assert {q.sg for q in seqs} == {221}


def _copy(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(shipped_checkpoint(), dst)
    return dst


def test_a_tampered_or_mismatched_checkpoint_is_refused_naming_the_file(tmp_path):
    ck = _copy(tmp_path)
    raw = bytearray((ck / "model.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (ck / "model.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model\.pt.*SHA-256"):
        load_checkpoint(ck)

    # a pickle that would run code, with its hash recorded: weights-only loading still refuses it
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    ck = _copy(tmp_path / "b")
    torch.save({"w": Evil()}, ck / "model.pt")
    meta = json.loads((ck / "model.json").read_text())
    from xtalforge.generators.wyckoff.train import _sha256

    meta["sha256"] = _sha256(ck / "model.pt")
    (ck / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.pt: not a plain tensor file"):
        load_checkpoint(ck)

    ck = _copy(tmp_path / "c")
    meta = json.loads((ck / "model.json").read_text())
    meta["model"]["d_model"] *= 2
    (ck / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.pt: weights do not fit"):
        load_checkpoint(ck)

    (ck / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model\.json"):
        load_checkpoint(ck)


def test_campaign_generator_starts_from_the_shipped_checkpoint_and_fine_tunes():
    gen = WyckoffGenerator(("Ca", "Ti", "O"), 10, kl_samples=8, metric_samples=4, rl_epochs=1)
    assert gen.ready and gen.source == "checkpoint:shipped"
    # what a rediscovery benchmark checks before letting this generator search Ca-Ti-O
    assert {"Ca-O", "O-Ti", "Ca-O-Ti"} <= set(trained_systems_within(("Ca", "Ti", "O")))
    ctx = RoundContext(round=0, elements=("Ca", "Ti", "O"), max_atoms=10, rng=np.random.default_rng(0), history=[])
    cands = gen.propose(8, ctx)
    assert 4 <= len(cands) <= 8
    assert all(len(c.structure) <= 10 and set(map(str, c.structure.composition.elements)) <= {"Ca", "Ti", "O"}
               for c in cands)
    before = {k: v.clone() for k, v in gen.policy.state_dict().items()}
    results = [(c, Measurement(candidate_id=c.id, oracle="test", fidelity=0, values={"e_above_hull": 0.02 * i}))
               for i, c in enumerate(cands)]
    m = gen.update(results)
    assert m["n_results"] == len(cands) and np.isfinite(m["kl"])
    assert any(not torch.equal(before[k], v) for k, v in gen.policy.state_dict().items())
    with pytest.raises(CheckpointError, match="not in this checkpoint's vocabulary"):
        WyckoffGenerator(("Ca", _outside_vocabulary(), "O"), 10)


def _outside_vocabulary() -> str:
    vocab = set(read_card(shipped_checkpoint())["info"]["elements"])
    return next(Element.from_Z(z).symbol for z in range(100, 0, -1) if Element.from_Z(z).symbol not in vocab)
