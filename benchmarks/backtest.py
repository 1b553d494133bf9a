#!/usr/bin/env python
"""Backtest the discovery loop on a labelled CSV (CDVAE format: `cif` column + value columns).

    .venv/bin/python benchmarks/backtest.py --data /work/shared/data/perov_5/val.csv \
        --target heat_ref --minimize --seeds 5

Prints one row per seed (queries the loop needed to find half of the top 1 %), the random
baseline (expected queries, k (N + 1) / (K + 1)), and last the line
`acceleration_factor=<expected random queries / mean loop queries>`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning BLAS threads stall a shared 2-core box

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from xtalforge.acquisition import UnknownArm, arm_names, get_arm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CSV with a 'cif' column (read with index_col=0)")
    ap.add_argument("--target", required=True, help="value column to optimize")
    ap.add_argument("--minimize", action="store_true", help="lower is better (default: higher)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--q", type=int, default=8, help="batch size per round")
    ap.add_argument("--n-init", type=int, default=16, help="first batch (farthest-point, no model)")
    ap.add_argument("--budget", type=int, default=600, help="most oracle queries per run")
    ap.add_argument("--featurizer", default="magpie+structure",
                    choices=["magpie+structure", "chgnet+magpie+structure"])
    ap.add_argument("--kinds", default="qlognei", help="acquisition function(s), comma-separated "
                    f"(several = GP-Hedge portfolio): {', '.join(arm_names(1))}")
    ap.add_argument("--delay", type=int, default=0, help="rounds before a result comes back (pending points)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N rows (quick runs)")
    ap.add_argument("--cache", default=None, help="feature cache folder (default ~/.cache/xtalforge)")
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

    import pandas as pd

    from xtalforge.loop.backtest import expected_random_queries, load_pool, run_backtest
    from xtalforge.model.descriptors import cache_path, featurize
    from xtalforge.oracles.table import read_table

    df = read_table(args.data)
    if args.target not in df.columns:
        print(f"error: no column {args.target!r} in {args.data} (have: {', '.join(map(str, df.columns))})")
        return 2
    df[args.target] = pd.to_numeric(df[args.target], errors="coerce")
    if args.limit:
        df = df.iloc[: args.limit]
    t = time.perf_counter()
    cands, rows = load_pool(df)
    key = hashlib.sha1(Path(args.data).read_bytes()).hexdigest() + f":{args.limit}:{len(cands)}"
    whole = cache_path(key, args.featurizer + "+all", args.cache)  # every feature, so reruns skip featurizing
    if whole.is_file() and np.load(whole)["features"].shape[0] == len(cands):
        X = np.load(whole)["features"]
    else:
        X = featurize(args.featurizer, [c.structure for c in cands],
                      cache=cache_path(key, args.featurizer, args.cache))
        whole.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(whole, features=X)
    print(f"# {args.data}: {len(df)} rows, {len(cands)} unique structures, {X.shape[1]} features "
          f"({args.featurizer}) in {time.perf_counter() - t:.0f} s")
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    results = []
    print(f"{'seed':>4} {'queries':>8} {'found':>6} {'top':>4} {'rounds':>6} {'seconds':>8} "
          f"{'nll':>7} {'mae':>7} {'in1σ':>5} {'in2σ':>5}")
    for seed in range(args.seeds):
        res = run_backtest(df, cands, X, args.target, args.minimize, seed=seed, q=args.q, n_init=args.n_init,
                           budget=args.budget, kinds=kinds, delay=args.delay, log=log)
        results.append(res)

        def avg(key: str) -> float:
            v = [r[key] for r in res.rounds if key in r and np.isfinite(r[key])]
            return float(np.mean(v)) if v else float("nan")

        print(f"{seed:>4} {res.queries:>8} {res.found:>6} {res.top_size:>4} {len(res.rounds):>6} "
              f"{res.seconds:>8.1f} {avg('surrogate_nll'):>7.2f} {avg('surrogate_mae_last_round'):>7.3f} "
              f"{avg('surrogate_within_1sigma'):>5.2f} {avg('surrogate_within_2sigma'):>5.2f}", flush=True)
    top = results[0].top_size
    need = int(np.ceil(top / 2))
    rand = expected_random_queries(results[0].n_pool, top, need)
    loop = float(np.mean([r.queries for r in results]))
    censored = sum(r.queries > args.budget for r in results)
    print(f"# top 1 %: {top} structures; half = {need}; pool {results[0].n_pool}")
    print(f"# random selection needs {rand:.0f} queries in expectation; the loop needed "
          f"{loop:.1f} on average (median {np.median([r.queries for r in results]):.0f}, "
          f"min {min(r.queries for r in results)}, max {max(r.queries for r in results)})"
          + (f"; {censored} run(s) hit the budget and count as budget + 1" if censored else ""))
    print(f"acceleration_factor={rand / loop:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
