"""The shipped snapshot of known materials: its file format, read and written here only.

Two files in `xtalforge/data/references/` (built by `python -m xtalforge.references.build_snapshot`):

- `mp_known_entries.csv.gz`: one row per Materials Project entry: `material_id, formula` (cell
  formula, e.g. `Ca4O4`), `chemsys` (`Ca-O`, elements sorted), `nsites, spacegroup` (symbol, or
  empty when the source gave none), `e_form_per_atom` (eV/atom against MP's elemental
  references), `e_above_hull` (eV/atom, against the snapshot's own DFT hull when it was built),
  `source` (`mp20` or `mp_structures`), `structure` (row in the structure arrays, -1 for none).
- `mp_known_structures.npz`: the structures as arrays, so a chemical system's few structures are
  built without parsing anything else: `lattice` (n, 6) float32 a, b, c (Å), alpha, beta, gamma
  (degrees); `offsets` (n + 1) int64 into the site arrays; `numbers` uint8 atomic numbers;
  `frac` uint16 fractional coordinates in units of 1/65536 (0.0002 Å in a 10 Å cell).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import combinations
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

ENTRIES_FILE = "mp_known_entries.csv.gz"
STRUCTURES_FILE = "mp_known_structures.npz"
COLUMNS = ["material_id", "formula", "chemsys", "nsites", "spacegroup", "e_form_per_atom", "e_above_hull",
           "source", "structure"]
FRAC_SCALE = 65536


@dataclass(frozen=True)
class SnapshotRow:
    """One shipped entry; energies eV/atom, `structure` an index into the arrays or -1."""

    material_id: str
    formula: str
    chemsys: str
    nsites: int
    spacegroup: str
    e_form_per_atom: float
    e_above_hull: float
    source: str
    structure: int


def chemsys_of(elements: Sequence[str]) -> str:
    """'Ca-O-Ti' for any order or repetition of Ca, Ti, O (pymatgen's convention: sorted)."""
    return "-".join(sorted(set(elements)))


def subsystems(elements: Sequence[str]) -> list[str]:
    """Every chemical system made of a non-empty subset of `elements` (7 for a ternary)."""
    els = sorted(set(elements))
    return ["-".join(c) for k in range(1, len(els) + 1) for c in combinations(els, k)]


class Snapshot:
    """The shipped entries indexed by chemical system; structures decoded on request."""

    def __init__(self, lines: dict[str, list[str]], arrays: dict[str, np.ndarray] | None, origin: str):
        # rows stay CSV text until a system asks for them: parsing all 58,000 costs 0.3 s
        self._lines = lines
        self._arrays = arrays
        self.origin = origin
        self.size = sum(len(v) for v in lines.values())
        self.n_structures = 0 if arrays is None else len(arrays["lattice"])

    @classmethod
    def read(cls, folder: str | Path | None = None) -> Snapshot:
        """Read the snapshot from `folder` (default: the one shipped in the package)."""
        if folder is None:
            base = resources.files("xtalforge.data").joinpath("references")
            origin = "shipped"
        else:
            base = Path(folder)
            origin = str(folder)
        with base.joinpath(ENTRIES_FILE).open("rb") as fh:
            text = gzip.decompress(fh.read()).decode()
        lines: dict[str, list[str]] = defaultdict(list)
        header, _, body = text.partition("\n")
        if header.split(",") != COLUMNS:
            raise ValueError(f"{origin}/{ENTRIES_FILE}: columns {header!r}, expected {','.join(COLUMNS)}")
        for line in body.splitlines():
            if line:
                lines[line.split(",", 3)[2]].append(line)
        arrays = None
        s_path = base.joinpath(STRUCTURES_FILE)
        if s_path.is_file():
            with s_path.open("rb") as fh, np.load(io.BytesIO(fh.read())) as z:
                arrays = {k: z[k] for k in ("lattice", "offsets", "numbers", "frac")}
        return cls(dict(lines), arrays, origin)

    def chemical_systems(self) -> list[str]:
        return sorted(self._lines)

    def rows(self, elements: Sequence[str]) -> list[SnapshotRow]:
        """Entries of the chemical system of `elements` and of all its subsystems."""
        out = []
        for cs in subsystems(elements):
            for r in csv.reader(self._lines.get(cs, ())):
                out.append(SnapshotRow(r[0], r[1], r[2], int(r[3]), r[4], float(r[5]), float(r[6]), r[7], int(r[8])))
        return out

    def structure(self, index: int) -> Structure | None:
        if index < 0 or self._arrays is None:
            return None
        a = self._arrays
        lo, hi = int(a["offsets"][index]), int(a["offsets"][index + 1])
        lat = Lattice.from_parameters(*(float(x) for x in a["lattice"][index]))
        frac = a["frac"][lo:hi].astype(np.float64) / FRAC_SCALE
        return Structure(lat, [int(z) for z in a["numbers"][lo:hi]], frac)


def write_snapshot(folder: str | Path, rows: Sequence[SnapshotRow], structures: Sequence[Structure]) -> None:
    """Write the two snapshot files; `rows[i].structure` indexes `structures`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r.material_id, r.formula, r.chemsys, r.nsites, r.spacegroup, f"{r.e_form_per_atom:.6f}",
                    f"{r.e_above_hull:.4f}", r.source, r.structure])
    # mtime=0: the same input gives a byte-identical entries file, so a rebuild shows no spurious diff
    (folder / ENTRIES_FILE).write_bytes(gzip.compress(buf.getvalue().encode(), compresslevel=9, mtime=0))
    lattice = np.array([s.lattice.parameters for s in structures], dtype=np.float32).reshape(-1, 6)
    counts = np.array([len(s) for s in structures], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    numbers = np.array([sp.Z for s in structures for sp in s.species], dtype=np.uint8)
    frac = np.concatenate([np.mod(s.frac_coords, 1.0) for s in structures]) if structures else np.zeros((0, 3))
    q = np.rint(frac * FRAC_SCALE).astype(np.int64) % FRAC_SCALE
    np.savez_compressed(folder / STRUCTURES_FILE, lattice=lattice, offsets=offsets, numbers=numbers,
                        frac=q.astype(np.uint16))
