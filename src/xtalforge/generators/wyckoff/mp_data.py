"""Known crystals from the Materials Project for pre-training, with a split by composition.

The split is a pure function of the reduced formula and a seed: each composition gets a stable
number in [0, 1) from SHA-256 of "seed:formula", and the number decides train / val / test. All
polymorphs of a composition therefore land in one split (random splits of MP-20 put polymorphs
of one composition in train and test and inflate match rates), and adding or removing rows never
moves a composition between splits.

Data: the Materials Project (CC BY 4.0; A. Jain et al., APL Materials 1, 011002 (2013)).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from xtalforge.generators.wyckoff.encoding import CrystalSeq, encode
from xtalforge.generators.wyckoff.tables import WyckoffTables

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
ATTRIBUTION = ("Materials Project (CC BY 4.0): A. Jain et al., APL Materials 1, 011002 (2013); "
               "structures via kdmsit/crysxpp (MIT)")


def chemsys_of(formula: str) -> str:
    """'BaZrO3' -> 'Ba-O-Zr' (elements sorted alphabetically, as MP writes chemical systems)."""
    from pymatgen.core import Composition

    return "-".join(sorted(el.symbol for el in Composition(formula).elements))


def normalise_chemsys(text: str) -> str:
    """'Zr-Ba-O' or 'Ba,Zr,O' -> 'Ba-O-Zr'; raises ValueError for a symbol that is not an element."""
    from pymatgen.core import Element

    parts = [p.strip() for p in text.replace(",", "-").split("-") if p.strip()]
    if not parts:
        raise ValueError(f"empty chemical system: {text!r}")
    for p in parts:
        if not Element.is_valid_symbol(p):
            raise ValueError(f"not an element symbol: {p!r} in {text!r}")
    return "-".join(sorted(set(parts)))


def split_of(reduced_formula: str, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """'train', 'val' or 'test' for a composition, fixed by the formula and the seed alone."""
    h = hashlib.sha256(f"{seed}:{reduced_formula}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


@dataclass
class MPEntry:
    material_id: str
    reduced_formula: str
    chemsys: str
    nsites: int
    split: str
    cif: str


def read_mp(path: str | Path, max_atoms: int = 20, seed: int = 0,
            fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
            exclude_chemsys: Iterable[str] = ()) -> tuple[list[MPEntry], list[str]]:
    """Entries of `mp_structures.csv.gz` with at most `max_atoms` sites, each with its split.

    exclude_chemsys: systems (e.g. 'Ba-O-Zr') whose compounds are left out, those of every
    subsystem included (BaO, ZrO2, BaZrO3, ...), so a leave-system-out benchmark sees none of
    its known compounds; the pure elements stay, as they stay in every reference hull.
    Returns the entries and the excluded material ids."""
    import pandas as pd

    df = pd.read_csv(path, usecols=["material_id", "reduced_formula", "nsites", "cif"])
    df = df[df["nsites"] <= max_atoms]
    hidden = [set(normalise_chemsys(c).split("-")) for c in exclude_chemsys]
    out, dropped = [], []
    for row in df.itertuples(index=False):
        cs = chemsys_of(row.reduced_formula)
        els = set(cs.split("-"))
        if len(els) >= 2 and any(els <= h for h in hidden):
            dropped.append(row.material_id)
            continue
        out.append(MPEntry(row.material_id, row.reduced_formula, cs, int(row.nsites),
                           split_of(row.reduced_formula, seed, fractions), row.cif))
    return out, dropped


def encode_entries(entries: list[MPEntry], tables: WyckoffTables, tol: float = 0.01,
                   cache: str | Path | None = None, progress: bool = False) -> dict[str, CrystalSeq]:
    """Wyckoff sequences by material id. With `cache` (a JSON file keyed by material id and
    tol), structures encoded before are read back instead of re-analysed (about 40 ms each)."""
    from pymatgen.core import Structure
    from tqdm import tqdm

    from xtalforge.generators.wyckoff.train import quiet_stderr

    known: dict[str, dict | None] = {}
    cache = Path(cache) if cache else None
    if cache is not None and cache.is_file():
        blob = json.loads(cache.read_text())
        if blob.get("tol") == tol:
            known = blob["seqs"]
    todo = [e for e in entries if e.material_id not in known]
    for i, e in enumerate(tqdm(todo, desc="encode", disable=not progress, mininterval=2.0)):
        try:
            with warnings.catch_warnings(), quiet_stderr():
                warnings.simplefilter("ignore")  # CIF rounding notes, one per structure
                s = Structure.from_str(e.cif, fmt="cif")
                q = encode(s, tables, tol=tol)
        except Exception as err:  # a CIF pymatgen cannot read
            log.debug("%s: %s", e.material_id, err)
            q = None
        known[e.material_id] = None if q is None else q.to_json()
        if cache is not None and (i + 1) % 2000 == 0:  # a long first run keeps its progress
            _write_cache(cache, tol, known)
    if cache is not None and todo:
        _write_cache(cache, tol, known)
    return {e.material_id: CrystalSeq.from_json(known[e.material_id]) for e in entries
            if known.get(e.material_id) is not None}


def _write_cache(cache: Path, tol: float, seqs: dict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tol": tol, "seqs": seqs}))
    tmp.replace(cache)


__all__ = ["ATTRIBUTION", "DEFAULT_FRACTIONS", "MPEntry", "SPLITS", "chemsys_of", "encode_entries",
           "normalise_chemsys", "read_mp", "split_of"]
