"""Energies on the Materials Project scale and the convex hull of a chemical system.

CHGNet is trained on MPtrj (raw VASP GGA/GGA+U energies), so its energies become comparable
to Materials Project's hull once the MP2020 anion and +U corrections are applied, as Matbench
Discovery does. Pure elements need no correction; the shipped elemental references are raw.

Reference entries combine: the shipped MP elemental references (always, unless a hull is built
for another energy scale), user files (`load_reference_entries`), the chemical system's MP
entries fetched once with mp-api and cached (`fetch_mp_entries`, only with MP_API_KEY), and
every structure the campaign relaxes (`Hull.add`). `gather_references` reads the first three.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

log = logging.getLogger(__name__)


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


def mp_run_parameters(structure: Structure) -> dict:
    """The VASP run parameters Materials Project would have used for this composition.

    MP (MPRelaxSet, and MP2020's check of them) applies +U to Co, Cr, Fe, Mn, Mo, Ni, V, W only
    when the most electronegative element is O or F; everything else is plain GGA. CHGNet, fitted
    to MPtrj, predicts energies on that mixed GGA/GGA+U scale."""
    compat = _mp2020()
    comp = structure.composition.element_composition
    most_electroneg = max(comp.elements, key=lambda el: el.X).symbol
    u_table = compat.u_settings.get(most_electroneg, {})
    hubbards = {el.symbol: float(u_table[el.symbol]) for el in comp.elements if el.symbol in u_table}
    return {"run_type": "GGA+U" if hubbards else "GGA", "is_hubbard": bool(hubbards), "hubbards": hubbards,
            "potcar_symbols": []}


def mp2020_entry(structure: Structure, energy: float, entry_id: str = "", apply: bool = True) -> ComputedStructureEntry:
    """A ComputedStructureEntry for an MLIP total energy (eV per cell), MP2020-corrected as
    Matbench Discovery corrects MLIP energies.

    The relaxed structure goes into the entry, so MP2020 detects the anion type from geometry
    (oxide / peroxide / superoxide / ozonide by O-O distance, sulfide vs sulfate by S's
    neighbours) and guesses oxidation states from the composition for the F, Cl, N, H, ...
    anion corrections; oxidation-state decorations on the sites are removed first (the hull's
    terminals are neutral elements, and a composition of Sr2+ ions would hide Element("Sr")).
    The entry comes back uncorrected, with a warning, if MP2020 rejects it."""
    compat = _mp2020()
    structure = structure.copy()
    structure.remove_oxidation_states()
    entry = ComputedStructureEntry(structure, energy, parameters=mp_run_parameters(structure),
                                   entry_id=entry_id or None)
    if not apply:
        return entry
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "failed to guess oxidation states" is handled by MP2020 itself
            out = compat.process_entry(entry, clean=True, inplace=False)
    except Exception as err:
        log.warning("MP2020 failed on %s (%s): %s", entry_id, structure.composition.reduced_formula, err)
        out = None
    if out is None:
        log.warning("MP2020 rejected %s (%s); its energy stays uncorrected", entry_id,
                    structure.composition.reduced_formula)
    return out if out is not None else entry


def load_reference_entries(path: str | Path) -> list[PDEntry]:
    """Reference entries from a file, energies taken as written (eV; put them on the hull's
    scale first: MP-compatible means raw GGA/GGA+U plus MP2020 corrections, as MP serves them).

    - JSON (optionally .gz): a list of pymatgen ComputedEntry / ComputedStructureEntry / PDEntry
      dicts, a dict of them keyed by id, {"entries": [...]}, or a single entry dict;
    - CSV with `formula` and `energy` (eV per formula as written) or `energy_per_atom` columns,
      and an optional `name`;
    - pymatgen's PDEntry CSV (`Name`, element columns, `Final energy`).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reference file {p} does not exist")
    if p.suffix.lower() in (".json", ".gz"):
        return _entries_from_json(p)
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


def _entries_from_json(p: Path) -> list[PDEntry]:
    from monty.json import MontyDecoder

    raw = p.read_bytes()
    try:
        data = json.loads(gzip.decompress(raw) if p.suffix.lower() == ".gz" else raw)
    except (OSError, ValueError) as err:
        raise ValueError(f"{p}: not JSON ({err})") from None
    if isinstance(data, dict):
        if "@class" in data:
            data = [data]
        elif isinstance(data.get("entries"), list):
            data = data["entries"]
        else:
            data = list(data.values())
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a list of pymatgen entries")
    decoder = MontyDecoder()
    out: list[PDEntry] = []
    for i, d in enumerate(data):
        try:
            entry = decoder.process_decoded(d)
        except Exception as err:
            raise ValueError(f"{p}: entry {i} is not a pymatgen entry ({type(err).__name__}: {err})") from None
        if not isinstance(entry, PDEntry | ComputedEntry):
            raise ValueError(f"{p}: entry {i} is not a pymatgen entry (got {type(entry).__name__})")
        if not math.isfinite(entry.energy):
            raise ValueError(f"{p}: entry {i} has a non-finite energy")
        out.append(entry)
    return out


def fetch_mp_entries(elements: Sequence[str], cache_dir: str | Path, api_key: str | None = None) -> list[ComputedStructureEntry]:
    """Materials Project entries of the chemical system (MP2020-corrected GGA/GGA+U mixing, as MP
    serves them), fetched once with mp-api and cached to `cache_dir`/mp_entries_<chemsys>.json.gz.

    With the cache present nothing touches the network. Otherwise it needs MP_API_KEY (or
    `api_key`) and the mp-api package; without either it raises RuntimeError saying which."""
    chemsys = "-".join(sorted(elements))
    cache = Path(cache_dir) / f"mp_entries_{chemsys}.json.gz"
    if cache.is_file():
        return [ComputedStructureEntry.from_dict(d) for d in json.loads(gzip.decompress(cache.read_bytes()))]
    key = api_key or os.environ.get("MP_API_KEY")
    if not key:
        raise RuntimeError("Materials Project references need an API key: set MP_API_KEY "
                           "(https://next-gen.materialsproject.org/api)")
    try:
        from mp_api.client import MPRester
    except ImportError:
        raise RuntimeError("Materials Project references need the mp-api package: "
                           "pip install 'xtalforge[mp]' (or pip install mp-api)") from None
    with MPRester(key) as mpr:
        entries = mpr.get_entries_in_chemsys(list(elements), additional_criteria={"thermo_types": ["GGA_GGA+U"]})
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(json.dumps([e.as_dict() for e in entries], default=str).encode()))
    tmp.replace(cache)  # a crash mid-write must not leave a truncated cache behind
    return list(entries)


def gather_references(elements: Sequence[str], files: Sequence[str | Path] = (), mp_api: bool | None = None,
                      cache_dir: str | Path = "runs/mp_cache") -> list[PDEntry]:
    """Reference entries from every configured source, to pass to `Hull` (which adds the
    shipped MP elemental references itself, and the campaign's own relaxations as they land).

    `mp_api`: True requires the Materials Project fetch; None uses it only when MP_API_KEY is
    set (or a cache exists) and logs why not otherwise; False never does."""
    refs: list[PDEntry] = []
    for f in files:
        refs.extend(load_reference_entries(f))
    if mp_api is False:
        return refs
    try:
        refs.extend(fetch_mp_entries(elements, cache_dir))
    except Exception as err:
        if mp_api:
            raise
        # a key means the user wants MP: say loudly why it did not happen
        (log.warning if os.environ.get("MP_API_KEY") else log.info)("no Materials Project references: %s", err)
    return refs


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
