"""Solid-state synthesis routes for a target, in the manner of A-Lab / ARROWS3.

For a target composition: pick sets of common precursors (oxides, carbonates, nitrates,
hydroxides) that together supply its non-volatile elements, balance
`precursors (+ O2) -> target + gases` with pymatgen's Reaction, and rank the routes by the
reaction energy per atom (eV/atom; most negative = largest driving force first).

Energies are formation energies per atom on one scale, MP2020-corrected GGA/GGA+U, looked up
in this order (the first that knows the formula wins; the table says which one was used):
1. the campaign hull (CHGNet + MP2020 entries and the hull's reference entries) for formulas
   inside the campaign's chemical system: the same numbers that decided the target is stable;
2. reference entries the user supplies (`oracles.hull.load_reference_entries`: total
   energies on the MP scale; formation energies are taken against MP's elemental references);
3. the shipped precursor table (data/precursors.csv): experimental standard enthalpies of
   formation, which are what MP2020 is fitted to reproduce, so they share its scale.
We do not compute precursor energies with CHGNet on hand-built structures: carbonates,
nitrates and hydroxides have molecular anions whose polymorphs a quick build gets wrong by
more than the reaction energies we rank by, while the experimental values are exact on the
scale MP2020 targets.

The reaction energy is a 0 K-like enthalpy. Releasing a gas gains entropy, which drives
carbonate decompositions at furnace temperatures; `dg_per_atom` estimates
ΔG(T) ≈ ΔH − T·ΔS_gas with ΔS_gas from the gases' standard entropies (solids' entropies
largely cancel between the two sides), for information; the ranking uses ΔH.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Composition

from xtalforge.synthesis.composition import parse_formula

EV_PER_KJ_MOL = 1 / 96.485  # eV per particle for 1 kJ/mol
GAS_FOR = {"C": "CO2", "H": "H2O", "N": "NO2"}  # what a volatile element leaves as
DEFAULT_TEMPERATURE_K = 1073.15  # a typical calcination temperature for the ΔG(T) estimate


@dataclass(frozen=True)
class Precursor:
    formula: str
    kind: str
    dhf_ev_per_fu: float | None = None  # eV per formula unit as written
    s298_j_per_mol_k: float | None = None  # gases: standard molar entropy
    source: str = ""

    @property
    def composition(self) -> Composition:
        return Composition(self.formula)

    @property
    def elements(self) -> frozenset[str]:
        return frozenset(e.symbol for e in self.composition.elements)


def load_precursors(path: str | Path | None = None) -> list[Precursor]:
    """The shipped list (data/precursors.csv) or a user CSV with `formula` and `kind` columns
    (`dhf_ev_per_fu`, `s298_j_per_mol_k`, `source` optional). ValueError names the bad line."""
    if path is None:
        text = resources.files("xtalforge.data").joinpath("precursors.csv").read_text()
        where = "data/precursors.csv"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"precursor file {p} does not exist")
        text, where = p.read_text(encoding="utf-8-sig"), str(p)
    reader = csv.DictReader(text.splitlines())
    cols = set(reader.fieldnames or [])
    if not {"formula", "kind"} <= cols:
        raise ValueError(f"{where}: needs columns formula and kind, got {sorted(cols)}")
    out = []
    for i, r in enumerate(reader, start=2):
        try:
            parse_formula(r["formula"])
            num = lambda k: float(r[k]) if r.get(k) not in (None, "") else None  # noqa: E731
            out.append(Precursor(r["formula"].strip(), (r["kind"] or "").strip().lower(), num("dhf_ev_per_fu"),
                                 num("s298_j_per_mol_k"), (r.get("source") or "").strip()))
        except ValueError as err:
            raise ValueError(f"{where} line {i}: {err}") from None
    if not out:
        raise ValueError(f"{where}: no precursors")
    return out


class FormationEnergies:
    """Formation energy per atom (eV/atom, MP2020 scale) of a composition, and its source."""

    def __init__(self, hull=None, references: Sequence[PDEntry] = (), precursors: Sequence[Precursor] = ()):
        self.hull = hull
        self._refs: dict[str, tuple[float, str]] = {}
        if references:
            from xtalforge.references.hull import elemental_references

            for e in references:
                comp = e.composition
                els = [el.symbol for el in comp.elements]
                try:
                    mu = {k: v.energy_per_atom for k, v in elemental_references(els).items()}
                except KeyError:
                    continue
                ef = (e.energy - sum(comp[el] * mu[el] for el in els)) / comp.num_atoms
                key = comp.reduced_formula
                if key not in self._refs or ef < self._refs[key][0]:
                    self._refs[key] = (ef, "reference entries")
        self._table: dict[str, tuple[float, str]] = {}
        for p in precursors:
            if p.dhf_ev_per_fu is not None:
                comp = p.composition
                self._table[comp.reduced_formula] = (p.dhf_ev_per_fu / comp.num_atoms, "experiment (precursor table)")

    def _from_hull(self, comp: Composition) -> float | None:
        if self.hull is None or not {e.symbol for e in comp.elements} <= set(self.hull.elements):
            return None
        pd = self.hull.phase_diagram
        same = [e for e in pd.all_entries if e.composition.reduced_formula == comp.reduced_formula]
        return min(pd.get_form_energy_per_atom(e) for e in same) if same else None

    def scale_mismatch(self, comps: Sequence[Composition], tol: float = 0.3) -> dict[str, float]:
        """Formulas known to both the hull and the experimental table whose formation energies
        differ by more than `tol` eV/atom (hull minus table). A systematic offset means the two
        sources are not on one scale, e.g. MP2020 applied on top of CHGNet energies that already
        include it, and the reaction energies mixing them cannot be trusted."""
        out = {}
        for c in comps:
            h, t = self._from_hull(Composition(c)), self._table.get(Composition(c).reduced_formula)
            if h is not None and t is not None and abs(h - t[0]) > tol:
                out[Composition(c).reduced_formula] = float(h - t[0])
        return out

    def per_atom(self, comp: Composition) -> tuple[float, str] | None:
        comp = Composition(comp)
        if len(comp.elements) == 1:
            return 0.0, "element (reference state)"
        e = self._from_hull(comp)
        if e is not None:
            return float(e), "campaign hull (the MLIP's energies, known phases relaxed by it)"
        return self._refs.get(comp.reduced_formula) or self._table.get(comp.reduced_formula)


@dataclass
class Route:
    target: str
    precursors: tuple[str, ...]
    byproducts: tuple[str, ...]
    reaction: str
    de_per_atom: float  # eV/atom of the reaction (per atom on either side)
    de_per_fu: float  # eV per formula unit of the target
    dg_per_atom: float  # ΔG(T) estimate, eV/atom
    temperature_k: float
    sources: dict[str, str] = field(default_factory=dict)
    o2: float = 0.0  # O2 per target formula unit: < 0 taken up, > 0 given off


def precursor_sets(target: Composition, precursors: Sequence[Precursor], max_size: int | None = None) -> list[tuple[Precursor, ...]]:
    """Minimal sets of solid precursors that supply exactly the target's non-volatile elements.

    A precursor may bring C, H or N the target lacks (they leave as CO2, H2O, NO2) and O when
    the target is an oxide (O2 balances it); it may bring nothing else the target lacks."""
    tel = {e.symbol for e in target.elements}
    framework = tel - {"O"}
    leaving = set(GAS_FOR) - tel
    # without O in the target, C/H/N cannot leave as oxides and O itself has nowhere to go:
    # oxide, carbonate... routes to a nitride or an intermetallic would need a reductant
    allowed = tel | leaving if "O" in tel else tel
    solids = [p for p in precursors if p.kind != "gas"]
    usable = [p for p in solids if p.elements <= allowed and p.elements & framework]
    out = []
    for k in range(1, (max_size or len(framework)) + 1):
        for combo in itertools.combinations(usable, k):
            covers = [p.elements & framework for p in combo]
            if set().union(*covers) != framework:
                continue
            # minimal: dropping any precursor loses an element
            if any(set().union(*(c for j, c in enumerate(covers) if j != i)) == framework for i in range(k)):
                continue
            out.append(combo)
    return out


def balance(target: Composition, combo: Sequence[Precursor]):
    """`combo (+ O2) -> target + gases`, normalized to one target formula unit; None if the
    only balance consumes a by-product or produces a precursor."""
    from pymatgen.analysis.reaction_calculator import Reaction

    tel = {e.symbol for e in target.elements}
    gases = sorted({GAS_FOR[e] for p in combo for e in p.elements if e in GAS_FOR and e not in tel})
    reactants = [p.composition for p in combo]
    if "O" in tel or any("O" in p.elements for p in combo):
        reactants.append(Composition("O2"))
    try:
        rxn = Reaction(reactants, [target] + [Composition(g) for g in gases])
        rxn.normalize_to(target, 1)
    except Exception:
        return None
    for p in combo:
        if rxn.get_coeff(p.composition) > -1e-6:
            return None
    for g in gases:
        if rxn.get_coeff(Composition(g)) < -1e-9:
            return None
    return rxn


def _rxn_string(rxn, names: dict[str, str] | None = None) -> str:
    """Reactants -> products with the precursors' own spelling (Ba(OH)2, not Ba(HO)2);
    pymatgen keeps round-off O2 coefficients of 1e-16, which are dropped here."""
    names = names or {}

    def side(sign: int) -> str:
        parts = []
        for c in rxn.all_comp:
            v = rxn.get_coeff(c) * sign
            if v > 1e-6:
                n = f"{v:.3g} " if abs(v - 1) > 1e-6 else ""
                parts.append(f"{n}{names.get(c.reduced_formula, c.reduced_formula)}")
        return " + ".join(parts)

    return f"{side(-1)} -> {side(1)}"


def routes_for(target: Composition | str, energies: FormationEnergies, precursors: Sequence[Precursor],
               target_e_form: float | None = None, temperature_k: float = DEFAULT_TEMPERATURE_K,
               top: int | None = 5) -> list[Route]:
    """Balanced routes to `target` ranked by reaction energy per atom (eV/atom, ascending).

    `target_e_form` (eV/atom) is the target's formation energy, e.g. from the campaign hull;
    without it the target is looked up like any other formula. Routes with a species of
    unknown energy are dropped."""
    target = Composition(target).reduced_composition
    gas_s = {Composition(p.formula).reduced_formula: p.s298_j_per_mol_k for p in precursors
             if p.kind == "gas" and p.s298_j_per_mol_k is not None}
    out = []
    for combo in precursor_sets(target, precursors):
        if any(p.composition.reduced_formula == target.reduced_formula for p in combo):
            continue  # the target is itself a stock precursor (CaO from CaO): no reaction to suggest
        rxn = balance(target, combo)
        if rxn is None:
            continue
        e_fu, sources, ok = {}, {}, True
        names = {p.composition.reduced_formula: p.formula for p in combo}
        for c in rxn.all_comp:
            if abs(rxn.get_coeff(c)) < 1e-9:
                continue
            if c.reduced_formula == target.reduced_formula and target_e_form is not None:
                e, src = target_e_form, "candidate (campaign hull)"
            else:
                hit = energies.per_atom(c)
                if hit is None:
                    ok = False
                    break
                e, src = hit
            e_fu[c] = e * c.num_atoms
            sources[names.get(c.reduced_formula, c.reduced_formula)] = src
        if not ok:
            continue
        de = float(sum(rxn.get_coeff(c) * v for c, v in e_fu.items()))
        atoms = sum(rxn.get_coeff(c) * c.num_atoms for c in rxn.all_comp if rxn.get_coeff(c) > 0)
        if atoms <= 1e-9:  # a degenerate balance with nothing formed
            continue
        ds = sum(rxn.get_coeff(c) * gas_s.get(c.reduced_formula, 0.0) for c in rxn.all_comp)  # J/(mol K)
        dg = de - temperature_k * ds / 1000 * EV_PER_KJ_MOL
        out.append(Route(target.reduced_formula, tuple(p.formula for p in combo),
                         tuple(c.reduced_formula for c in rxn.all_comp
                               if rxn.get_coeff(c) > 1e-6 and c.reduced_formula != target.reduced_formula),
                         _rxn_string(rxn, names), de / atoms, de, dg / atoms, temperature_k, sources,
                         float(rxn.get_coeff(Composition("O2"))) if Composition("O2") in rxn.all_comp else 0.0))
    out.sort(key=lambda r: (r.de_per_atom, len(r.precursors), r.precursors))
    return out[:top] if top else out


@dataclass(frozen=True)
class Target:
    """A crystal to make: its id, composition and formation energy (eV/atom, MP2020 scale)."""

    id: str
    composition: Composition
    e_form_per_atom: float | None = None


def targets_from_hull(hull, ids: Sequence[str]) -> list[Target]:
    """Targets for campaign entries (`Hull.campaign` keys), with the hull's formation energies."""
    out = []
    for i in ids:
        entry = hull.campaign.get(i)
        if entry is not None:
            out.append(Target(i, entry.composition.reduced_composition, float(hull.e_form_per_atom(entry))))
    return out


ROUTE_COLUMNS = ["candidate_id", "target", "rank", "reaction", "precursors", "byproducts",
                 "dE_eV_per_atom", "dE_eV_per_fu", "dG_T_eV_per_atom", "T_K", "energy_sources", "note"]


def routes_table(targets: Sequence[Target], hull=None, references: Sequence[PDEntry] = (),
                 precursors: Sequence[Precursor] | str | Path | None = None, per_target: int = 3,
                 temperature_k: float = DEFAULT_TEMPERATURE_K) -> list[dict]:
    """One row per (target, route), best `per_target` routes each, in `ROUTE_COLUMNS` order;
    a target with no route gets one row saying why. Energies in eV (per atom or per target
    formula unit), T in K."""
    if precursors is None or isinstance(precursors, (str, Path)):
        precursors = load_precursors(precursors)
    energies = FormationEnergies(hull, references, precursors)
    off = energies.scale_mismatch([p.composition for p in precursors if p.kind != "gas"])
    warn = ("energy scales disagree: hull minus experiment " +
            ", ".join(f"{k} {v:+.2f}" for k, v in sorted(off.items())) + " eV/atom") if off else ""
    rows: list[dict] = []
    for t in targets:
        routes = routes_for(t.composition, energies, precursors, t.e_form_per_atom, temperature_k, per_target)
        if not routes:
            why = ("no balanced route from the precursor list with known energies"
                   + ("" if "O" in {e.symbol for e in t.composition.elements} else
                      " (not an oxide: give a precursor list with elements or binaries)"))
            rows.append({"candidate_id": t.id, "target": t.composition.reduced_formula, "rank": "",
                         "reaction": "", "precursors": "", "byproducts": "", "dE_eV_per_atom": "",
                         "dE_eV_per_fu": "", "dG_T_eV_per_atom": "", "T_K": "", "energy_sources": "",
                         "note": why})
            continue
        for k, r in enumerate(routes, start=1):
            rows.append({"candidate_id": t.id, "target": r.target, "rank": k, "reaction": r.reaction,
                         "precursors": " + ".join(r.precursors), "byproducts": " + ".join(r.byproducts),
                         "dE_eV_per_atom": round(r.de_per_atom, 4), "dE_eV_per_fu": round(r.de_per_fu, 4),
                         "dG_T_eV_per_atom": round(r.dg_per_atom, 4), "T_K": round(r.temperature_k, 2),
                         "energy_sources": "; ".join(f"{k2}: {v}" for k2, v in r.sources.items()),
                         "note": "; ".join(x for x in (_note(r), warn) if x)})
    return rows


def _note(r: Route) -> str:
    notes = []
    if r.o2 < -1e-6:
        notes.append("takes up O2 (anneal in air/O2)")
    elif r.o2 > 1e-6:
        notes.append("releases O2 (may need an inert or reducing atmosphere)")
    if r.de_per_atom > 0:
        notes.append("endothermic at 0 K" + ("; gas release makes ΔG(T) < 0" if r.dg_per_atom < 0 else ""))
    return "; ".join(notes)


def write_routes_csv(rows: Sequence[dict], path: str | Path) -> Path:
    from xtalforge.synthesis.tables import write_table

    return write_table(path, ROUTE_COLUMNS, list(rows))


def routes_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table (one line per route) for the campaign report."""
    cols = ["candidate_id", "target", "rank", "reaction", "dE_eV_per_atom", "dG_T_eV_per_atom", "energy_sources", "note"]
    head = ["candidate", "target", "#", "reaction", "ΔE (eV/atom)", "ΔG(T) est. (eV/atom)", "energies from", "note"]
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_routes_markdown(rows: Sequence[dict], path: str | Path, title: str = "Synthesis routes") -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    t = rows[0]["T_K"] if rows and rows[0].get("T_K") != "" else DEFAULT_TEMPERATURE_K
    p.write_text(f"# {title}\n\nRanked by reaction energy per atom (most negative first). ΔG(T) at {t} K "
                 "adds only the gases' entropy.\n\n" + routes_markdown(rows))
    return p
