"""`xtalforge sample --chemsys Ba-Zr-O --n 200 --out DIR`: crystals from the Wyckoff generator.

Uses the checkpoint shipped with the package unless --checkpoint names another. Samples hold
only the system's elements (any subset of them), at most --max-atoms atoms in the primitive cell,
and charge-balanced compositions are taken first (see generators/wyckoff/drawing.py);
--composition fixes the reduced formula and --spacegroup the space group. Writes one CIF per
sample and samples.csv (file, formula, spacegroup, n_sites, ...). Imports stay inside the command
so that building the CLI parser does not load torch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from xtalforge.cli.errors import EXIT_FAILED, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample crystals of a chemical system from the pre-trained Wyckoff generator")
    p.add_argument("--chemsys", required=True, help="elements joined by '-', e.g. Ba-Zr-O")
    p.add_argument("--n", type=int, default=100, help="number of crystals (default 100)")
    p.add_argument("--out", required=True, help="folder for the CIFs and samples.csv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-atoms", type=int, default=20, help="most atoms in the primitive cell (default 20)")
    p.add_argument("--composition", help="target reduced formula, e.g. BaZrO3 (crystal structure prediction)")
    p.add_argument("--spacegroup", type=int, action="append", metavar="N",
                   help="allowed space group number (1-230); repeatable")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--no-prefer-balanced", action="store_true",
                   help="do not take charge-balanced compositions first")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the one shipped with xtalforge)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(fn=cmd_sample)




def cmd_sample(a: argparse.Namespace) -> int:
    from pymatgen.core import Composition, Element

    from xtalforge.generators.wyckoff.mp_data import normalise_chemsys

    if a.n <= 0:
        return fail(f"--n must be at least 1 (got {a.n})")
    if a.max_atoms < 1:
        return fail(f"--max-atoms must be at least 1 (got {a.max_atoms})")
    if a.temperature <= 0:
        return fail(f"--temperature must be positive (got {a.temperature})")
    try:
        elements = normalise_chemsys(a.chemsys).split("-")
    except ValueError as err:
        return fail(f"--chemsys: {err}")
    if any(Element(e).Z > 100 for e in elements):
        return fail(f"--chemsys: the generator's vocabulary stops at Fm (Z = 100): {a.chemsys}")
    if len(elements) > a.max_atoms:
        return fail(f"--chemsys {a.chemsys}: {len(elements)} elements cannot share {a.max_atoms} atoms")
    for g in a.spacegroup or []:
        if not 1 <= g <= 230:
            return fail(f"--spacegroup {g}: space groups are numbered 1 to 230")
    composition = None
    if a.composition:
        try:
            comp = Composition(a.composition).reduced_composition
        except Exception:
            return fail(f"--composition: cannot read {a.composition!r} as a formula")
        if not set(str(e) for e in comp.elements) <= set(elements):
            return fail(f"--composition {a.composition} has elements outside --chemsys {a.chemsys}")
        if comp.num_atoms > a.max_atoms or comp.num_atoms != int(comp.num_atoms):
            return fail(f"--composition {a.composition}: {comp.num_atoms:g} atoms per formula unit do not fit "
                         f"--max-atoms {a.max_atoms}")
        composition = {Element(str(e)).Z: int(c) for e, c in comp.items()}

    out = Path(a.out)
    if (out / "samples.csv").exists():
        return fail(f"{out / 'samples.csv'} exists; choose another --out (nothing was overwritten)")

    import torch

    from xtalforge.generators.wyckoff.drawing import draw
    from xtalforge.generators.wyckoff.generator import check_vocabulary
    from xtalforge.generators.wyckoff.model import Constraints
    from xtalforge.generators.wyckoff.tables import wyckoff_tables
    from xtalforge.generators.wyckoff.train import CheckpointError, load_checkpoint, shipped_checkpoint, torch_threads

    folder = Path(a.checkpoint) if a.checkpoint else shipped_checkpoint()
    try:
        check_vocabulary(folder, elements)
        model = load_checkpoint(folder)
    except CheckpointError as err:
        return fail(str(err))
    tables = wyckoff_tables()
    cons = Constraints(elements=tuple(sorted(Element(e).Z for e in elements)), max_atoms=a.max_atoms,
                       spacegroups=tuple(a.spacegroup) if a.spacegroup else None)
    if not bool(cons.sg_mask(model, 1).any()):
        return fail(f"no allowed space group has an orbit small enough for --max-atoms {a.max_atoms}")
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    with torch_threads(a.threads):
        got, why = draw(model, a.n, cons, tables, gen, a.temperature, composition=composition,
                        prefer_balanced=not a.no_prefer_balanced, oversample=8)
    seconds = time.perf_counter() - t0
    if not got:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(why.items())) or "none"
        return fail(f"no valid crystal in 8 rounds of drawing (rejected: {reasons})", EXIT_FAILED)
    _write(out, got)
    balanced = sum(d.balanced for d in got)
    print(f"{len(got)} crystals ({balanced} charge-balanced) in {seconds:.1f} s -> {out}/samples.csv"
          + (f"; only {len(got)} of {a.n} valid after 8 rounds" if len(got) < a.n else ""))
    return 0


def _write(out: Path, got: list) -> None:
    import csv

    from pymatgen.io.cif import CifWriter
    from pymatgen.symmetry.groups import SpaceGroup

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, d in enumerate(got):
        formula = d.structure.composition.reduced_formula
        name = f"{i:05d}_{formula}.cif"
        CifWriter(d.structure).write_file(out / name)
        rows.append({"file": name, "formula": formula, "spacegroup": d.seq.sg,
                     "spacegroup_symbol": SpaceGroup.from_int_number(d.seq.sg).symbol,
                     "n_sites": len(d.structure), "wyckoff_sites": d.seq.n_sites,
                     "charge_balanced": int(d.balanced), "logp": round(d.logp, 3)})
    tmp = out / "samples.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "samples.csv")
