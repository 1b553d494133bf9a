"""Prototype structures for substitution: the shipped textbook set, user CIFs, the campaign's best.

A prototype is an ordered, oxidation-state-decorated primitive cell plus its symmetry orbits
(sets of equivalent sites), which is what symmetry-aware partial substitution acts on.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from xtalforge.generators.base import reward_from
from xtalforge.generators.compositions import oxidation_states
from xtalforge.types import Candidate, Measurement

log = logging.getLogger(__name__)


class PrototypeError(ValueError):
    """A prototype that cannot be used (unreadable, disordered, no oxidation states, too big)."""


@dataclass(frozen=True)
class Cell:
    """One cell of a prototype: decorated structure and its orbits (tuples of site indices)."""

    structure: Structure
    orbits: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Prototype:
    key: str  # "builtin:<name>", "file:<path>" or "history:<candidate id>"
    primitive: Cell
    larger: Cell | None  # conventional or doubled cell within max_atoms: room for partial orderings
    prior_a: float = 1.0  # Beta pseudo-counts of reward before any result came back
    prior_b: float = 1.0

    @property
    def species(self) -> list[str]:
        return sorted({str(sp) for sp in self.primitive.structure.species})


def fresh(s: Structure) -> Structure:
    """A copy with new, writable arrays and no cached lattice properties. Structures that come
    through Ray's object store carry read-only arrays (the LLL matrix a lattice cached before
    it was sent, among them) that pymatgen's Cython distance code refuses."""
    return Structure(Lattice(np.array(s.lattice.matrix, dtype=float)), s.species,
                     np.array(s.frac_coords, dtype=float))


def builtin_paths() -> list[Path]:
    folder = resources.files("xtalforge") / "data" / "prototypes"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".cif"))


def read_structure(path: str | Path) -> Structure:
    """A structure from a CIF/JSON/POSCAR file; PrototypeError when it cannot serve as a prototype."""
    p = Path(path)
    if not p.is_file():
        raise PrototypeError(f"prototype file {p} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_file(p)
    except Exception as err:
        raise PrototypeError(f"prototype {p}: cannot read it ({err})") from None
    if not s.is_ordered:
        raise PrototypeError(f"prototype {p} has partial occupancies; order it first (e.g. OrderDisorderedStructureTransformation)")
    return s


def decorate(s: Structure) -> Structure:
    """`s` with an oxidation state on every site: kept when the file had them, else the most
    likely charge-neutral guess by composition."""
    if all(getattr(sp, "oxi_state", None) is not None for sp in s.species):
        return s.copy()
    plain = s.copy()
    plain.remove_oxidation_states()
    comp = plain.composition
    # ICSD's states first; then the common ones too, which hold the anions of p-block metals
    # (Sn4- in the antiperovskite Sr3SnO) that ICSD's lists leave out
    guesses = (_oxi_guesses(comp)
               or _oxi_guesses(comp, {el.symbol: oxidation_states(el.symbol) for el in comp.elements}))
    if not guesses:
        raise PrototypeError(f"{comp.reduced_formula}: no charge-neutral oxidation states")
    plain.add_oxidation_state_by_element(guesses[0])
    return plain


def _oxi_guesses(comp, override: dict[str, list[int]] | None = None) -> list[dict]:
    try:
        return list(comp.oxi_state_guesses(oxi_states_override=override, max_sites=-1))
    except Exception:  # pymatgen gives up on very large formulas
        return []


def orbits(s: Structure, symprec: float = 0.01) -> tuple[tuple[int, ...], ...]:
    """Sets of symmetry-equivalent site indices (Wyckoff orbits), in site order."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sym = SpacegroupAnalyzer(s, symprec=symprec).get_symmetrized_structure()
        return tuple(tuple(sorted(ix)) for ix in sym.equivalent_indices)
    except Exception:  # spglib fails on degenerate cells: every site is its own orbit
        return tuple((i,) for i in range(len(s)))


def prepare(key: str, s: Structure, max_atoms: int, prior_a: float = 1.0, prior_b: float = 1.0) -> Prototype:
    """A Prototype from a structure; PrototypeError when even its primitive cell is too big."""
    if not s.is_ordered:
        raise PrototypeError(f"{key}: partial occupancies")
    dec = decorate(s)
    prim = dec.get_primitive_structure()
    if len(prim) > max_atoms:
        raise PrototypeError(f"{key}: {len(prim)} atoms in the primitive cell > max_atoms {max_atoms}")
    larger = None
    if len(prim) < len(dec) <= max_atoms:
        larger = Cell(dec, orbits(dec))
    elif 2 * len(prim) <= max_atoms:
        # the doubled cell has the same orbits, but replacing part of one lets an ordering
        # (CaSrTi2O6 from CaTiO3) break the translation
        sup = prim * [1, 1, 2]
        larger = Cell(sup, orbits(sup))
    return Prototype(key, Cell(prim, orbits(prim)), larger, prior_a, prior_b)


@functools.lru_cache(maxsize=8)
def _builtin_prototypes(max_atoms: int) -> tuple[Prototype, ...]:
    """The shipped set, read once per process (spglib on each: ~1 s in all). Prototypes are
    frozen and their structures only ever read."""
    out = []
    for p in builtin_paths():
        try:
            out.append(prepare(f"builtin:{p.stem}", read_structure(p), max_atoms))
        except PrototypeError as err:  # too big for this campaign's cell limit is routine
            log.debug("skipping prototype: %s", err)
    return tuple(out)


def load_prototypes(paths: Sequence[str | Path], builtin: bool, max_atoms: int) -> list[Prototype]:
    """The shipped set (when `builtin`) plus the named files. Unusable entries are logged and skipped."""
    out = list(_builtin_prototypes(max_atoms)) if builtin else []
    for key, path in [(f"file:{Path(p).stem}", Path(p)) for p in paths]:
        try:
            out.append(prepare(key, read_structure(path), max_atoms))
        except PrototypeError as err:  # a user's file that cannot be used is worth a warning
            log.warning("skipping prototype: %s", err)
    return out


def history_prototypes(history: Sequence[tuple[Candidate, Measurement]], k: int, max_atoms: int) -> list[Prototype]:
    """The `k` best relaxed structures of the campaign, weighted a priori by their own reward."""
    out = []
    for cand, m in history:
        if len(out) >= k:
            break
        if m.relaxed is None:
            continue
        r = reward_from(m)
        try:
            out.append(prepare(f"history:{cand.id}", fresh(m.relaxed), max_atoms, 1.0 + 2.0 * r, 1.0 + 2.0 * (1.0 - r)))
        except PrototypeError as err:
            log.debug("history prototype skipped: %s", err)
    return out


# -- the reference snapshot as a prototype library (GNoME's SAPS draws from all known structures) --

KNOWN = "known"  # the `prototypes` entry that asks for the snapshot's structures


@dataclass(frozen=True)
class KnownSource:
    """A known structure offered as a prototype: its system's substitution score (product of
    per-element conditional substitution probabilities, unitless) and DFT hull distance (eV/atom)."""

    material_id: str
    chemsys: str
    score: float
    e_above_hull: float
    structure: Structure


ElementScore = Callable[[str, str], float]  # (known element, target element) -> best ion-pair probability


def best_assignment(known: Sequence[str], target: Sequence[str], score: ElementScore) -> float:
    """Largest product of `score(known element, target element)` over one-to-one assignments
    of `known` elements to `target` elements (0 when `known` has more elements than `target`)."""
    from itertools import permutations

    if len(known) > len(target):
        return 0.0
    best = 0.0
    for perm in permutations(target, len(known)):
        v = 1.0
        for a, b in zip(known, perm):
            v *= score(a, b)
            if v <= best:
                break
        best = max(best, v)
    return best


def known_sources(elements: Sequence[str], max_atoms: int, score: ElementScore, exclude_chemsys: Sequence[str] = (),
                  limit: int = 96, max_e_above_hull: float = 0.025, snapshot=None) -> list[KnownSource]:
    """The `limit` snapshot structures most likely to become compounds of `elements` by ionic
    substitution: structures with as many elements as the system, at most `max_atoms` sites and
    within `max_e_above_hull` (eV/atom) of the snapshot's DFT hull, from the systems whose
    elements map one-to-one onto `elements` with the highest substitution score. Entries of the
    systems in `exclude_chemsys` (e.g. the target system of a leave-system-out benchmark) are
    never offered."""
    from xtalforge.references.known import shipped_snapshot
    from xtalforge.references.snapshot import chemsys_of

    snap = snapshot or shipped_snapshot()
    target = sorted(set(elements))
    excluded = {chemsys_of(c.replace(" ", "").split("-")) for c in exclude_chemsys}
    ranked = []
    for cs in snap.chemical_systems():
        els = cs.split("-")
        if len(els) != len(target) or cs in excluded:
            continue
        s = best_assignment(els, target, score)
        if s > 0:
            ranked.append((s, cs))
    ranked.sort(key=lambda t: (-t[0], t[1]))
    out: list[KnownSource] = []
    for s, cs in ranked:
        if len(out) >= limit:
            break
        rows = [r for r in snap.rows(cs.split("-")) if r.chemsys == cs and r.structure >= 0
                and r.nsites <= max_atoms and r.e_above_hull <= max_e_above_hull + 1e-9]
        for r in sorted(rows, key=lambda r: (r.e_above_hull, r.nsites, r.material_id))[: limit - len(out)]:
            out.append(KnownSource(r.material_id, cs, s, r.e_above_hull, snap.structure(r.structure)))
    return out


def known_prototypes(sources: Sequence[KnownSource], max_atoms: int) -> list[Prototype]:
    """Prototypes ("known:<material id>") from snapshot structures; unusable ones skipped."""
    out = []
    for src in sources:
        try:
            out.append(prepare(f"known:{src.material_id}", src.structure, max_atoms))
        except PrototypeError as err:
            log.debug("skipping known prototype: %s", err)
    return out
