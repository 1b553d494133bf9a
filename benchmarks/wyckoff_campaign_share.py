"""Per generator in finished campaigns: how many of its proposals were relaxed, and how many of
those ended within 50 meV/atom of the campaign's hull.

    .venv/bin/python benchmarks/wyckoff_campaign_share.py runs/quickstart [runs/other ...]

Reads each run folder's store.db (read-only use; nothing is written). The hull distance is the
one the campaign recorded (`e_above_hull`, eV/atom, against its reference hull plus its own
measurements at the time), so a share compares generators within the same runs only.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--within", type=float, default=0.05, help="eV/atom above the hull (default 0.05)")
    a = ap.parse_args()

    from xtalforge.loop.store import CampaignStore, store_problem
    from xtalforge.types import Status

    proposed: dict[str, int] = defaultdict(int)
    relaxed: dict[str, int] = defaultdict(int)
    near: dict[str, int] = defaultdict(int)
    for run in map(Path, a.runs):
        db = run / "store.db"
        problem = store_problem(db)
        if problem:
            raise SystemExit(f"error: {problem}")
        store = CampaignStore(f"sqlite:///{db.resolve()}")
        source = {}
        for c in store.candidates():
            source[c.id] = c.source
            proposed[c.source] += 1
        for m in store.measurements(status=Status.ok):
            src = source.get(m.candidate_id, "?")
            e = m.values.get("e_above_hull")
            if e is None:
                continue
            relaxed[src] += 1
            near[src] += e <= a.within
        store.close()
    print(f"{'generator':<18} {'proposed':>9} {'relaxed':>8} {'<= %.0f meV' % (a.within * 1000):>10} {'share':>7}")
    for src in sorted(proposed, key=lambda s: -relaxed[s]):
        share = near[src] / relaxed[src] if relaxed[src] else float("nan")
        print(f"{src:<18} {proposed[src]:>9} {relaxed[src]:>8} {near[src]:>10} {share:>7.0%}")


if __name__ == "__main__":
    main()
