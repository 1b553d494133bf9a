"""Charge-balanced compositions of a chemical system (SMACT)."""

from __future__ import annotations

import itertools
from functools import lru_cache

from pymatgen.core import Composition, Element


def oxidation_states(element: str) -> list[int]:
    """Nonzero oxidation states of `element`: ICSD's and pymatgen's common ones. The common set
    adds the anions of p-block metals (Sn4- in the antiperovskites Sr3SnO and Ba3SnO) that the
    ICSD-derived lists leave out."""
    el = Element(element)
    return sorted({*el.icsd_oxidation_states, *el.common_oxidation_states} - {0})


def is_charge_balanced(comp: Composition | str, commonality: str | float = "medium") -> bool:
    """SMACT charge neutrality + Pauling electronegativity test, with ICSD-24 oxidation states.

    "medium" commonality drops rare states (O-1 in TiO4, Ca+1 in Ca2O) that SMACT's default
    "low" accepts; mixed valence (Fe3O4) is allowed. Answers are memoized by reduced formula:
    one SMACT call costs ~10-70 ms and generators ask about the same few formulas thousands of
    times."""
    comp = Composition(comp)
    if len(comp.elements) == 1:
        return True
    return _smact_balanced(comp.reduced_formula, commonality)


@lru_cache(maxsize=4096)
def _smact_balanced(reduced_formula: str, commonality: str | float) -> bool:
    from smact.screening import ICSD24FilterConfig, smact_validity

    return bool(smact_validity(Composition(reduced_formula), use_pauling_test=True, include_alloys=False,
                               mixed_valence=True, icsd_filter=ICSD24FilterConfig(commonality=commonality)))


@lru_cache(maxsize=64)
def charge_balanced(elements: tuple[str, ...], max_atoms: int, min_elements: int = 1,
                    commonality: str | float = "medium") -> tuple[Composition, ...]:
    """Reduced compositions with at most `max_atoms` atoms per formula unit that pass
    `is_charge_balanced`. Pure elements are always included (they are needed on every hull).
    Sorted by number of atoms, then formula."""

    out: dict[str, Composition] = {}
    for k in range(1, len(elements) + 1):
        for subset in itertools.combinations(elements, k):
            for counts in itertools.product(range(1, max_atoms + 1), repeat=k):
                if sum(counts) > max_atoms:
                    continue
                comp = Composition(dict(zip(subset, counts)))
                red = comp.reduced_composition
                if red.reduced_formula in out:
                    continue
                if k == 1 or is_charge_balanced(red, commonality):
                    out[red.reduced_formula] = red
    comps = [c for c in out.values() if len(c.elements) >= min_elements]
    return tuple(sorted(comps, key=lambda c: (c.num_atoms, c.reduced_formula)))


class NoCompositionError(ValueError):
    pass


def require_compositions(elements: tuple[str, ...], max_atoms: int,
                         commonality: str | float = "medium") -> tuple[Composition, ...]:
    comps = charge_balanced(tuple(elements), max_atoms, 1, commonality)
    if not [c for c in comps if len(c.elements) > 1]:
        raise NoCompositionError(
            f"no charge-balanced compound of {'-'.join(elements)} fits in {max_atoms} atoms "
            "(SMACT oxidation states); raise max_atoms or change the system"
        )
    return comps
