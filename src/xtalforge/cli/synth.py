"""`xtalforge synth train | score`: the synthesizability model from the command line.

Registered by xtalforge.cli.main through `add_parser`; heavy imports wait until a command runs.
"""

from __future__ import annotations

import argparse

from xtalforge.cli.errors import fail as _fail  # one error format for every subcommand


def cmd_train(a: argparse.Namespace) -> int:
    from xtalforge.synthesis.model import PUSynthesizabilityModel, cross_validate, synthetic_unlabeled
    from xtalforge.synthesis.tables import TableError, read_table

    try:
        known = read_table(a.known)
        unl = read_table(a.unlabeled).compositions if a.unlabeled else None
    except TableError as err:
        return _fail(err.problems)
    pos = known.compositions
    if unl is None:
        unl = synthetic_unlabeled(pos, n=min(20000, 5 * len(pos)), seed=a.seed)
        print(f"no --unlabeled file: drew {len(unl)} artificial formulas from the known elements (SynthNN-style)")
    try:
        if a.cv:
            cv = cross_validate(pos, unl, folds=a.cv, n_bags=a.bags, seed=a.seed)
            print(f"{a.cv}-fold PU ROC AUC: {cv['roc_auc_mean']:.3f} ± {cv['roc_auc_std']:.3f} "
                  f"(known at p >= 0.5: {cv['recall_at_0.5']:.2f}; unlabeled at p >= 0.5: {cv['unlabeled_frac_at_0.5']:.2f})")
        model = PUSynthesizabilityModel.fit(pos, unl, n_bags=a.bags, seed=a.seed)
    except ValueError as err:
        return _fail([str(err)])
    if a.cv:
        model.meta["cv"] = cv
    path = model.save(a.out)
    print(f"trained on {model.meta['n_positive']} known and {model.meta['n_unlabeled']} unlabeled formulas "
          f"({a.bags} bags); saved {path}")
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from xtalforge.synthesis.model import PUSynthesizabilityModel
    from xtalforge.synthesis.tables import TableError, read_table, write_table

    try:
        model = PUSynthesizabilityModel.load(a.model)
    except (FileNotFoundError, ValueError) as err:
        return _fail([str(err)])
    try:
        table = read_table(a.file)
    except TableError as err:
        return _fail(err.problems)
    p = model.score_compositions(table.compositions)
    rows = [{**r, "p_synth": f"{v:.4f}"} for r, v in zip(table.rows, p)]
    cols = [c for c in table.columns if c != "p_synth"] + ["p_synth"]
    out = write_table(a.out, cols, rows)
    ok = float((p >= a.threshold).mean()) if len(p) else 0.0
    print(f"scored {len(p)} rows; {ok:.0%} at p_synth >= {a.threshold}; wrote {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("synth", help="synthesizability model: train, score")
    ssub = s.add_subparsers(dest="synth_cmd", required=True)
    t = ssub.add_parser("train", help="train a PU model on known (synthesized) materials")
    t.add_argument("known", help="CSV with a formula or cif column (or a folder of .cif files)")
    t.add_argument("--unlabeled", help="CSV of hypothetical materials (default: artificial formulas)")
    t.add_argument("--out", required=True, help="model file to write (.npz)")
    t.add_argument("--bags", type=int, default=100, help="bagged trees (default 100)")
    t.add_argument("--cv", type=int, default=0, metavar="K", help="also report K-fold PU ROC AUC")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_train)
    c = ssub.add_parser("score", help="add a p_synth column to a CSV of formulas or CIFs")
    c.add_argument("model")
    c.add_argument("file")
    c.add_argument("--out", required=True)
    c.add_argument("--threshold", type=float, default=0.5)
    c.set_defaults(fn=cmd_score)
