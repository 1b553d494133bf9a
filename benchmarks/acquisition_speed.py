#!/usr/bin/env python
"""Acquisition speed and quality on a synthetic problem, plus surrogate refit times.

    nice -n 5 .venv/bin/python benchmarks/acquisition_speed.py

Synthetic problem: a random-Fourier-feature function of d = 32 inputs on [0, 1]^d, a GP fitted
to n = 500 random noisy observations, pools of uniform random points.

1. refit: Surrogate.fit cold and warm (last round's hyperparameters) at several n;
2. speed: Acquirer.select of q = 16 from N = 100,000 (qLogNEI; median of 3 warm calls);
3. quality: on pools of N_exh = 3,000 (exhaustive BoTorch is ~1 min there; at 100,000 it would be
   ~30x longer), the fast batch against BoTorch's exhaustive sequential greedy
   (`optimize_acqf_discrete` with qLogNEI over every candidate). Both batches are scored by one
   independent BoTorch qLogNEI with 4,096 Sobol samples; `ratio` = exp(difference of the log
   values), i.e. the ratio of qNEI values (target >= 0.95).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning BLAS threads stall a shared 2-core box

import argparse
import time
import warnings

import numpy as np
import torch


def problem(seed: int, d: int, n: int):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, 64)) * 0.8
    b = rng.random(64) * 2 * np.pi
    a = rng.standard_normal(64)

    def f(X: np.ndarray) -> np.ndarray:
        return np.cos(X @ W + b) @ a / 8

    X = rng.random((n, d))
    return rng, f, X, f(X) + 0.01 * rng.standard_normal(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--q", type=int, default=16)
    ap.add_argument("--n-exh", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--refit-sizes", default="500,2000,8000")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.optim import optimize_acqf_discrete
    from botorch.sampling import SobolQMCNormalSampler

    from xtalforge.acquisition import Acquirer, Target
    from xtalforge.model.surrogate import OutcomeData, Surrogate

    print(f"# torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("\n## surrogate refit (d = %d)" % args.d)
    print(f"{'n':>6} {'kind':>8} {'n_cond':>7} {'n_hyper':>7} {'cold_s':>7} {'warm_s':>7} {'nll':>6}")
    for n in [int(x) for x in args.refit_sizes.split(",")]:
        _, _, X, y = problem(0, args.d, n)
        s = Surrogate(seed=0)
        t = time.perf_counter()
        rep = s.fit({"y": OutcomeData(X, y)})["y"]
        cold = time.perf_counter() - t
        y2 = y + 0.001  # next round: same data plus a little, from last round's hyperparameters
        t = time.perf_counter()
        rep2 = s.fit({"y": OutcomeData(X, y2)})["y"]
        warm = time.perf_counter() - t
        print(f"{n:>6} {rep.kind:>8} {rep.n_train:>7} {rep.n_hyper:>7} {cold:>7.1f} {warm:>7.1f} {rep2.nll:>6.2f}", flush=True)
        # a campaign with single points: every candidate at fidelity 0, the last 5 % relaxed
        fid = np.zeros(n, dtype=int)
        fid[-max(2, n // 20):] = 1
        y_low = np.where(fid == 0, 0.8 * y + 0.3, y)
        s = Surrogate(seed=0)
        t = time.perf_counter()
        rep = s.fit({"y": OutcomeData(X, y_low, fidelity=fid)})["y"]
        cold = time.perf_counter() - t
        t = time.perf_counter()
        rep2 = s.fit({"y": OutcomeData(X, y_low + 0.001, fidelity=fid)})["y"]
        warm = time.perf_counter() - t
        print(f"{n:>6} {'mf':>8} {rep.n_train:>7} {rep.n_hyper:>7} {cold:>7.1f} {warm:>7.1f} {rep2.nll:>6.2f}"
              f"  (multi-fidelity: {int((fid == 1).sum())} relaxed + {int((fid == 0).sum())} single points)", flush=True)

    print(f"\n## speed: q = {args.q} from N = {args.pool:,} (n_train = {args.n_train})")
    rng, f, Xtr, ytr = problem(0, args.d, args.n_train)
    sur = Surrogate(seed=0)
    sur.fit({"y": OutcomeData(Xtr, ytr)})
    pool = rng.random((args.pool, args.d))
    acq = Acquirer([Target("y", minimize=False)])
    t = time.perf_counter()
    acq.select(sur, pool[:2000], args.q, rng)  # first call: imports and one-off set-up
    first = time.perf_counter() - t
    times = []
    for k in range(3):
        t = time.perf_counter()
        picks = acq.select(sur, pool, args.q, np.random.default_rng(k))
        times.append(time.perf_counter() - t)
    print(f"{'call':>10} {'seconds':>8}")
    print(f"{'first(2k)':>10} {first:>8.2f}")
    for k, v in enumerate(times):
        print(f"{'warm ' + str(k):>10} {v:>8.2f}")
    print(f"# screen: {acq.last_screen}; picks {picks.indices[:6]}...")
    fast_100k = float(np.median(times))

    print(f"\n## quality vs exhaustive sequential greedy: q = {args.q} from N = {args.n_exh:,}")
    print(f"{'seed':>4} {'fast_s':>7} {'exh_s':>7} {'speedup':>8} {'logv_fast':>10} {'logv_exh':>9} {'ratio':>6}")
    ratios, speedups = [], []
    for seed in range(args.seeds):
        rng, f, Xtr, ytr = problem(seed + 1, args.d, args.n_train)
        sur = Surrogate(seed=seed)
        sur.fit({"y": OutcomeData(Xtr, ytr)})
        pool = rng.random((args.n_exh, args.d))
        acq = Acquirer([Target("y", minimize=False)], seed=seed)
        acq.select(sur, pool[:500], 2, rng)
        t = time.perf_counter()
        picks = acq.select(sur, pool, args.q, rng)
        t_fast = time.perf_counter() - t
        exh = qLogNoisyExpectedImprovement(sur.model, torch.as_tensor(Xtr))
        t = time.perf_counter()
        cand, _ = optimize_acqf_discrete(exh, q=args.q, choices=torch.as_tensor(pool), max_batch_size=1024)
        t_exh = time.perf_counter() - t
        ev = qLogNoisyExpectedImprovement(sur.model, torch.as_tensor(Xtr),
                                          sampler=SobolQMCNormalSampler(torch.Size([4096]), seed=12345))
        with torch.no_grad():
            vf = float(ev(torch.as_tensor(pool[picks.indices]).unsqueeze(0)))
            ve = float(ev(cand.unsqueeze(0)))
        ratios.append(float(np.exp(vf - ve)))
        speedups.append(t_exh / t_fast)
        print(f"{seed:>4} {t_fast:>7.2f} {t_exh:>7.1f} {t_exh / t_fast:>8.0f} {vf:>10.4f} {ve:>9.4f} {ratios[-1]:>6.3f}", flush=True)
    print(f"\n# q={args.q} from {args.pool:,}: {fast_100k:.2f} s (target < 5 s); quality ratio vs exhaustive "
          f"greedy at N={args.n_exh:,}: min {min(ratios):.3f}, mean {np.mean(ratios):.3f} (target >= 0.95); "
          f"speed-up over exhaustive at N={args.n_exh:,}: {np.mean(speedups):.0f}x")
    print(f"select_seconds_100k={fast_100k:.2f} quality_ratio_min={min(ratios):.3f}")


if __name__ == "__main__":
    main()
