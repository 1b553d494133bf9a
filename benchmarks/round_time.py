#!/usr/bin/env python
"""Where a round's time goes, and how much of it the oracle waits for the loop.

Runs one campaign config (by default the quickstart) several times with `overlap` on (the next
round's generation and this round's files run while the oracle relaxes) and off (stage after
stage), alternating the two so that machine noise hits both alike. Prints, per round, the mean
time of each stage and the share of the round that is not oracle time, then the same over the
rounds after the first (the first also pays for Ray workers and the MLIP actors loading their
model) and over the whole campaign, and the campaign's wall time with overlap / without.

    benchmarks/round_time.py --config configs/quickstart.yaml --repeats 3

The last line is `non_oracle_share=<share over rounds after the first, overlap on>`.
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

import yaml

warnings.filterwarnings("ignore")
logging.basicConfig(level=logging.ERROR)

from xtalforge.config import parse_config  # noqa: E402
from xtalforge.loop.campaign import Campaign  # noqa: E402
from xtalforge.loop.executor import start_ray  # noqa: E402

STAGES = ("generate", "oracle_startup", "featurize", "acquire", "oracle", "update", "record")


def run_once(base: dict, overlap: bool, out: Path, tag: str) -> tuple[float, list[dict]]:
    cfg = parse_config({**base, "name": tag, "overlap": overlap, "output_dir": str(out / "runs"),
                        "tracking": {**base.get("tracking", {}), "uri": f"sqlite:///{out}/mlflow.db"}})
    t0 = time.perf_counter()
    camp = Campaign.create(cfg, progress=False, echo=lambda *_: None)
    stats = camp.run()
    return time.perf_counter() - t0, [s.metrics for s in stats]


def relax_seconds(rounds: list[dict]) -> float:
    """Summed oracle time of a campaign: equal in both modes only when they relax the same picks."""
    return sum(m.get("time_oracle_s", 0.0) for m in rounds)


def share(rounds: list[dict], startup_is_oracle: bool = False) -> float:
    """Non-oracle share of the summed round wall time; with `startup_is_oracle`, the wait for
    the MLIP workers to load their model counts as oracle time."""
    total = sum(m["time_round_s"] for m in rounds)
    oracle = sum(m.get("time_oracle_s", 0.0) + (m.get("time_oracle_startup_s", 0.0) if startup_is_oracle else 0.0)
                 for m in rounds)
    return 1.0 - oracle / total if total else float("nan")


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="keep run folders here (default: a temp dir)")
    ap.add_argument("--controlled", action="store_true",
                    help="random_symmetric only, generators frozen: generation then ignores results, so both "
                         "modes relax the same picks and their times compare like for like")
    a = ap.parse_args(argv)
    base = yaml.safe_load(a.config.read_text())
    if a.controlled:
        base = {**base, "generators": [{"name": "random_symmetric"}], "update_generators": False}
    out = a.out or Path(tempfile.mkdtemp(prefix="xf-round-time-"))
    start_ray(num_cpus=base.get("ray", {}).get("num_cpus"))

    walls: dict[bool, list[float]] = {True: [], False: []}
    rounds: dict[bool, list[list[dict]]] = {True: [], False: []}
    for rep in range(a.repeats):
        for overlap in (True, False) if rep % 2 == 0 else (False, True):
            wall, metrics = run_once(base, overlap, out, f"{'overlap' if overlap else 'sequential'}-{rep}")
            walls[overlap].append(wall)
            rounds[overlap].append(metrics)
            print(f"# {'overlap' if overlap else 'sequential':10s} repeat {rep}: {wall:5.1f} s", file=sys.stderr,
                  flush=True)

    print(f"\nRound time by stage: {a.config.name}{' (controlled)' if a.controlled else ''}, {a.repeats} repeats, "
          "mean seconds "
          "(generate with overlap ran during the previous round's oracle, except in round 1)")
    for overlap in (True, False):
        print(f"\noverlap={'on' if overlap else 'off'}")
        print(f"{'round':>5s} | " + " | ".join(f"{s.replace('oracle_', ''):>9s}" for s in STAGES)
              + f" | {'round':>6s} | non-oracle")
        n_rounds = len(rounds[overlap][0])
        for r in range(n_rounds):
            ms = [run[r] for run in rounds[overlap]]
            cells = [statistics.mean(m.get(f"time_{s}_s", 0.0) for m in ms) for s in STAGES]
            wall = statistics.mean(m["time_round_s"] for m in ms)
            print(f"{r + 1:5d} | " + " | ".join(f"{c:9.2f}" for c in cells) + f" | {wall:6.2f} | {share(ms):6.1%}")
        later = [m for run in rounds[overlap] for m in run[1:]]
        every = [m for run in rounds[overlap] for m in run]
        print(f"non-oracle share: rounds 2+ {share(later):.1%} · all rounds {share(every):.1%} "
              f"({share(every, startup_is_oracle=True):.1%} counting the wait for the MLIP workers' model as "
              f"oracle time) · "
              f"campaign wall {statistics.mean(walls[overlap]):.1f} s (incl. start-up and final report) · "
              f"relaxation seconds {statistics.mean(relax_seconds(run) for run in rounds[overlap]):.1f}")

    ratio = statistics.mean(walls[True]) / statistics.mean(walls[False])
    steady = share([m for run in rounds[True] for m in run[1:]])
    print(f"\ncampaign wall time, overlap / sequential: {ratio:.2f}")
    print(f"run folders: {out}")
    print(f"non_oracle_share={steady:.3f}")
    return steady


if __name__ == "__main__":
    main()
