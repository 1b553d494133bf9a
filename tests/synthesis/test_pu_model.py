"""The PU synthesizability model: separates a separable set, saves and loads safely."""

import itertools

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure
from sklearn.metrics import roc_auc_score

from xtalforge.synthesis.metrics import feasible_mask, synth_metrics
from xtalforge.synthesis.model import PUSynthesizabilityModel, cross_validate, synthetic_unlabeled
from xtalforge.types import Candidate

CATIONS = {"Li": 1, "Na": 1, "K": 1, "Rb": 1, "Cs": 1, "Mg": 2, "Ca": 2, "Sr": 2, "Ba": 2, "Zn": 2,
           "Al": 3, "Ga": 3, "Y": 3, "La": 3, "Sc": 3, "Ti": 4, "Zr": 4, "Hf": 4, "Nb": 5, "Ta": 5}
ANIONS = {"O": 2, "S": 2, "Se": 2, "F": 1, "Cl": 1, "Br": 1, "I": 1, "N": 3}


def separable_set(seed: int = 0) -> tuple[list[Composition], list[Composition]]:
    """Positives: charge-balanced binary salts M_a X_b. Unlabeled: random 3-4 element mixtures
    of late transition metals and p-block elements with arbitrary counts, a different chemistry."""
    pos = []
    for (m, qm), (x, qx) in itertools.product(CATIONS.items(), ANIONS.items()):
        pos.append(Composition({m: qx, x: qm}).reduced_composition)
    rng = np.random.default_rng(seed)
    pool = ["Fe", "Co", "Ni", "Cu", "Ru", "Rh", "Pd", "Ag", "Ir", "Pt", "Au", "Sn", "Sb", "Bi", "Pb", "Ge", "In"]
    unl = []
    while len(unl) < 2 * len(pos):
        k = int(rng.integers(3, 5))
        els = rng.choice(pool, size=k, replace=False)
        unl.append(Composition({e: int(rng.integers(1, 6)) for e in els}).reduced_composition)
    return pos, unl


@pytest.fixture(scope="module")
def fitted():
    pos, unl = separable_set()
    rng = np.random.default_rng(1)
    ip, iu = rng.permutation(len(pos)), rng.permutation(len(unl))
    cut_p, cut_u = int(0.7 * len(pos)), int(0.7 * len(unl))
    train = ([pos[i] for i in ip[:cut_p]], [unl[i] for i in iu[:cut_u]])
    test = ([pos[i] for i in ip[cut_p:]], [unl[i] for i in iu[cut_u:]])
    return PUSynthesizabilityModel.fit(*train, n_bags=40, seed=0), test


def test_separates_a_separable_set(fitted):
    model, (tp, tu) = fitted
    sp, su = model.score_compositions(tp), model.score_compositions(tu)
    assert ((sp >= 0) & (sp <= 1)).all() and ((su >= 0) & (su <= 1)).all()
    auc = roc_auc_score(np.r_[np.ones(len(sp)), np.zeros(len(su))], np.r_[sp, su])
    assert auc >= 0.9
    assert np.median(sp) >= 0.5 > np.median(su)


def test_cross_validation_reports_auc():
    pos, unl = separable_set(seed=3)
    cv = cross_validate(pos, unl, folds=3, n_bags=20, seed=0)
    assert cv["roc_auc_mean"] >= 0.9 and cv["folds"] == 3
    assert cv["n_positive"] == len({c.reduced_formula for c in pos})


def test_save_load_roundtrip_and_roles(fitted, tmp_path):
    model, (tp, tu) = fitted
    path = model.save(tmp_path / "synth")
    assert path.suffix == ".npz"
    back = PUSynthesizabilityModel.load(path)
    comps = tp + tu
    np.testing.assert_array_equal(back.score_compositions(comps), model.score_compositions(comps))
    assert back.meta["n_positive"] == model.meta["n_positive"]
    # the SynthesizabilityModel role: score Candidates; formulas too
    rocksalt = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    p = back.score([Candidate(rocksalt, "test", 0)])
    assert p.shape == (1,) and p[0] == pytest.approx(back.score_formulas(["MgO"])[0])
    with pytest.raises(ValueError, match="formula 1"):
        back.score_formulas(["MgO", "Zz3"])


def test_load_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, meta=np.array('{"format": "something-else"}'), x=np.zeros(3))
    with pytest.raises(ValueError, match="not a synthesizability model"):
        PUSynthesizabilityModel.load(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError):
        PUSynthesizabilityModel.load(junk)
    with pytest.raises(FileNotFoundError):
        PUSynthesizabilityModel.load(tmp_path / "absent.npz")


def test_synthetic_unlabeled_avoids_known():
    pos, _ = separable_set()
    unl = synthetic_unlabeled(pos, n=100, seed=0)
    known = {c.reduced_formula for c in pos}
    assert len(unl) == 100 and not known & {c.reduced_formula for c in unl}
    used = {e.symbol for c in pos for e in c.elements}
    assert all({e.symbol for e in c.elements} <= used for c in unl)


def test_synth_metrics_and_hooks():
    p = np.array([0.1, 0.4, 0.6, 0.9])
    m = synth_metrics(p, threshold=0.5)
    assert m["p_synth_mean"] == pytest.approx(0.5)
    assert m["p_synth_median"] == pytest.approx(0.5)
    assert m["p_synth_frac_ok"] == pytest.approx(0.5)
    assert np.isnan(synth_metrics(np.array([]))["p_synth_mean"])
    assert feasible_mask(p, 0.5).tolist() == [False, False, True, True]


def test_exported_trees_match_sklearn():
    from sklearn.tree import DecisionTreeClassifier

    from xtalforge.synthesis.pu import TreeEnsemble

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y = (X[:, 0] + 0.5 * X[:, 3] > 0).astype(int)
    trees = [DecisionTreeClassifier(max_features="sqrt", min_samples_leaf=3, random_state=s).fit(X, y) for s in range(5)]
    ens = TreeEnsemble.from_sklearn(trees)
    Xt = rng.normal(size=(50, 6))
    ref = np.mean([t.predict_proba(Xt)[:, 1] for t in trees], axis=0)
    np.testing.assert_allclose(ens.predict(Xt), ref, atol=1e-12)
