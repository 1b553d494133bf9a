"""Known phases of a chemical system, from the shipped snapshot, mp-api, or user files.

Energies are on the Materials Project scale: total energy per atom = formation energy per atom
+ sum over elements of (atomic fraction x MP elemental reference energy per atom), with the MP
elemental references shipped in `xtalforge/data/mp_elemental_refs.json.gz`. That is the scale
MP serves corrected GGA/GGA+U energies on, and the one CHGNet predicts (it learned MPtrj's
corrected labels).

Sources, named in `load_known(..., sources=[...])`:
- "snapshot": the offline snapshot shipped in the package (see data/references/ATTRIBUTION.md):
  MP-20's formation energies for all its 36,681 entries plus MP structures with energies; not
  all of MP, so a phase missing from it may still be known.
- "mp-api": the system's entries from the Materials Project (needs MP_API_KEY and mp-api);
  cached, so the network is used once per system.
- a file or folder: CIF/POSCAR structures (novelty references, and relaxed into the
  oracle-consistent hull) or entry files as `hull.load_reference_entries` reads them (CSV or
  JSON, energies in eV on the MP scale).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pymatgen.core import Composition, Element, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from xtalforge.references.hull import elemental_references, fetch_mp_entries, load_reference_entries
from xtalforge.references.snapshot import Snapshot, chemsys_of

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot"
MP_API = "mp-api"
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
SNAPSHOT_CITATION = ("Materials Project (CC BY 4.0; A. Jain et al., APL Materials 1, 011002 (2013)), "
                     "MP-20 formation energies and MP structures")


class KnownMaterialsError(ValueError):
    """A reference source cannot be used; the message is one line a user can act on."""


@dataclass(frozen=True)
class KnownPhase:
    """A known material: `energy_per_atom` in eV/atom on the MP scale (NaN when only the
    structure is known: a novelty reference that can still be relaxed into the MLIP's hull)."""

    material_id: str
    composition: Composition
    energy_per_atom: float
    structure: Structure | None = None
    spacegroup: str = ""
    source: str = ""

    @property
    def formula(self) -> str:
        """Reduced formula, e.g. CaTiO3."""
        return self.composition.reduced_formula

    @property
    def chemsys(self) -> str:
        return chemsys_of([e.symbol for e in self.composition.elements])

    @property
    def nsites(self) -> int:
        return len(self.structure) if self.structure is not None else int(round(self.composition.num_atoms))

    @property
    def has_energy(self) -> bool:
        return math.isfinite(self.energy_per_atom)

    def entry(self) -> ComputedEntry:
        """A pymatgen entry with this phase's MP-scale total energy (eV per cell) and
        `entry_id` = material id; a ComputedStructureEntry when the structure is known."""
        if self.structure is not None:
            return ComputedStructureEntry(self.structure, self.energy_per_atom * len(self.structure),
                                          entry_id=self.material_id)
        return ComputedEntry(self.composition, self.energy_per_atom * self.composition.num_atoms,
                             entry_id=self.material_id)


@dataclass
class KnownSet:
    """The known phases of a chemical system and all its subsystems, and where they came from."""

    elements: tuple[str, ...]
    phases: list[KnownPhase]
    sources: list[str] = field(default_factory=list)  # one line per source actually used
    warnings: list[str] = field(default_factory=list)

    @property
    def chemsys(self) -> str:
        return chemsys_of(self.elements)

    def with_energy(self) -> list[KnownPhase]:
        return [p for p in self.phases if p.has_energy]

    def with_structure(self) -> list[KnownPhase]:
        return [p for p in self.phases if p.structure is not None]

    def by_id(self) -> dict[str, KnownPhase]:
        return {p.material_id: p for p in self.phases}


@lru_cache(maxsize=1)
def shipped_snapshot() -> Snapshot:
    """The package's snapshot, read once per process (about 0.2 s)."""
    return Snapshot.read()


def default_sources() -> list[str]:
    """mp-api when MP_API_KEY is set (falling back to the snapshot), else the snapshot."""
    return [MP_API] if os.environ.get("MP_API_KEY") else [SNAPSHOT]


def parse_chemsys(chemsys: str | Sequence[str]) -> tuple[str, ...]:
    """('Ca', 'O', 'Ti') from 'Ca-Ti-O' or ['Ti', 'Ca', 'O']; raises KnownMaterialsError for an
    unknown symbol or an element without an MP elemental reference (no energy scale)."""
    parts = chemsys.replace(" ", "").split("-") if isinstance(chemsys, str) else list(chemsys)
    parts = [p for p in parts if p]
    if not parts:
        raise KnownMaterialsError("empty chemical system: give it as e.g. Ca-Ti-O")
    bad = [p for p in parts if not Element.is_valid_symbol(p)]
    if bad:
        raise KnownMaterialsError(f"chemical system {'-'.join(parts)}: {', '.join(bad)} is not an element")
    try:
        elemental_references(parts)
    except KeyError as err:
        raise KnownMaterialsError(f"chemical system {'-'.join(parts)}: {err.args[0]}") from None
    return tuple(sorted(set(parts)))


def load_known(chemsys: str | Sequence[str], sources: Sequence[str | Path] | None = None, *,
               exclude_chemsys: Sequence[str] = (), strict: bool = False, snapshot: Snapshot | None = None,
               mp_cache_dir: str | Path = "runs/mp_cache") -> KnownSet:
    """The known phases of `chemsys` (e.g. 'Ca-Ti-O') and every subsystem (Ca, Ti, O, Ca-O, ...).

    `sources`: "snapshot", "mp-api", or paths of user files/folders (None: `default_sources()`).
    `exclude_chemsys`: systems whose entries are hidden from every source (exact system, e.g.
    'Ca-Ti-O' hides CaTiO3 and Ca3Ti2O7 but keeps CaO and TiO2), for leave-system-out runs.
    `strict`: an mp-api failure raises KnownMaterialsError; otherwise it falls back to the snapshot
    with a warning (logged and listed in `.warnings`). A broken user file always raises.
    The same material id from two sources is kept once, from the first source listed."""
    elements = parse_chemsys(chemsys)
    excluded = {chemsys_of(c.replace(" ", "").split("-")) for c in exclude_chemsys}
    todo = list(default_sources() if sources is None else sources)
    out = KnownSet(elements, [])
    seen: set[str] = set()

    def take(phases: list[KnownPhase], label: str) -> None:
        kept = [p for p in phases if p.material_id not in seen and p.chemsys not in excluded
                and set(p.chemsys.split("-")) <= set(elements)]
        seen.update(p.material_id for p in kept)
        out.phases.extend(kept)
        hidden = sum(p.chemsys in excluded for p in phases)
        n_struct = sum(p.structure is not None for p in kept)
        out.sources.append(f"{label}: {len(kept)} phases ({n_struct} with structures)"
                           + (f", {hidden} hidden (excluded systems)" if hidden else ""))

    i = 0
    while i < len(todo):
        src = todo[i]
        i += 1
        if src == SNAPSHOT:
            snap = snapshot or shipped_snapshot()
            take(_from_snapshot(snap, elements), f"snapshot ({SNAPSHOT_CITATION}; not all of MP)")
        elif src == MP_API:
            try:
                phases = _from_mp_api(elements, mp_cache_dir)
            except Exception as err:
                why = f"mp-api: {type(err).__name__ if not str(err) else ''}{err}".strip()
                if strict:
                    raise KnownMaterialsError(why) from None
                msg = f"{why}; using the shipped snapshot instead"
                log.warning(msg)
                out.warnings.append(msg)
                if SNAPSHOT not in todo:
                    todo.append(SNAPSHOT)
                continue
            take(phases, "Materials Project via mp-api (CC BY 4.0)")
        else:
            take(_from_user_path(Path(src)), f"user file {src}")
    return out


def _from_snapshot(snap: Snapshot, elements: Sequence[str]) -> list[KnownPhase]:
    mu = {k: v.energy_per_atom for k, v in elemental_references(elements).items()}
    out = []
    for r in snap.rows(elements):
        comp = Composition(r.formula)
        e = r.e_form_per_atom + sum(comp.get_atomic_fraction(el) * mu[el.symbol] for el in comp.elements)
        out.append(KnownPhase(r.material_id, comp, e, snap.structure(r.structure), r.spacegroup, r.source))
    return out


def _mp_material_id(entry) -> str:
    mid = (getattr(entry, "data", None) or {}).get("material_id") or entry.entry_id or ""
    for suffix in ("-GGA+U", "-GGA", "-R2SCAN"):
        if str(mid).endswith(suffix):
            return str(mid)[: -len(suffix)]
    return str(mid)


def _from_mp_api(elements: Sequence[str], cache_dir: str | Path) -> list[KnownPhase]:
    best: dict[str, KnownPhase] = {}
    for e in fetch_mp_entries(list(elements), cache_dir):
        mid = _mp_material_id(e)
        structure = getattr(e, "structure", None)
        p = KnownPhase(mid, e.composition, float(e.energy_per_atom), structure, "", MP_API)
        if mid not in best or p.energy_per_atom < best[mid].energy_per_atom:
            best[mid] = p
    return list(best.values())


def _from_user_path(path: Path) -> list[KnownPhase]:
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in STRUCTURE_SUFFIXES)
        if not files:
            raise KnownMaterialsError(f"{path}: no structure files (.cif, .vasp, .poscar) in this folder")
        return [p for f in files for p in _from_user_path(f)]
    if not path.is_file():
        raise KnownMaterialsError(f"{path}: no such reference file")
    name = path.name.lower()
    if name.endswith((".csv", ".json", ".json.gz")):
        try:
            entries = load_reference_entries(path)
        except (ValueError, OSError) as err:
            raise KnownMaterialsError(str(err)) from None
        out = []
        used: set[str] = set()
        for i, e in enumerate(entries):
            mid = getattr(e, "entry_id", None) or f"{path.stem}:{getattr(e, 'name', '') or i + 1}"
            mid = str(mid) if str(mid) not in used else f"{mid}#{i + 1}"  # two CaO rows stay two phases
            used.add(mid)
            out.append(KnownPhase(mid, e.composition, float(e.energy_per_atom), getattr(e, "structure", None),
                                  "", str(path)))
        return out
    try:
        s = Structure.from_file(path)
    except Exception as err:
        raise KnownMaterialsError(f"{path}: not a readable structure ({type(err).__name__}: {err})") from None
    s.remove_oxidation_states()
    return [KnownPhase(path.stem, s.composition, math.nan, s, "", str(path))]
