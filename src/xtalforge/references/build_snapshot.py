"""Build the shipped known-materials snapshot from the two Materials Project tables.

    python -m xtalforge.references.build_snapshot SOURCE_DIR [--out src/xtalforge/data/references]

SOURCE_DIR holds `mp20_formation_energies.csv.gz` (MP-20: compositions and DFT formation energies,
no coordinates) and `mp_structures.csv.gz` (MP structures as P1 CIFs with formation energies).
Every entry of both goes in with its formation energy (the MP-20 value where both have one, as the
tables' README advises), and every structure with it (`--max-sites` and `--max-e-above-hull`
trim them: the defaults ship all 36,737 in about 5.5 MB). Entries with an element that has no MP
elemental reference are dropped (their energy cannot be put on the MP scale).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import math
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure
from pymatgen.symmetry.groups import SpaceGroup

from xtalforge.references.hull import elemental_references
from xtalforge.references.snapshot import SnapshotRow, chemsys_of, subsystems, write_snapshot

log = logging.getLogger(__name__)

MP20_FILE = "mp20_formation_energies.csv.gz"
STRUCTURES_FILE = "mp_structures.csv.gz"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "references"


def _read_tables(source: Path):
    import pandas as pd

    mp20 = pd.read_csv(source / MP20_FILE)
    with gzip.open(source / STRUCTURES_FILE, "rt") as fh:
        st = pd.read_csv(fh)
    return mp20, st


def _parse_cifs(st) -> dict[str, Structure]:
    out: dict[str, Structure] = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fractional coordinates rounded": harmless for P1 CIFs
        for i, (mid, cif) in enumerate(zip(st.material_id, st.cif)):
            try:
                out[mid] = Structure.from_str(cif, fmt="cif")
            except Exception as err:
                log.warning("%s: CIF not readable (%s); kept without structure", mid, err)
            if i % 5000 == 4999:
                log.info("parsed %d CIFs in %.0f s", i + 1, time.perf_counter() - t0)
    return out


def _e_above_hull(entries: dict[str, tuple[Composition, float]], mu: dict[str, float]) -> dict[str, float]:
    """eV/atom above the hull of all `entries` (formation energies eV/atom) plus MP's elements.

    One phase diagram per maximal chemical system: an entry's distance to the hull is the same in
    any system that contains its own, so every system that is a subset of another is covered."""
    by_cs: dict[str, list[str]] = defaultdict(list)
    for mid, (comp, _) in entries.items():
        by_cs[chemsys_of([e.symbol for e in comp.elements])].append(mid)
    systems = sorted(by_cs, key=lambda cs: -cs.count("-"))
    covered: set[str] = set()
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for cs in systems:
        if cs in covered:
            continue
        els = cs.split("-")
        subs = subsystems(els)
        covered.update(subs)
        pd_entries = [PDEntry(Composition({e: 1}), mu[e], name=f"ref-{e}") for e in els]
        mine: dict[str, PDEntry] = {}
        for sub in subs:
            for mid in by_cs.get(sub, ()):
                comp, ef = entries[mid]
                n = comp.num_atoms
                energy = (ef + sum(comp.get_atomic_fraction(el) * mu[el.symbol] for el in comp.elements)) * n
                mine[mid] = PDEntry(comp, energy, name=mid)
        pd = PhaseDiagram(pd_entries + list(mine.values()))
        for mid, e in mine.items():
            if mid not in out:
                out[mid] = float(pd.get_e_above_hull(e, allow_negative=True))
    log.info("hull distances of %d entries in %.0f s", len(out), time.perf_counter() - t0)
    return out


def build(source: Path, out: Path, max_sites: int | None = None, max_e_above_hull: float | None = None) -> dict[str, int]:
    """Write the snapshot to `out`; returns counts (entries, structures, dropped). Structures of
    more than `max_sites` sites or more than `max_e_above_hull` eV/atom above the snapshot's DFT
    hull are left out (None: no limit)."""
    max_sites = max_sites if max_sites is not None else 10**9
    max_e_above_hull = max_e_above_hull if max_e_above_hull is not None else math.inf
    mp20, st = _read_tables(source)
    mu = {k: v.energy_per_atom for k, v in elemental_references().items()}
    structures = _parse_cifs(st)
    symbol = {n: SpaceGroup.from_int_number(n).symbol for n in {int(n) for n in st.spacegroup}}  # slow per call
    sg = {mid: symbol[int(n)] for mid, n in zip(st.material_id, st.spacegroup)}
    records: dict[str, dict] = {}
    for r in st.itertuples(index=False):
        s = structures.get(r.material_id)
        comp = s.composition if s is not None else None
        records[r.material_id] = {"comp": comp, "e_form": float(r.formation_energy_per_atom),
                                  "source": "mp_structures"}
    for r in mp20.itertuples(index=False):
        prior = records.get(r.material_id)
        comp = Composition(r.formula)
        if prior is not None and prior["comp"] is not None:
            comp = prior["comp"]  # the cell of the structure we ship, when there is one
        records[r.material_id] = {"comp": comp, "e_form": float(r.formation_energy_per_atom), "source": "mp20"}
    dropped = {mid: rec for mid, rec in records.items()
               if rec["comp"] is None or any(el.symbol not in mu for el in rec["comp"].elements)}
    for mid in dropped:
        del records[mid]
    log.info("%d entries; dropped %d (no MP elemental reference or no composition)", len(records), len(dropped))
    e_hull = _e_above_hull({mid: (rec["comp"], rec["e_form"]) for mid, rec in records.items()}, mu)
    rows: list[SnapshotRow] = []
    shipped: list[Structure] = []
    for mid in sorted(records, key=_id_key):
        rec = records[mid]
        comp = rec["comp"]
        s = structures.get(mid)
        idx = -1
        if s is not None and len(s) <= max_sites and e_hull[mid] <= max_e_above_hull:
            idx = len(shipped)
            shipped.append(s)
        rows.append(SnapshotRow(mid, comp.formula.replace(" ", ""), chemsys_of([e.symbol for e in comp.elements]),
                                int(round(comp.num_atoms)), sg.get(mid, ""), rec["e_form"], e_hull[mid],
                                rec["source"], idx))
    write_snapshot(out, rows, shipped)
    return {"entries": len(rows), "structures": len(shipped), "dropped": len(dropped),
            "with_structure_in_source": len(structures)}


def _id_key(mid: str) -> tuple[str, int]:
    prefix, _, num = mid.rpartition("-")
    return (prefix, int(num)) if num.isdigit() else (mid, 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xtalforge.references.build_snapshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help=f"folder with {MP20_FILE} and {STRUCTURES_FILE}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="snapshot folder (default: the package's)")
    p.add_argument("--max-sites", type=int, default=None,
                   help="ship structures of at most this many sites (default: all; 40 halves the size)")
    p.add_argument("--max-e-above-hull", type=float, default=None,
                   help="ship structures at most this far above the snapshot's DFT hull, eV/atom (default: all)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    for f in (MP20_FILE, STRUCTURES_FILE):
        if not (a.source / f).is_file():
            print(f"error: {a.source / f} does not exist", file=sys.stderr)
            return 2
    counts = build(a.source, a.out, a.max_sites, a.max_e_above_hull)
    sizes = {f.name: f.stat().st_size for f in a.out.iterdir() if f.is_file()}
    print(f"wrote {a.out}: {counts}; sizes (bytes) {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
