"""Energies on the Materials Project scale and the convex hull of a chemical system.

CHGNet is trained on MPtrj (raw VASP GGA/GGA+U energies), so its energies become comparable
to Materials Project's hull once the MP2020 anion and +U corrections are applied, as Matbench
Discovery does. Pure elements need no correction; the shipped elemental references are raw.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry


@lru_cache(maxsize=1)
def _elemental_ref_dicts() -> dict:
    with resources.files("xtalforge.data").joinpath("mp_elemental_refs.json.gz").open("rb") as fh:
        return json.loads(gzip.decompress(fh.read()))


def elemental_references(elements: Iterable[str] | None = None) -> dict[str, ComputedEntry]:
    """MP's lowest-energy unary entries (raw PBE, eV per cell); CC BY 4.0, see data/ATTRIBUTION.md."""
    d = _elemental_ref_dicts()
    keys = list(d) if elements is None else list(elements)
    missing = [e for e in keys if e not in d]
    if missing:
        raise KeyError(f"no Materials Project elemental reference for {', '.join(missing)}")
    return {e: ComputedEntry.from_dict(d[e]) for e in keys}


@lru_cache(maxsize=1)
def _mp2020():
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(check_potcar=False)


def mp2020_entry(structure: Structure, energy: float, entry_id: str = "", apply: bool = True) -> ComputedStructureEntry:
    """A ComputedStructureEntry for an MLIP total energy (eV per cell), MP2020-corrected.

    The run type mirrors what MP would have used: GGA+U when the structure holds O or F together
    with one of MP's +U metals (Co, Cr, Fe, Mn, Mo, Ni, V, W), else GGA. The entry is returned
    uncorrected if MP2020 rejects it (e.g. an unsupported oxidation state)."""
    compat = _mp2020()
    structure = structure.copy()
    structure.remove_oxidation_states()  # hull terminals are neutral elements, not Sr2+ ions
    els = {e.symbol for e in structure.composition.elements}
    hubbards: dict[str, float] = {}
    for anion in ("O", "F"):
        if anion in els:
            hubbards = {el: u for el, u in compat.u_settings[anion].items() if el in els}
            break
    params = {
        "run_type": "GGA+U" if hubbards else "GGA",
        "is_hubbard": bool(hubbards),
        "hubbards": hubbards,
        "potcar_symbols": [],
    }
    entry = ComputedStructureEntry(structure, energy, parameters=params, entry_id=entry_id or None)
    if not apply:
        return entry
    try:
        out = compat.process_entry(entry, clean=True, inplace=False)
    except Exception:
        out = None
    return out if out is not None else entry


def load_reference_entries(path: str | Path) -> list[PDEntry]:
    """Reference entries from a file.

    - JSON: a list of pymatgen ComputedEntry / ComputedStructureEntry / PDEntry dicts;
    - CSV with `formula` and `energy` (eV per formula as written) or `energy_per_atom` columns;
    - pymatgen's PDEntry CSV (`Name`, element columns, `Final energy`).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reference file {p} does not exist")
    if p.suffix.lower() in (".json", ".gz"):
        raw = p.read_bytes()
        data = json.loads(gzip.decompress(raw) if p.suffix.lower() == ".gz" else raw)
        items = data.values() if isinstance(data, dict) else data
        out: list[PDEntry] = []
        for i, d in enumerate(items):
            cls = d.get("@class", "ComputedEntry")
            kind = {"ComputedStructureEntry": ComputedStructureEntry, "PDEntry": PDEntry}.get(cls, ComputedEntry)
            try:
                out.append(kind.from_dict(d))
            except Exception as err:
                raise ValueError(f"{p}: entry {i} is not a pymatgen entry ({err})") from None
        return out
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{p}: no rows")
    cols = set(rows[0])
    if "Final energy" in cols:
        from pymatgen.entries.entry_tools import EntrySet

        return list(EntrySet.from_csv(str(p)))
    if "formula" not in cols or not ({"energy", "energy_per_atom"} & cols):
        raise ValueError(f"{p}: need columns formula and energy (or energy_per_atom), got {sorted(cols)}")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            comp = Composition(r["formula"])
            e = float(r["energy"]) if r.get("energy") not in (None, "") else float(r["energy_per_atom"]) * comp.num_atoms
        except Exception as err:
            raise ValueError(f"{p} line {i}: {err}") from None
        if not math.isfinite(e):
            raise ValueError(f"{p} line {i}: energy is not finite")
        out.append(PDEntry(comp, e, name=r.get("name") or r["formula"]))
    return out


class Hull:
    """The convex hull of a chemical system from reference entries plus the campaign's own."""

    def __init__(self, elements: Sequence[str], references: Sequence[PDEntry] = (), use_mp_elements: bool = True):
        self.elements = tuple(elements)
        base: list[PDEntry] = []
        if use_mp_elements:
            base.extend(elemental_references(self.elements).values())
        base.extend(e for e in references if set(e.composition.chemical_system.split("-")) <= set(self.elements))
        self.references = base
        self.campaign: dict[str, PDEntry] = {}
        self._pd: PhaseDiagram | None = None

    def add(self, key: str, entry: PDEntry) -> None:
        self.campaign[key] = entry
        self._pd = None

    @property
    def phase_diagram(self) -> PhaseDiagram:
        if self._pd is None:
            self._pd = PhaseDiagram(self.references + list(self.campaign.values()), elements=None)
        return self._pd

    def e_above_hull(self, entry: PDEntry) -> float:
        """eV/atom above the hull (negative: below the hull of everything else)."""
        pd = self.phase_diagram
        try:
            return float(pd.get_e_above_hull(entry, allow_negative=True))
        except Exception:
            return float(pd.get_decomp_and_e_above_hull(entry, allow_negative=True)[1])

    def e_form_per_atom(self, entry: PDEntry) -> float:
        return float(self.phase_diagram.get_form_energy_per_atom(entry))

    def stable_keys(self, threshold: float = 0.0) -> list[str]:
        return [k for k, e in self.campaign.items() if self.e_above_hull(e) <= threshold + 1e-9]

    def all_e_above_hull(self) -> dict[str, float]:
        return {k: self.e_above_hull(e) for k, e in self.campaign.items()}
