"""The two reference hulls every hull distance is reported against.

- DFT reference hull: the known phases at their Materials Project energies plus MP's elemental
  references; candidates enter with MLIP energies, as Matbench Discovery scores MLIPs.
- Oracle-consistent hull: the known phases (with structures, up to a size limit) relaxed by the
  campaign's own MLIP, plus MLIP-relaxed elemental phases (MP's elemental references only for
  an element none of whose phases could be relaxed). Hits are decided here: a candidate and the
  phases it competes with share one model's systematic errors.

Hit threshold: `DEFAULT_HIT_THRESHOLD` (eV/atom on the oracle-consistent hull). CHGNet's energy
MAE on MP structures is about 30 meV/atom (Deng et al. 2023; Matbench Discovery), larger than
most polymorph energy differences, so no threshold turns its hull distances into certainty. On
the oracle-consistent hull part of that error cancels; a candidate within +0.03 eV/atom is
within the model's error of the hull and worth a DFT check, while 0.0 keeps the claim to "at or
below every known phase, by the MLIP's own account". The campaign's `hull.stable_threshold`
sets it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pymatgen.analysis.phase_diagram import PDEntry

from xtalforge.references.hull import Hull, elemental_references
from xtalforge.references.known import KnownPhase, KnownSet
from xtalforge.references.relaxed import (
    MAX_E_ABOVE_HULL_DFT,
    MAX_SITES,
    MAX_SITES_ON_HULL,
    RelaxedKnown,
    RelaxFn,
    default_cache_dir,
    relax_known,
)

DEFAULT_HIT_THRESHOLD = 0.0  # eV/atom above the oracle-consistent hull; see the module docstring
CHGNET_MAE = 0.030  # eV/atom, CHGNet's energy error on MP structures (for messages and docs)


@dataclass(frozen=True)
class HullDistance:
    """eV/atom above each hull (negative: below it); NaN where that hull is not built."""

    e_above_hull: float  # oracle-consistent hull
    e_above_hull_dft: float  # DFT reference hull


@dataclass
class ReferenceHulls:
    """Both hulls of one chemical system, the known phases behind them, and what is missing.

    `add(key, entry)` puts a campaign's own relaxation (an MLIP entry as `mp2020_entry` makes it)
    into both hulls, so later distances are against everything known so far. It also answers
    `Hull`'s methods (`e_above_hull`, `all_e_above_hull`, ... on the primary hull), so it can
    stand where one `Hull` was expected."""

    known: KnownSet
    dft: Hull
    oracle: Hull | None
    relaxed: RelaxedKnown | None = None
    dft_only: dict[str, str] = field(default_factory=dict)  # material id -> why not in the oracle hull
    oracle_elements_from_mp: list[str] = field(default_factory=list)  # terminals taken from MP's references
    hit_threshold: float = DEFAULT_HIT_THRESHOLD

    @property
    def elements(self) -> tuple[str, ...]:
        return self.known.elements

    def add(self, key: str, entry: PDEntry) -> None:
        """Add a campaign entry (MLIP energy, eV per cell) to both hulls."""
        self.dft.add(key, entry)
        if self.oracle is not None:
            self.oracle.add(key, entry)

    # -- the `Hull` interface, so code written for one hull (the MLIP oracle) takes both; the
    # -- primary hull decides hits: the oracle-consistent one, or the DFT one when none was built
    @property
    def primary(self) -> Hull:
        return self.oracle if self.oracle is not None else self.dft

    @property
    def campaign(self) -> dict[str, PDEntry]:
        return self.primary.campaign

    @property
    def references(self) -> list[PDEntry]:
        return self.primary.references

    @property
    def phase_diagram(self):
        return self.primary.phase_diagram

    def e_above_hull(self, entry: PDEntry) -> float:
        """eV/atom above the primary hull (negative: below it)."""
        return self.primary.e_above_hull(entry)

    def e_above_hull_dft(self, entry: PDEntry) -> float:
        """eV/atom above the DFT reference hull (MP energies of the known phases)."""
        return self.dft.e_above_hull(entry)

    def e_form_per_atom(self, entry: PDEntry) -> float:
        """Formation energy (eV/atom) against MP's elemental references, comparable with MP's."""
        return self.dft.e_form_per_atom(entry)

    def all_e_above_hull(self) -> dict[str, float]:
        """Current primary-hull distance (eV/atom) of every campaign entry."""
        return self.primary.all_e_above_hull()

    def stable_keys(self, threshold: float | None = None) -> list[str]:
        """Campaign entries within `threshold` (default `hit_threshold`) of the primary hull."""
        return self.primary.stable_keys(self.hit_threshold if threshold is None else threshold)

    def distance(self, entry: PDEntry) -> HullDistance:
        """Hull distances (eV/atom) of one MLIP entry against the current hulls."""
        oracle = self.oracle.e_above_hull(entry) if self.oracle is not None else math.nan
        return HullDistance(oracle, self.dft.e_above_hull(entry))

    def recompute(self, entries: Mapping[str, PDEntry] | None = None) -> dict[str, HullDistance]:
        """Distances of `entries` (default: every entry added with `add`) against the hulls as
        they are now; values taken when each entry was measured go stale as the hull moves."""
        entries = {**self.dft.campaign} if entries is None else entries
        return {k: self.distance(e) for k, e in entries.items()}

    def is_hit(self, d: HullDistance) -> bool:
        """On or within `hit_threshold` of the oracle-consistent hull (the DFT hull without one)."""
        v = d.e_above_hull if self.oracle is not None else d.e_above_hull_dft
        return math.isfinite(v) and v <= self.hit_threshold + 1e-9

    def decomposition(self, entry: PDEntry, oracle: bool = True) -> list[tuple[str, float]]:
        """What `entry` decomposes into on a hull: (label, fraction) pairs, largest first;
        labels are 'formula (material id)' for known phases, the key for campaign entries."""
        hull = self.oracle if oracle and self.oracle is not None else self.dft
        pd = hull.phase_diagram
        decomp, _ = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
        keys = {id(e): k for k, e in hull.campaign.items()}
        out = []
        for e, frac in decomp.items():
            label = keys.get(id(e)) or _label(e)
            out.append((label, float(frac)))
        return sorted(out, key=lambda t: -t[1])

    def _formula(self, material_id: str) -> str:
        p = self.known.by_id().get(material_id)
        return p.formula if p is not None else ""

    def describe(self) -> list[str]:
        """Lines for a report: which references, what each hull holds, what is missing."""
        lines = [f"known phases of {self.known.chemsys}: " + "; ".join(self.known.sources)]
        lines += [f"warning: {w}" for w in self.known.warnings]
        lines.append(f"DFT reference hull: {len(self.dft.references)} entries (MP energies, MP elemental references)")
        if self.oracle is not None and self.relaxed is not None:
            lines.append(f"oracle-consistent hull: {len(self.relaxed.entries)} known phases relaxed by the MLIP "
                         f"({len(self.relaxed.cached_ids)} from the cache)")
            if self.oracle_elements_from_mp:
                lines.append("  elemental terminals from MP's references (no relaxed phase): "
                             + ", ".join(self.oracle_elements_from_mp))
            if self.dft_only:
                lines.append(f"  known phases only in the DFT hull ({len(self.dft_only)}):")
                by_reason: dict[str, list[str]] = {}
                for mid, reason in self.dft_only.items():
                    by_reason.setdefault(reason, []).append(mid)
                for reason, mids in sorted(by_reason.items()):
                    names = ", ".join(f"{self._formula(m)} {m}" for m in sorted(mids))
                    lines.append(f"    {reason} ({len(mids)}): {names}")
        lines.append(f"hit: at most {self.hit_threshold:+.3f} eV/atom above the "
                     f"{'oracle-consistent' if self.oracle is not None else 'DFT reference'} hull")
        return lines


def _label(entry: PDEntry) -> str:
    """'CaTiO3 (mp-4019)' for a known phase, the formula alone for an entry without an id."""
    eid = getattr(entry, "entry_id", None) or getattr(entry, "name", "")
    formula = entry.composition.reduced_formula
    if not eid or eid == formula:
        return formula
    for suffix in ("-GGA+U", "-GGA"):  # MP's elemental references carry their thermo type
        if str(eid).endswith(suffix):
            eid = str(eid)[: -len(suffix)]
    return f"{formula} ({eid})"


def dft_hull(known: KnownSet) -> Hull:
    """The DFT reference hull: known phases with MP-scale energies plus MP's elemental references."""
    return Hull(known.elements, [p.entry() for p in known.with_energy()])


def select_for_relaxation(known: KnownSet, dft: Hull, max_sites: int = MAX_SITES,
                          max_e_above_hull_dft: float = MAX_E_ABOVE_HULL_DFT,
                          max_sites_on_hull: int = MAX_SITES_ON_HULL) -> tuple[list[KnownPhase], dict[str, str]]:
    """The known phases to relax into the oracle-consistent hull, and why each other one is not.

    Relaxed: phases with a structure of at most `max_sites` sites within `max_e_above_hull_dft`
    (eV/atom) of the DFT hull, and the DFT hull's own vertices up to `max_sites_on_hull` sites
    (they shape the hull: Ca3Ti2O7 has 24 sites). Phases without an energy (user structures)
    count as on the hull."""
    chosen: list[KnownPhase] = []
    why: dict[str, str] = {}
    for p in known.phases:
        if p.structure is None:
            why[p.material_id] = "no structure"
            continue
        e = dft.e_above_hull(p.entry()) if p.has_energy else 0.0
        on_hull = e <= 1e-6
        limit = max(max_sites, max_sites_on_hull) if on_hull else max_sites
        if len(p.structure) > limit:
            why[p.material_id] = f"more than {limit} sites"
        elif e > max_e_above_hull_dft + 1e-9:
            why[p.material_id] = f"more than {max_e_above_hull_dft:g} eV/atom above the DFT hull"
        else:
            chosen.append(p)
    return chosen, why


def build_reference_hulls(known: KnownSet, relax: RelaxFn | None, model: str = "", settings: Mapping | None = None,
                          cache_dir: str | Path | None = None, *, apply_mp2020: bool = False,
                          max_sites: int = MAX_SITES, max_e_above_hull_dft: float = MAX_E_ABOVE_HULL_DFT,
                          max_sites_on_hull: int = MAX_SITES_ON_HULL, hit_threshold: float = DEFAULT_HIT_THRESHOLD) -> ReferenceHulls:
    """Both hulls of `known`'s system. `relax` (structures -> results with ok, error, structure,
    energy in eV per cell) relaxes the selected known phases, through the cache in `cache_dir`
    keyed by (material id, `model`, hash of `settings`) (default `relaxed.default_cache_dir()`,
    shared by all campaigns of the user); `relax=None` builds the DFT hull only.

    Use the campaign's own oracle settings for `model` (`relaxed.model_key`), `settings` (fmax,
    max_steps, ...) and `apply_mp2020`, so known phases and candidates share one scale."""
    dft = dft_hull(known)
    if relax is None:
        return ReferenceHulls(known, dft, None, None, {p.material_id: "no MLIP" for p in known.with_energy()},
                              hit_threshold=hit_threshold)
    chosen, why = select_for_relaxation(known, dft, max_sites, max_e_above_hull_dft, max_sites_on_hull)
    relaxed = relax_known(chosen, relax, model, settings or {}, cache_dir or default_cache_dir(),
                          apply_mp2020=apply_mp2020)
    for mid, err in relaxed.failed.items():
        why[mid] = f"relaxation failed: {err}"
    covered = {e.composition.elements[0].symbol for e in relaxed.entries if len(e.composition.elements) == 1}
    from_mp = [el for el in known.elements if el not in covered]
    refs = list(relaxed.entries) + list(elemental_references(from_mp).values())
    oracle = Hull(known.elements, refs, use_mp_elements=False)
    by_id = known.by_id()
    dft_only = {k: v for k, v in why.items() if by_id[k].has_energy}
    return ReferenceHulls(known, dft, oracle, relaxed, dft_only, from_mp, hit_threshold)


def distances(hulls: ReferenceHulls, entries: Sequence[PDEntry]) -> list[HullDistance]:
    """Distances (eV/atom) of a list of MLIP entries against both current hulls."""
    return [hulls.distance(e) for e in entries]
