#!/usr/bin/env python
"""Backtest the discovery loop on a labelled table: the acceleration factor over random search.

    nice -n 5 .venv/bin/python benchmarks/backtest.py --data /work/shared/data/perov_5/val.csv \
        --target heat_ref --minimize --seeds 5 --split report

By default it runs what a campaign runs: featurizer `chgnet+composition` where the table has
structures (CHGNet embeddings computed in this process and cached per structure on disk, plus
the composition features over the table's elements), the campaign's Surrogate and Acquirer
(qLogNEI), batches of 6 with the first batch by farthest point, and, as a campaign gives the
surrogate each proposal's MLIP single point, CHGNet's formation energy (eV/atom, against MP's
elemental references) of every pool structure as low-fidelity data known from the start (the
multi-fidelity GP; `--no-single-point` leaves it out). A table without structures uses its own
numeric columns as features (`--featurizer table`). The settings used are printed first.

`--split tune|report` keeps one seeded half of the table (`--split-seed`): tune settings on
`tune`, quote figures from `report`. `--known-rows COL` makes the rows where COL is non-zero
low-fidelity data known from the start (e.g. DFT band gaps beside experimental ones): the
surrogate is then the multi-fidelity GP and the pool is the other rows.

Prints one row per seed (queries the loop needed to find half of the top `--fraction`), a
per-round table of calibration (share of held-out errors within 1 and 2 sigma, on random
unmeasured pool rows and on the picks), the GP-Hedge weights when several `--kinds` are given,
the random baseline (expected queries k (N + 1) / (K + 1)), and last the line
`acceleration_factor=<expected random queries / mean loop queries>`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning BLAS threads stall a shared 2-core box

import argparse
import json
import sys
import time
import warnings

import numpy as np

STRUCTURE_FEATURIZERS = ("chgnet+composition", "magpie+structure", "chgnet+magpie+structure",
                         "chgnet+composition+energy", "chgnet+magpie", "chgnet+fractions+magpie")


def _table_features(df, exclude: set[str]) -> tuple[np.ndarray, list[str]]:
    """Every numeric column not excluded, as float features."""
    import pandas as pd

    cols = [c for c in df.columns if c not in exclude and pd.api.types.is_numeric_dtype(df[c])
            and not str(c).lower().endswith("_id") and str(c).lower() != "id"]
    return df[cols].to_numpy(dtype=float), cols


def _features(args, cands) -> tuple[np.ndarray, str]:
    """Features of the candidates by `args.featurizer`, and a line saying what they are. The
    variants beyond the config's featurizers are the ablations in BENCHMARKS.md."""
    from xtalforge.model.descriptors import featurize, local_embed

    structures = [c.structure for c in cands]
    if args.featurizer == "chgnet+composition":
        elements = sorted({el.symbol for s in structures for el in s.composition.elements})
        X = featurize("chgnet+composition", structures, elements, embed=local_embed(args.cache))
        return X, f"CHGNet embedding (64, computed here, cached) + composition over {len(elements)} elements"
    if args.featurizer == "chgnet+composition+energy":
        from xtalforge.model.descriptors import cached_chgnet_features
        from xtalforge.model.features import composition_features

        elements = sorted({el.symbol for s in structures for el in s.composition.elements})
        comp = np.stack([composition_features(s.composition, elements) for s in structures])
        return np.concatenate([cached_chgnet_features(structures, args.cache), comp], axis=1), \
            "CHGNet embedding + CHGNet energy and formation energy per atom (unrelaxed) + composition"
    if args.featurizer in ("chgnet+magpie", "chgnet+fractions+magpie"):
        from xtalforge.model.descriptors import magpie_features
        from xtalforge.model.features import composition_features

        elements = sorted({el.symbol for s in structures for el in s.composition.elements})
        parts = [local_embed(args.cache)(structures), np.stack([magpie_features(s.composition) for s in structures])]
        if args.featurizer == "chgnet+fractions+magpie":
            parts.append(np.stack([composition_features(s.composition, elements) for s in structures]))
        return np.concatenate(parts, axis=1), "CHGNet embedding + element-property statistics" + (
            " + composition" if len(parts) == 3 else "")
    if args.featurizer == "chgnet+magpie+structure":
        return featurize(args.featurizer, structures, cache_root=args.cache), \
            "magpie+structure + CHGNet embedding, energy and formation energy"
    from xtalforge.model.feature_cache import cached_rows

    X = cached_rows(structures, "magpie_structure", lambda s: featurize("magpie+structure", s), root=args.cache)
    return X, "element-property statistics + structure features, no MLIP"


def _log_mlflow(uri: str, args, settings: dict, res, rand: float) -> None:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("backtest")
    with mlflow.start_run(run_name=f"{os.path.basename(args.data)}:{args.target}:{args.split}:seed{res.seed}"):
        mlflow.log_params({k: str(v)[:250] for k, v in settings.items()} | {"seed": res.seed})
        for m in res.rounds:
            step = int(m["round"])
            mlflow.log_metrics({k: float(v) for k, v in m.items() if k != "round" and np.isfinite(v)}, step=step)
        mlflow.log_metrics({"queries_to_half_top": res.queries, "acceleration_factor": rand / res.queries})


def main(argv: list[str] | None = None) -> int:
    from xtalforge.acquisition import UnknownArm, arm_names, get_arm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CSV read with index_col=0: a 'cif' column, or feature columns")
    ap.add_argument("--target", required=True, help="value column to optimize")
    ap.add_argument("--minimize", action="store_true", help="lower is better (default: higher)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--split", default="all", choices=["all", "tune", "report"],
                    help="one seeded half of the table: tune on 'tune', report on 'report'")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--q", type=int, default=6, help="batch size per round (a campaign's default: 6)")
    ap.add_argument("--n-init", type=int, default=None, help="first batch, farthest point (default: q)")
    ap.add_argument("--budget", type=int, default=300, help="most oracle queries per run")
    ap.add_argument("--fraction", type=float, default=0.01, help="the top set: this share of the pool")
    ap.add_argument("--featurizer", default=None, choices=[*STRUCTURE_FEATURIZERS, "table"],
                    help="default: chgnet+composition with a 'cif' column, else table")
    ap.add_argument("--exclude-columns", default="", help="table features: columns to leave out, comma-separated")
    ap.add_argument("--known-rows", default=None,
                    help="column flagging rows known from the start as low-fidelity data (multi-fidelity)")
    ap.add_argument("--no-single-point", dest="single_point", action="store_false",
                    help="without the CHGNet single-point energies as a low fidelity (a campaign's "
                         "acquisition.single_point; on by default where the featurizer reads CHGNet)")
    ap.add_argument("--drop-known", action="store_true",
                    help="leave the --known-rows rows out instead (the single-fidelity comparison)")
    ap.add_argument("--kinds", default="qlognei", help="acquisition function(s), comma-separated "
                    f"(several = GP-Hedge portfolio): {', '.join(arm_names(1))}")
    ap.add_argument("--surrogate", default="{}", help="Surrogate keyword arguments as JSON, e.g. "
                    "'{\"kernel\": \"rbf\"}'")
    ap.add_argument("--acquirer", default="{}", help="Acquirer keyword arguments as JSON")
    ap.add_argument("--context", action="store_true",
                    help="scale the GP's inputs over the pool too, not only the training rows")
    ap.add_argument("--delay", type=int, default=0, help="rounds before a result comes back (pending points)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N rows (quick runs)")
    ap.add_argument("--cache", default=None, help="feature cache folder (default ~/.cache/xtalforge)")
    ap.add_argument("--mlflow", default=None, help="MLflow tracking URI: one run per seed, metrics per round")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    try:
        misfit = [k for k in kinds if not get_arm(k).fits(1)]
    except UnknownArm as err:
        print(f"error: --kinds: {err}")
        return 2
    if misfit or not kinds:
        print(f"error: --kinds: {', '.join(misfit) or 'nothing given'}: use one or more of {', '.join(arm_names(1))}")
        return 2
    try:
        sur_kw, acq_kw = json.loads(args.surrogate), json.loads(args.acquirer)
        assert isinstance(sur_kw, dict) and isinstance(acq_kw, dict)
    except (ValueError, AssertionError):
        print("error: --surrogate / --acquirer take a JSON object, e.g. '{\"kernel\": \"rbf\"}'")
        return 2

    import pandas as pd

    from xtalforge.loop.backtest import (expected_random_queries, load_pool, run_backtest, split_labels,
                                         table_pool)
    from xtalforge.model.surrogate import OutcomeData, Surrogate
    from xtalforge.oracles.table import TableError, read_table

    try:
        df = read_table(args.data)
    except TableError as err:
        print(f"error: {err}")
        return 2
    if args.target not in df.columns:
        print(f"error: no column {args.target!r} in {args.data} (have: {', '.join(map(str, df.columns))})")
        return 2
    df[args.target] = pd.to_numeric(df[args.target], errors="coerce")
    has_cif = "cif" in df.columns
    featurizer = args.featurizer or ("chgnet+composition" if has_cif else "table")
    if featurizer != "table" and not has_cif:
        print(f"error: --featurizer {featurizer} needs a 'cif' column; {args.data} has none (use table)")
        return 2
    args.featurizer = featurizer
    if args.limit:
        df = df.iloc[: args.limit]
    known_df = None
    if args.known_rows:
        if args.known_rows not in df.columns:
            print(f"error: --known-rows: no column {args.known_rows!r}")
            return 2
        flag = pd.to_numeric(df[args.known_rows], errors="coerce").fillna(0).to_numpy() != 0
        known_df, df = df[flag], df[~flag]
    df = df.loc[split_labels(df.index, args.split, args.split_seed)]
    t = time.perf_counter()
    exclude = {args.target, "cif", *(c for c in args.exclude_columns.split(",") if c)}
    if args.known_rows:
        exclude.add(args.known_rows)
    if featurizer == "table":
        cands = table_pool(df)
        X, cols = _table_features(df, exclude)
        what = f"the table's {len(cols)} numeric columns"
    else:
        cands, _ = load_pool(df)
        X, what = _features(args, cands)
    known = None
    if known_df is not None and args.drop_known:
        known_df = None
    if known_df is not None:
        Xk, _ = _table_features(known_df, exclude) if featurizer == "table" else (None, None)
        if Xk is None:
            print("error: --known-rows needs --featurizer table")
            return 2
        known = OutcomeData(Xk, known_df[args.target].to_numpy(dtype=float))
    single_point = args.single_point and featurizer == "chgnet+composition" and known is None
    if single_point:
        from xtalforge.model.descriptors import cached_chgnet_features

        # the same forward pass as the embedding: column 65 is the formation energy per atom
        e_form = cached_chgnet_features([c.structure for c in cands], args.cache)[:, 65]
        ok = np.isfinite(e_form) & np.isfinite(X).all(axis=1)
        known = OutcomeData(X[ok], e_form[ok])
    sur_probe = Surrogate(**sur_kw)  # fails here, before any run, on a bad keyword
    settings = {"data": args.data, "target": args.target, "minimize": args.minimize, "split": args.split,
                "split_seed": args.split_seed, "featurizer": featurizer, "q": args.q,
                "n_init": args.n_init or args.q, "budget": args.budget, "fraction": args.fraction,
                "kinds": ",".join(kinds), "surrogate": sur_probe.describe(), "acquirer": json.dumps(acq_kw),
                "known_rows": args.known_rows or "", "delay": args.delay, "context": args.context,
                "single_point": single_point}
    print(f"# {args.data}: split {args.split} (seed {args.split_seed}), {len(df)} rows, {len(cands)} candidates"
          + (f", {len(known.y)} low-fidelity rows known ({args.known_rows})" if args.known_rows and known is not None
             else ""))
    if single_point:
        print(f"# low fidelity: CHGNet single-point formation energy of all {len(known.y)} candidates, known from "
              "the start (multi-fidelity GP; --no-single-point to leave it out)")
    print(f"# features: {featurizer}: {what}; {X.shape[1]} columns, {time.perf_counter() - t:.0f} s")
    print(f"# surrogate: {settings['surrogate']}" + ("; inputs scaled over the pool too (--context)" if args.context else ""))
    print(f"# acquisition: {' + '.join(kinds)}{' (GP-Hedge)' if len(kinds) > 1 else ''} {json.dumps(acq_kw)}; "
          f"q = {args.q}, first {settings['n_init']} by farthest point; budget {args.budget}; delay {args.delay}")
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    results = []
    print(f"{'seed':>4} {'queries':>8} {'found':>6} {'top':>4} {'rounds':>6} {'seconds':>8} "
          f"{'nll':>7} {'mae':>7} {'in1σ':>5} {'in2σ':>5}")
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        res = run_backtest(df, cands, X, args.target, args.minimize, seed=seed, q=args.q, n_init=args.n_init,
                           budget=args.budget, kinds=kinds, delay=args.delay, fraction=args.fraction,
                           surrogate_kw=sur_kw, acquirer_kw=acq_kw, known=known, context=args.context, log=log)
        results.append(res)

        def avg(key: str) -> float:
            v = [r[key] for r in res.rounds if key in r and np.isfinite(r[key])]
            return float(np.mean(v)) if v else float("nan")

        print(f"{seed:>4} {res.queries:>8} {res.found:>6} {res.top_size:>4} {len(res.rounds):>6} "
              f"{res.seconds:>8.1f} {avg('surrogate_nll'):>7.2f} {avg('heldout_mae'):>7.3f} "
              f"{avg('heldout_within_1sigma'):>5.2f} {avg('heldout_within_2sigma'):>5.2f}", flush=True)
    top = results[0].top_size
    need = int(np.ceil(top / 2))
    rand = expected_random_queries(results[0].n_pool, top, need)
    if args.mlflow:
        for res in results:
            _log_mlflow(args.mlflow, args, settings, res, rand)
    _print_rounds(results)
    if len(kinds) > 1:
        w = {k: np.mean([r.weights.get(k, np.nan) for r in results]) for k in kinds}
        picks = {k: sum(m.get(f"acq_picks_{k}", 0) for r in results for m in r.rounds) for k in kinds}
        print("# GP-Hedge at the end (mean weight over seeds; picks in all rounds): "
              + ", ".join(f"{k} {w[k]:.2f} ({picks[k]:.0f})" for k in kinds))
    q_all = np.array([r.queries for r in results], dtype=float)
    af = rand / q_all
    censored = sum(r.queries > args.budget for r in results)
    print(f"# top {100 * args.fraction:g} %: {top} of {results[0].n_pool}; half = {need}; random search needs "
          f"{rand:.1f} queries in expectation")
    print(f"# the loop needed {q_all.mean():.1f} ± {q_all.std(ddof=1) if len(q_all) > 1 else 0:.1f} "
          f"(per seed: {', '.join(str(int(v)) for v in q_all)})"
          + (f"; {censored} run(s) hit the budget and count as budget + 1" if censored else ""))
    print(f"# per-seed acceleration: mean {af.mean():.2f} ± {af.std(ddof=1) if len(af) > 1 else 0:.2f}, "
          f"min {af.min():.2f}, max {af.max():.2f}")
    print(f"acceleration_factor={rand / q_all.mean():.2f}")
    return 0


def _print_rounds(results) -> None:
    """Calibration by round, mean over the seeds still running that round."""
    keys = ["heldout_within_1sigma", "heldout_within_2sigma", "heldout_mae", "surrogate_within_1sigma",
            "surrogate_within_2sigma"]
    n = max(len(r.rounds) for r in results)
    print("# calibration by round (mean over seeds still running; held-out = 64 random unmeasured pool rows, "
          "picks = the batch, predicted before measuring)")
    print(f"# {'round':>5} {'seeds':>5} {'queries':>7} {'held 1σ':>7} {'held 2σ':>7} {'held mae':>8} "
          f"{'picks 1σ':>8} {'picks 2σ':>8}")
    for i in range(n):
        ms = [r.rounds[i] for r in results if i < len(r.rounds)]

        def mean(k: str) -> float:
            v = [m[k] for m in ms if k in m and np.isfinite(m[k])]
            return float(np.mean(v)) if v else float("nan")

        print(f"# {i:>5} {len(ms):>5} {mean('queries'):>7.0f} {mean(keys[0]):>7.2f} {mean(keys[1]):>7.2f} "
              f"{mean(keys[2]):>8.3f} {mean(keys[3]):>8.2f} {mean(keys[4]):>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
