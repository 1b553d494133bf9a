#!/usr/bin/env python
"""The cost of grounding a campaign in known materials: loading the shipped snapshot for a
chemical system, and building its hulls with the known phases relaxed by the campaign's MLIP,
first into an empty cache (what the first campaign in a system pays) and then from it (what
every later campaign pays). Uses the quickstart's MLIP settings.

    benchmarks/reference_hulls.py --chemsys Ca-Ti-O

The last line is `cache_speedup=X` (cold build time / warm build time, same run).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import yaml

warnings.filterwarnings("ignore")

from xtalforge.config import parse_config  # noqa: E402
from xtalforge.loop.results import build_hull, known_materials  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chemsys", default="Ca-Ti-O")
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    a = ap.parse_args(argv)
    base = yaml.safe_load(a.config.read_text())
    cache = Path(tempfile.mkdtemp(prefix="xf-known-"))
    cfg = parse_config({**base, "chemical_system": a.chemsys.split("-"),
                        "references": {"cache_dir": str(cache)}})
    run_dir = cache / "runs" / "x"
    t = time.perf_counter()
    known = known_materials(cfg, run_dir)
    t_load = time.perf_counter() - t
    times = []
    for label in ("cold (empty cache)", "warm (cached)"):
        t = time.perf_counter()
        hulls = build_hull(cfg, run_dir, known)
        times.append(time.perf_counter() - t)
        print(f"{label:20s} {times[-1]:7.2f} s  relaxed {len(hulls.relaxed.relaxed_ids):3d}, "
              f"from the cache {len(hulls.relaxed.cached_ids):3d}")
    print(f"snapshot load for {a.chemsys}: {t_load:.2f} s, {len(known.phases)} known phases "
          f"({sum(p.structure is not None for p in known.phases)} with structures)")
    speedup = times[0] / times[1]
    print(f"cache_speedup={speedup:.0f}")
    return speedup


if __name__ == "__main__":
    main()
