"""`xtalforge hull FILE... --chemsys Ca-Ti-O`: where structures sit against the known phases.

Each structure is relaxed by the MLIP (or evaluated as given with --no-relax) and placed on two
hulls: the oracle-consistent one (known phases relaxed by the same MLIP, cached) and the DFT
reference one (known phases at their Materials Project energies). It is matched against the
known structures of the system: a match is a rediscovery, not a novel phase.

Registered by xtalforge.cli.main through `add_parser`; heavy imports wait until the command runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from xtalforge.cli.errors import EXIT_FAILED, EXIT_OK
from xtalforge.cli.errors import fail as _fail  # one error format for every subcommand

COLUMNS = ["formula", "e_above_hull", "e_above_hull_dft", "known_match", "novel", "decomposition"]


def _read_structures(files: list[str], elements: tuple[str, ...]) -> tuple[list, list[str]]:
    """(structures, problems): every file is read before any is used, so one bad file stops the
    command before anything is relaxed or written."""
    from pymatgen.core import Structure

    structures, problems = [], []
    for f in files:
        p = Path(f)
        if not p.is_file():
            problems.append(f"{f}: no such file")
            continue
        try:
            s = Structure.from_file(p)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            problems.append(f"{f}: not a readable structure file ({first})")
            continue
        s.remove_oxidation_states()
        outside = sorted({el.symbol for el in s.composition.elements} - set(elements))
        if outside:
            problems.append(f"{f}: {s.composition.reduced_formula} has {', '.join(outside)}, "
                            f"outside the chemical system {'-'.join(elements)}")
            continue
        structures.append(s)
    return structures, problems


def _fmt(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else "nan"


def run(a: argparse.Namespace) -> int:
    """Evaluate the structure files of `a.files` against the known phases of `a.chemsys`;
    exit 2 (one line per problem, nothing written) on bad input."""
    from xtalforge.references.known import MP_API, KnownMaterialsError, default_sources, load_known, parse_chemsys

    try:
        elements = parse_chemsys(a.chemsys)
    except KnownMaterialsError as err:
        return _fail([str(err)])
    structures, problems = _read_structures(a.files, elements)
    out = Path(a.out) if a.out else None
    if out is not None and not out.parent.is_dir():
        problems.append(f"--out {out}: folder {out.parent} does not exist")
    if problems:
        return _fail(problems)
    sources = a.references or default_sources()
    try:
        known = load_known(elements, sources, exclude_chemsys=a.exclude_chemsys, strict=True)
    except KnownMaterialsError as err:
        hint = " (--references snapshot works offline)" if MP_API in sources else ""
        return _fail([f"{err}{hint}"])

    from xtalforge.config import HullConfig
    from xtalforge.oracles.mlip.relax import Relaxer
    from xtalforge.references.hull import mp2020_entry
    from xtalforge.references.hulls import build_reference_hulls
    from xtalforge.references.novelty import KnownStructures
    from xtalforge.references.relaxed import model_key, relax_settings

    try:
        relaxer = Relaxer(a.model, threads=a.threads)
    except ValueError as err:
        return _fail([str(err)])
    apply = HullConfig().mp2020_for(a.model)

    def relax(ss):
        return relaxer.relax_many(ss, fmax=a.fmax, max_steps=a.max_steps)

    print(f"known phases of {known.chemsys}: relaxing those not yet cached with {a.model} "
          f"(at most {a.max_sites} sites; cache {a.cache_dir or 'default'})", file=sys.stderr)
    hulls = build_reference_hulls(known, relax, model_key(a.model), relax_settings(a.fmax, a.max_steps),
                                  a.cache_dir, apply_mp2020=apply, max_sites=a.max_sites)
    if a.no_relax:
        energies = relaxer.energies(structures, relax_ions=False)
        evaluated = [(s, float(e), "" if math.isfinite(e) else "no energy") for s, e in zip(structures, energies)]
    else:
        evaluated = [(r.structure, r.energy, "") if r.ok else (None, math.nan, r.error) for r in relax(structures)]
    index = KnownStructures(known.phases)
    for e in hulls.relaxed.entries:
        index.add(e.entry_id, e.structure)
    rows, failures = [], []
    for f, start, (final, energy, error) in zip(a.files, structures, evaluated):
        formula = start.composition.reduced_formula
        if error:
            failures.append(f"{f}: {'relaxation' if not a.no_relax else 'evaluation'} failed: {error}")
            rows.append({"formula": formula, "e_above_hull": "nan", "e_above_hull_dft": "nan",
                         "known_match": index.match(start), "novel": "", "decomposition": ""})
            continue
        final = final if final is not None else start
        entry = mp2020_entry(final, energy, entry_id=Path(f).stem, apply=apply)
        d = hulls.distance(entry)
        match = index.match(final) or index.match(start)
        products = " + ".join(label for label, _ in hulls.decomposition(entry))
        rows.append({"formula": formula, "e_above_hull": _fmt(d.e_above_hull), "e_above_hull_dft": _fmt(d.e_above_hull_dft),
                     "known_match": match, "novel": str(not match), "decomposition": products})
    _print(a.files, rows)
    for line in hulls.describe():
        print(line)
    if out is not None:
        _write_csv(out, rows)
        print(f"wrote {out}")
    return _fail(failures, EXIT_FAILED) if failures else EXIT_OK


def _print(files: list[str], rows: list[dict]) -> None:
    w = max([len(Path(f).name) for f in files] + [4])
    print(f"{'file':<{w}}  {'formula':<10} {'e_hull':>8} {'e_hull_dft':>10}  {'known_match':<12} {'novel':<5}  decomposition")
    for f, r in zip(files, rows):
        print(f"{Path(f).name:<{w}}  {r['formula']:<10} {r['e_above_hull']:>8} {r['e_above_hull_dft']:>10}  "
              f"{r['known_match'] or '-':<12} {r['novel'] or '-':<5}  {r['decomposition']}")
    print("e_hull: eV/atom above the oracle-consistent hull (known phases relaxed by the same MLIP); "
          "e_hull_dft: above the DFT reference hull (MP energies)")


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)  # an interrupted write leaves the previous table, not half a new one


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `xtalforge hull` on the main parser's subcommands."""
    from xtalforge.references.relaxed import MAX_SITES

    h = sub.add_parser("hull", help="place structures on the hulls of a chemical system's known phases",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_argument("files", nargs="+", metavar="FILE", help="structure files (CIF, POSCAR, ...)")
    h.add_argument("--chemsys", required=True, help="chemical system, e.g. Ca-Ti-O")
    h.add_argument("--out", help="CSV to write: " + ", ".join(COLUMNS))
    h.add_argument("--no-relax", action="store_true",
                   help="MLIP energy of the structures as given (known phases are still relaxed, once, into the cache)")
    h.add_argument("--references", nargs="+", metavar="SOURCE",
                   help="snapshot (the shipped MP snapshot), mp-api (needs MP_API_KEY), or reference files "
                        "(CIF, entries CSV/JSON); default: mp-api with MP_API_KEY set, else snapshot")
    h.add_argument("--exclude-chemsys", nargs="*", default=[], metavar="SYS",
                   help="hide every known phase of these systems (e.g. Ca-Ti-O)")
    h.add_argument("--model", default="chgnet", help="'chgnet' or 'ase:package.module.Class'")
    h.add_argument("--fmax", type=float, default=0.1, help="force convergence, eV/Å (the campaign default)")
    h.add_argument("--max-steps", type=int, default=300)
    h.add_argument("--max-sites", type=int, default=MAX_SITES, help="largest known phase relaxed into the hull")
    h.add_argument("--cache-dir", help="relaxed known phases (default: ~/.cache/xtalforge/known_relaxed)")
    h.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    h.set_defaults(fn=run)
