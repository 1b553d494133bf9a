"""Reading the tables a user hands the synthesizability model: CSVs of formulas or CIFs.

A table has a `formula` column or a `cif` column (CIF text, as in the CDVAE-style CSVs); a
folder of .cif files also works. Errors name the file and line, so a user can fix the row.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pymatgen.core import Composition

from xtalforge.synthesis.composition import parse_formula

_MAX_ERRORS_SHOWN = 5


class TableError(ValueError):
    """A table that cannot be used; `problems` holds one line per bad row or column."""

    def __init__(self, problems: list[str]):
        shown = problems[:_MAX_ERRORS_SHOWN]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more bad rows")
        super().__init__("\n".join(shown))
        self.problems = shown


@dataclass
class Table:
    path: Path
    columns: list[str]
    rows: list[dict[str, str]]
    compositions: list[Composition] = field(default_factory=list)
    source_column: str = "formula"


def _cif_composition(text: str) -> Composition:
    import warnings

    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structs = CifParser.from_str(text).parse_structures(primitive=False)
    if not structs:
        raise ValueError("no structure in the CIF")
    return structs[0].composition.element_composition


def read_table(path: str | Path) -> Table:
    """Rows of a CSV (or the CIFs of a folder) with one composition per row.

    `formula` wins over `cif` when both columns exist (it is cheaper and what the user wrote)."""
    p = Path(path)
    if p.is_dir():
        return _read_cif_folder(p)
    if not p.is_file():
        raise TableError([f"{p}: no such file"])
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # CIF cells are long
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows, lines = [], []
            for r in reader:
                rows.append(r)
                lines.append(reader.line_num)  # last line of the record: CIF cells span lines
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise TableError([f"{p}: not a readable CSV ({err})"]) from None
    lower = {c.strip().lower(): c for c in columns if c is not None}
    col = lower.get("formula") or lower.get("cif")
    if col is None:
        raise TableError([f"{p}: needs a 'formula' or a 'cif' column; found {', '.join(columns) or 'no header'}"])
    if not rows:
        raise TableError([f"{p}: no rows under the header"])
    kind = "formula" if col == lower.get("formula") else "cif"
    comps, problems = [], []
    for i, (r, line) in enumerate(zip(rows, lines), start=1):
        text = (r.get(col) or "").strip()
        try:
            comps.append(parse_formula(text) if kind == "formula" else _cif_composition(text))
        except Exception as err:
            what = f"formula {text!r}" if kind == "formula" else "CIF"
            problems.append(f"{p}: row {i} (line {line}): unparsable {what}: {err}")
    if problems:
        raise TableError(problems)
    return Table(p, columns, rows, comps, col)


def _read_cif_folder(p: Path) -> Table:
    files = sorted(p.glob("*.cif"))
    if not files:
        raise TableError([f"{p}: folder holds no .cif files"])
    comps, rows, problems = [], [], []
    for f in files:
        try:
            comps.append(_cif_composition(f.read_text()))
            rows.append({"file": f.name, "formula": comps[-1].reduced_formula})
        except Exception as err:
            problems.append(f"{f}: unparsable CIF: {err}")
    if problems:
        raise TableError(problems)
    return Table(p, ["file", "formula"], rows, comps, "formula")


def write_table(path: str | Path, columns: list[str], rows: list[dict]) -> Path:
    """CSV with `columns` in order; extra keys in rows are ignored."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return p
