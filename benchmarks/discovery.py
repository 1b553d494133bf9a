#!/usr/bin/env python
"""Does the loop discover more than search alone?

Same chemical system, same number of MLIP relaxations, several seeds, three methods:
  loop       the full loop (all search generators, bandit, GP + qLogNEI, generator updates)
  no_update  the same loop with generator updates switched off
  random     random structure search: random_symmetric generator, random selection,
             no surrogate, no updates
SUN (stable, unique, novel): e_above_hull <= 0 against the hull of all methods' results pooled
(plus MP elemental references; CHGNet energies are on the MP2020-corrected scale), unique within the method
(StructureMatcher), novel against the reference structures (--reference CIFs; by default the
shared test CIFs inside the system).

    benchmarks/discovery.py --chemsys Ca-Ti-O --relaxations 60 --seeds 3

The last line printed is `sun_rate_ratio=<loop SUN rate / random SUN rate>`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
logging.basicConfig(level=logging.ERROR)

from pymatgen.core import Structure  # noqa: E402

from xtalforge.config import parse_config  # noqa: E402
from xtalforge.generators.registry import REGISTRY  # noqa: E402
from xtalforge.loop.campaign import Campaign  # noqa: E402
from xtalforge.loop.dedup import Deduplicator, is_novel  # noqa: E402
from xtalforge.loop.executor import start_ray  # noqa: E402
from xtalforge.loop.store import CampaignStore  # noqa: E402
from xtalforge.references.hull import Hull, mp2020_entry  # noqa: E402
from xtalforge.types import Candidate, Status  # noqa: E402

from round_time import share  # noqa: E402  (benchmarks/, beside this script)

SEARCH_GENERATORS = [g for g in ("random_symmetric", "substitution", "evolutionary") if g in REGISTRY]


def method_config(method: str, elements: list[str], relaxations: int, batch: int, seed: int, out: Path,
                  max_atoms: int, max_steps: int) -> dict:
    gens = SEARCH_GENERATORS if method != "random" else ["random_symmetric"]
    return dict(
        name=f"{method}-s{seed}",
        chemical_system=elements,
        max_atoms=max_atoms,
        rounds=max(1, relaxations // batch),
        proposals_per_round=60,
        seed=seed,
        update_generators=method == "loop",
        generators=[{"name": g} for g in gens],
        acquisition={"kind": "random" if method == "random" else "qlognei", "batch_size": batch},
        mlip={"workers": 2, "max_steps": max_steps},
        tracking={"uri": f"sqlite:///{out}/mlflow.db", "experiment": "discovery-benchmark"},
        output_dir=str(out / "runs"),
    )


def reference_structures(elements: set[str], folder: Path | None) -> list[Structure]:
    out = []
    if folder and folder.is_dir():
        for p in sorted(folder.rglob("*.cif")):
            try:
                s = Structure.from_file(p)
            except Exception:
                continue
            if s.is_ordered and {e.symbol for e in s.composition.elements} <= elements:
                out.append(s)
    return out


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chemsys", default="Ca-Ti-O")
    ap.add_argument("--relaxations", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=6, help="relaxations per round")
    ap.add_argument("--max-atoms", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--methods", default="loop,no_update,random")
    ap.add_argument("--reference", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "data" / "test_cifs")
    ap.add_argument("--out", type=Path, default=None, help="keep run folders here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true",
                    help="score the finished runs already in --out instead of running them again")
    ap.add_argument("--stable-tol", type=float, default=0.001,
                    help="eV/atom above the pooled hull that still counts as on it: copies of one polymorph "
                         "relaxed in different runs (FIRE to fmax 0.1 eV/Å) land within ~1 meV/atom of each other, "
                         "and without a tolerance only the copy that happened to relax lowest would count")
    ap.add_argument("--near", type=float, default=0.05,
                    help="also count unique, novel structures within this many eV/atom of the pooled hull")
    a = ap.parse_args(argv)
    elements = a.chemsys.split("-")
    methods = a.methods.split(",")
    out = a.out or Path(tempfile.mkdtemp(prefix="xf-discovery-"))
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, int], Path] = {}
    timings: dict[str, list[list[dict]]] = {m: [] for m in methods}  # per run, per round
    for seed in range(a.seeds):
        for m in methods:
            done = out / "runs" / f"{m}-s{seed}"
            if a.reuse and (done / "store.db").is_file():
                st = CampaignStore(f"sqlite:///{done / 'store.db'}")
                runs[(m, seed)] = done
                timings[m].append(list(st.round_metrics().values()))
                st.close()
                continue
            start_ray(num_cpus=2)
            cfg = parse_config(method_config(m, elements, a.relaxations, a.batch, seed, out, a.max_atoms, a.max_steps))
            t0 = time.perf_counter()
            camp = Campaign.create(cfg, progress=False, echo=lambda *_: None)
            stats = camp.run()
            runs[(m, seed)] = camp.run_dir
            wall = time.perf_counter() - t0
            timings[m].append([s.metrics for s in stats])
            print(f"# {m:9s} seed {seed}: {wall:6.0f} s", file=sys.stderr, flush=True)

    # pool every method's relaxed structures into one hull
    hull = Hull(elements)
    per_run: dict[tuple[str, int], list[tuple[Candidate, str, int]]] = {}
    n_relax: dict[tuple[str, int], int] = {}
    for key, rd in runs.items():
        st = CampaignStore(f"sqlite:///{rd / 'store.db'}")
        ms = st.measurements(oracle="mlip")
        n_relax[key] = len(ms)
        rows = []
        for m in ms:
            if m.status != Status.ok or m.relaxed is None:
                continue
            k = f"{key[0]}|{key[1]}|{m.candidate_id}"
            # CHGNet energies already carry MP2020 corrections (see HullConfig.apply_mp2020)
            hull.add(k, mp2020_entry(m.relaxed, m.values["energy_per_atom"] * len(m.relaxed), k, apply=False))
            rows.append((Candidate(structure=m.relaxed, source=key[0], round=m.round, id=m.candidate_id), k, m.round))
        per_run[key] = rows
        st.close()
    e_hull = hull.all_e_above_hull()
    refs = reference_structures(set(elements), a.reference)

    table: dict[str, dict[str, list[float]]] = {m: {"sun_per_100": [], "near_per_100": [], "best": [], "sun": []}
                                                for m in methods}
    for (m, seed), rows in per_run.items():
        sun, near = 0, 0
        dd_sun, dd_near = Deduplicator(), Deduplicator()
        for cand, k, _ in sorted(rows, key=lambda t: e_hull[t[1]]):  # the lowest polymorph represents
            if e_hull[k] <= a.near + 1e-9 and dd_near.add(cand) and is_novel(cand.structure, refs):
                near += 1
            if e_hull[k] <= a.stable_tol + 1e-9 and dd_sun.add(cand) and is_novel(cand.structure, refs):
                sun += 1
        table[m]["sun"].append(sun)
        table[m]["sun_per_100"].append(100.0 * sun / max(1, n_relax[(m, seed)]))
        table[m]["near_per_100"].append(100.0 * near / max(1, n_relax[(m, seed)]))
        table[m]["best"].append(min((e_hull[k] for _, k, _ in rows), default=float("nan")))

    def ms(v: list[float], spec: str = ".2f") -> str:
        return f"{statistics.mean(v):6{spec}} ± {statistics.pstdev(v):5{spec}}" if v else "n/a"

    print(f"\nDiscovery benchmark: {a.chemsys}, {a.relaxations} relaxations per run, {a.seeds} seeds, "
          f"max {a.max_atoms} atoms; hull = MP elements + all runs pooled; stable = within "
          f"{1000 * a.stable_tol:g} meV/atom of it")
    near = f"within {1000 * a.near:.0f} meV per 100"
    print(f"{'method':10s} | {'SUN per 100 relaxations':>24s} | {'SUN per seed':>12s} | {near:>22s} | "
          f"{'best e_above_hull (eV/atom)':>28s}")
    print("-" * 110)
    for m in methods:
        counts = ",".join(str(int(v)) for v in table[m]["sun"])
        print(f"{m:10s} | {ms(table[m]['sun_per_100']):>24s} | {counts:>12s} | {ms(table[m]['near_per_100']):>22s} | "
              f"{ms(table[m]['best'], '.3f'):>28s}")

    print("\nTime per round by stage (loop), seconds, mean over rounds and seeds "
          "(with overlap, generate ran during the previous round's oracle, except in round 1):")
    if timings.get("loop"):
        every = [d for run in timings["loop"] for d in run]
        keys = sorted({k for d in every for k in d if k.startswith("time_") and k.count("_") == 2})
        for k in keys:
            print(f"  {k:22s} {float(np.mean([d.get(k, 0.0) for d in every])):7.2f}")
        later = [d for run in timings["loop"] for d in run[1:]]
        print(f"  non-oracle share of round time: {share(every):.1%} over all rounds, "
              f"{share(later):.1%} after the first (which also waits for the MLIP actors to load)")

    loop = statistics.mean(table["loop"]["sun_per_100"]) if "loop" in table else float("nan")
    rnd = statistics.mean(table["random"]["sun_per_100"]) if "random" in table else float("nan")
    ratio = loop / rnd if rnd > 0 else float("inf") if loop > 0 else float("nan")
    print(f"run folders: {out}")
    print(f"sun_rate_ratio={ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
