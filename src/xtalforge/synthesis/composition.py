"""Compositional validity: parseable formula, SMACT charge neutrality, pymatgen oxidation states.

`is_charge_balanced` lives in generators/compositions.py (the generators enumerate formulas
with it); it is re-exported here so the synthesis package has one place to ask "is this a
sensible ionic composition?".
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources

from pymatgen.core import Composition, Element

from xtalforge.generators.compositions import is_charge_balanced

__all__ = ["is_charge_balanced", "parse_formula", "oxidation_states", "composition_problems",
           "icsd_oxidation_counts", "is_intermetallic"]

# Elements past Bi without stable isotopes (plus Tc, Pm): no one makes a bulk crystal of these
# outside a hot lab, so a proposal containing them is not something a user can synthesize.
_RADIOACTIVE = frozenset({"Tc", "Pm", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Pa", "Np", "Pu", "Am",
                          "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr"})
_NOBLE_GASES = frozenset({"He", "Ne", "Ar", "Kr", "Xe", "Rn"})
MAX_AMOUNT = 1e6  # atoms of one element per formula unit; beyond this it is not a crystal's formula


def parse_formula(text: str) -> Composition:
    """A Composition from a formula string; ValueError with the reason when it is not one.

    pymatgen accepts some strings that are not chemistry ("Xx", "") only to fail later, so the
    elements are checked here."""
    s = str(text).strip()
    if not s:
        raise ValueError("empty formula")
    try:
        comp = Composition(s)
    except Exception as err:
        raise ValueError(f"cannot parse formula {s!r} ({err})") from None
    if comp.num_atoms <= 0 or not comp.elements:
        raise ValueError(f"formula {s!r} has no atoms")
    for el in comp.elements:
        if not isinstance(el, Element) or not Element.is_valid_symbol(el.symbol):
            raise ValueError(f"formula {s!r}: unknown element {el}")
    for el, v in comp.items():
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"formula {s!r}: the amount of {el} is not a finite, positive number")
        if v > MAX_AMOUNT:
            raise ValueError(f"formula {s!r}: {v:.3g} {el} atoms per formula unit; at most {MAX_AMOUNT:g}")
    # pymatgen drops an element written with amount 0 ("Ca0O" reads as "O"): refuse it instead
    # of scoring a different compound than the one asked about
    dropped = sorted(set(re.findall(r"[A-Z][a-z]?", s)) - {el.symbol for el in comp.elements})
    if dropped:
        raise ValueError(f"formula {s!r}: amount 0 of {', '.join(dropped)}")
    return comp


def is_intermetallic(comp: Composition) -> bool:
    """All elements are metals (or metalloids): charge neutrality does not apply to these."""
    return all(el.is_metal or el.is_metalloid for el in comp.elements)


def oxidation_states(comp: Composition, max_sites: int = -20) -> dict[str, float] | None:
    """pymatgen's most probable charge-neutral oxidation states (ICSD bond-valence statistics),
    or None when there is no neutral assignment. Fractional values mean mixed valence."""
    try:
        guesses = comp.oxi_state_guesses(max_sites=max_sites)
    except Exception:  # pymatgen raises on compositions too large to enumerate
        return None
    return dict(guesses[0]) if guesses else None


@lru_cache(maxsize=1)
def icsd_oxidation_counts() -> dict[str, dict[int, int]]:
    """How often each oxidation state of each element occurs in the ICSD (SMACT's 2024 counts)."""
    with resources.files("smact").joinpath("data/oxidation_states_icsd24_counts.json").open() as fh:
        rows = json.load(fh)
    out: dict[str, dict[int, int]] = {}
    for r in rows:
        if r["results_count"] > 0:
            out.setdefault(r["element"], {})[int(r["oxidation_state"])] = int(r["results_count"])
    return out


def composition_problems(comp: Composition | str, elements: tuple[str, ...] | None = None,
                         allow_intermetallic: bool = True, commonality: str = "medium") -> list[str]:
    """Why this composition is not a sensible target for synthesis; [] when it is.

    - outside the campaign's elements, noble gases, radioactive elements;
    - an ionic compound (anything with a non-metal) that SMACT cannot charge-balance with the
      Pauling electronegativity test, and for which pymatgen finds no neutral oxidation states.
      Intermetallics are exempt when `allow_intermetallic` (metallic bonding has no charge
      balance to satisfy); pure elements are always fine.
    """
    if isinstance(comp, str):
        try:
            comp = parse_formula(comp)
        except ValueError as err:
            return [str(err)]
    out: list[str] = []
    syms = {el.symbol for el in comp.elements}
    if elements is not None and syms - set(elements):
        out.append(f"element(s) {', '.join(sorted(syms - set(elements)))} outside {'-'.join(elements)}")
    if syms & _NOBLE_GASES and len(syms) > 1:
        out.append(f"noble gas {', '.join(sorted(syms & _NOBLE_GASES))} in a compound")
    if syms & _RADIOACTIVE:
        out.append(f"radioactive element(s) {', '.join(sorted(syms & _RADIOACTIVE))}")
    if len(syms) == 1 or (allow_intermetallic and is_intermetallic(comp)):
        return out
    if not is_charge_balanced(comp, commonality) and oxidation_states(comp) is None and not _is_peroxide(comp):
        # SMACT's ICSD-24 "medium" states miss a few real cases, so pymatgen's bond-valence
        # guesses are a second opinion, and s-block peroxides/superoxides a third
        out.append(f"{comp.reduced_formula} is not charge-balanced (SMACT with the Pauling test, "
                   "pymatgen oxidation states)")
    return out


def _is_peroxide(comp: Composition) -> bool:
    """Alkali / alkaline-earth peroxides and superoxides (Li2O2, BaO2, KO2): O is -1 or -1/2.

    Only s-block cations: they are electropositive enough to stabilize O2^2- and O2^-, whereas
    "TiO4" with O-1 is the spurious assignment SMACT's commonality filter exists to reject."""
    syms = {el.symbol for el in comp.elements}
    cations = syms - {"O"}
    if "O" not in syms or not cations or any(Element(c).group not in (1, 2) for c in cations):
        return False
    positive = sum(comp[c] * Element(c).group for c in cations)  # +1 alkali, +2 alkaline earth
    n_o = comp["O"]
    return abs(positive - n_o) < 1e-6 or abs(2 * positive - n_o) < 1e-6
