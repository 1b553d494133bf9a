"""Cross-validated ROC AUC of the PU synthesizability model on the data available offline.

Positives (known, experimentally made):
  pmg_exp    pymatgen's experimental formation-enthalpy set (exp_compounds.json.gz, ships with
             pymatgen; the compounds MP2020 corrections are fit to), ~2100 formulas
  camd_expt  CAMD multi-fidelity table rows with expt_data == 1 (measured band gaps)
  aflow      AFLOW Library of Crystallographic Prototypes (ships with pymatgen), each a
             published experimental structure
  test_cifs  shared/data/test_cifs (well-known crystals and COD minerals)
Unlabeled (mostly hypothetical):
  perov      perov_5 validation split (Castelli's computed cubic ABX3 perovskites)
  oqmd       CAMD's OQMD table (prototype decorations)

Prints: 5-fold PU ROC AUC (all P vs all U), per unlabeled source, the ternary-only stratum,
a source-held-out test (train on pmg_exp, test on camd_expt + aflow + test_cifs), and
baselines (SMACT charge balance, number of elements, the ICSD oxidation-state log-prob).

    .venv/bin/python benchmarks/synth_auc.py [--data /work/shared/data] [--bags 100] [--out model.npz]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition

warnings.filterwarnings("ignore")


def _comp(f: str) -> Composition | None:
    try:
        c = Composition(f).element_composition
        return c.reduced_composition if c.num_atoms > 0 else None
    except Exception:
        return None


def load_sets(data: Path) -> tuple[dict[str, list[Composition]], dict[str, list[Composition]]]:
    from pymatgen.core import Structure

    pos: dict[str, list[Composition]] = {}
    with resources.files("pymatgen.analysis.compatibility").joinpath("exp_compounds.json.gz").open("rb") as fh:
        pos["pmg_exp"] = [_comp(r["formula"]) for r in json.loads(gzip.decompress(fh.read()))]
    mf = pd.read_csv(data / "camd_oqmd_featurized" / "test_multi_fidelity_df.csv", usecols=["expt_data", "reduced_formula"])
    pos["camd_expt"] = [_comp(f) for f in mf.loc[mf.expt_data == 1, "reduced_formula"]]
    with resources.files("pymatgen.analysis.prototypes").joinpath("aflow_prototypes.json.gz").open("rb") as fh:
        protos = json.loads(gzip.decompress(fh.read()))
    pos["aflow"] = [Structure.from_dict(p["snl"]).composition.element_composition.reduced_composition for p in protos]
    pos["test_cifs"] = []
    for f in sorted((data / "test_cifs").rglob("*.cif")):
        try:
            s = Structure.from_file(f)
            pos["test_cifs"].append(s.composition.element_composition.reduced_composition)
        except Exception:
            pass
    unl = {
        "perov": [_comp(f) for f in pd.read_csv(data / "perov_5" / "val.csv", usecols=["formula"]).formula],
        "oqmd": [_comp(f) for f in pd.read_csv(data / "camd_oqmd_featurized" / "test_df.csv", usecols=["Composition"]).Composition],
    }
    clean = lambda cs: [c for c in cs if c is not None]  # noqa: E731
    return {k: clean(v) for k, v in pos.items()}, {k: clean(v) for k, v in unl.items()}


def uniq(comps):
    d = {}
    for c in comps:
        d.setdefault(c.reduced_formula, c)
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("XTALFORGE_TEST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--bags", type=int, default=100)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also train on everything and save the model here (.npz)")
    a = ap.parse_args(argv)
    from sklearn.metrics import roc_auc_score

    from xtalforge.generators.compositions import is_charge_balanced
    from xtalforge.synthesis.features import feature_names, featurize
    from xtalforge.synthesis.pu import fit_pu_bagging

    t0 = time.perf_counter()
    pos_sets, unl_sets = load_sets(Path(a.data))
    P = uniq(c for v in pos_sets.values() for c in v)
    U = {k: v for k, v in uniq(c for v in unl_sets.values() for c in v).items() if k not in P}
    src_u = {f: next(k for k, v in unl_sets.items() if f in {c.reduced_formula for c in v}) for f in U}
    print(f"positives: {len(P)} unique formulas ({', '.join(f'{k} {len(uniq(v))}' for k, v in pos_sets.items())})")
    print(f"unlabeled: {len(U)} unique formulas not among the positives "
          f"({', '.join(f'{k} {sum(s == k for s in src_u.values())}' for k in unl_sets)})")
    pf, uf = list(P), list(U)
    Xp, Xu = featurize([P[f] for f in pf]), featurize([U[f] for f in uf])
    print(f"featurized {len(pf) + len(uf)} compositions x {Xp.shape[1]} features in {time.perf_counter() - t0:.0f} s")

    rng = np.random.default_rng(a.seed)
    fp, fu = rng.permutation(len(pf)) % a.folds, rng.permutation(len(uf)) % a.folds
    sp, su, aucs = np.zeros(len(pf)), np.zeros(len(uf)), []
    for k in range(a.folds):
        res = fit_pu_bagging(Xp[fp != k], Xu[fu != k], n_bags=a.bags, seed=a.seed + k)
        sp[fp == k], su[fu == k] = res.ensemble.predict(Xp[fp == k]), res.ensemble.predict(Xu[fu == k])
        aucs.append(roc_auc_score(np.r_[np.ones((fp == k).sum()), np.zeros((fu == k).sum())], np.r_[sp[fp == k], su[fu == k]]))

    def auc(mask_p, mask_u, s_p=sp, s_u=su):
        y = np.r_[np.ones(mask_p.sum()), np.zeros(mask_u.sum())]
        return roc_auc_score(y, np.r_[s_p[mask_p], s_u[mask_u]])

    allp, allu = np.ones(len(pf), bool), np.ones(len(uf), bool)
    n_el_p = np.array([len(P[f].elements) for f in pf])
    n_el_u = np.array([len(U[f].elements) for f in uf])
    rows = [("5-fold CV, all P vs all U", f"{np.mean(aucs):.3f} ± {np.std(aucs):.3f}", f"{len(pf)} / {len(uf)}")]
    for k in unl_sets:
        m = np.array([src_u[f] == k for f in uf])
        rows.append((f"  P vs U = {k} only", f"{auc(allp, m):.3f}", f"{len(pf)} / {m.sum()}"))
    for n in (2, 3, 4):
        mp_, mu_ = n_el_p == n, n_el_u == n
        if mp_.sum() >= 10 and mu_.sum() >= 10:
            rows.append((f"  {n}-element compounds only", f"{auc(mp_, mu_):.3f}", f"{mp_.sum()} / {mu_.sum()}"))
    print(f"  recall of known at p >= 0.5: {(sp >= 0.5).mean():.3f}; unlabeled at p >= 0.5: {(su >= 0.5).mean():.3f}")

    # baselines on the same rows
    names = feature_names()
    ox = names.index("ox_best_logp_pauling")
    cb_p = np.array([is_charge_balanced(P[f]) for f in pf], float)
    cb_u = np.array([is_charge_balanced(U[f]) for f in uf], float)
    rows.append(("baseline: SMACT charge balance (0/1)", f"{auc(allp, allu, cb_p, cb_u):.3f}", ""))
    rows.append(("baseline: fewer elements = known", f"{auc(allp, allu, -n_el_p.astype(float), -n_el_u.astype(float)):.3f}", ""))
    rows.append(("baseline: ICSD oxidation-state log-prob", f"{auc(allp, allu, Xp[:, ox], Xu[:, ox]):.3f}", ""))

    # source-held-out: train on pmg_exp only; test on the other known sources (formulas not in pmg_exp)
    train_p = set(uniq(pos_sets["pmg_exp"]))
    test_p = [f for f in pf if f not in train_p]
    mtr = np.array([f in train_p for f in pf])
    mte = ~mtr
    res = fit_pu_bagging(Xp[mtr], Xu[fu != 0], n_bags=a.bags, seed=a.seed)
    s_te, s_u0 = res.ensemble.predict(Xp[mte]), res.ensemble.predict(Xu[fu == 0])
    y = np.r_[np.ones(len(s_te)), np.zeros(len(s_u0))]
    rows.append(("held-out sources (train pmg_exp; test camd_expt+aflow+test_cifs)",
                 f"{roc_auc_score(y, np.r_[s_te, s_u0]):.3f}", f"{len(test_p)} / {len(s_u0)}"))
    n_te = np.array([len(P[f].elements) for f in test_p])
    for n in (2, 3):
        m = n_te == n
        mu0 = n_el_u[fu == 0] == n
        if m.sum() >= 10 and mu0.sum() >= 10:
            yy = np.r_[np.ones(m.sum()), np.zeros(mu0.sum())]
            rows.append((f"  held-out sources, {n}-element only", f"{roc_auc_score(yy, np.r_[s_te[m], s_u0[mu0]]):.3f}",
                         f"{m.sum()} / {mu0.sum()}"))

    w = max(len(r[0]) for r in rows)
    print(f"\n{'evaluation':<{w}}  {'ROC AUC':>13}  positives / unlabeled")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>13}  {r[2]}")
    if a.out:
        from xtalforge.synthesis.model import PUSynthesizabilityModel

        m = PUSynthesizabilityModel.fit(list(P.values()), list(U.values()), n_bags=a.bags, seed=a.seed)
        print(f"\nsaved {m.save(a.out)}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
