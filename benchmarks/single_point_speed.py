#!/usr/bin/env python
"""The cheap fidelity's price: proposals screened per second by the MLIP's single point (the
embedding pass the surrogate reads anyway) against proposals relaxed per second, on the same
Ray actors in the same run.

Proposals come from the substitution and random symmetric generators of a chemical system (as a
campaign's pool does); `--relax` of them are relaxed with the campaign's default settings
(FIRE, fmax 0.1 eV/Å, at most 200 steps), then all are screened by `MLIPOracle.single_point`.

    benchmarks/single_point_speed.py --chemsys Sr-Ti-O --proposals 240 --relax 12

The last line is `screen_to_relax_ratio=<single points per second / relaxations per second>`.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chemsys", default="Sr-Ti-O")
    ap.add_argument("--max-atoms", type=int, default=12)
    ap.add_argument("--proposals", type=int, default=240)
    ap.add_argument("--relax", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import numpy as np

    from xtalforge.generators.registry import build_generator
    from xtalforge.loop.executor import start_ray
    from xtalforge.oracles.mlip.oracle import MLIPOracle
    from xtalforge.types import RoundContext

    elements = tuple(sorted(a.chemsys.split("-")))
    ctx = RoundContext(round=0, elements=elements, max_atoms=a.max_atoms, rng=np.random.default_rng(a.seed), history=[])
    cands = []
    for name in ("substitution", "random_symmetric"):
        cands += build_generator(name, elements, a.max_atoms, {}).propose(a.proposals // 2, ctx)
    structures = [c.structure for c in cands]
    print(f"{len(cands)} proposals in {a.chemsys} (<= {a.max_atoms} atoms; mean "
          f"{np.mean([len(s) for s in structures]):.1f} atoms)")

    start_ray(num_cpus=a.workers)
    oracle = MLIPOracle(None, workers=a.workers, fmax=0.1, max_steps=200)
    print(f"model loading: {oracle.wait_ready():.1f} s")
    oracle.single_point(structures[: 2 * a.workers])  # first calls pay for graph-building warm-up

    t = time.perf_counter()
    emb, e = oracle.single_point(structures)
    t_sp = time.perf_counter() - t
    print(f"single points: {len(structures)} in {t_sp:.1f} s = {len(structures) / t_sp:.1f} /s "
          f"({int(np.isfinite(e).sum())} finite)")

    picks = cands[: a.relax]
    t = time.perf_counter()
    oracle.submit(picks)
    done = []
    while oracle.pending():
        done += oracle.collect(timeout_s=5.0)
    t_relax = time.perf_counter() - t
    print(f"relaxations: {len(done)} in {t_relax:.1f} s = {len(done) / t_relax:.3f} /s")
    oracle.shutdown()
    print(f"screen_to_relax_ratio={(len(structures) / t_sp) / (len(done) / t_relax):.0f}")


if __name__ == "__main__":
    main()
