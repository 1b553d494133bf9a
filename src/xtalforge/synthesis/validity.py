"""Validity with chemistry: structural sanity (xtalforge.structure) plus the compositional checks
(SMACT charge neutrality and electronegativity, pymatgen oxidation states)."""

from __future__ import annotations

from pymatgen.core import Structure

from xtalforge.structure import ValidityLimits, structure_problem
from xtalforge.types import Candidate


def check(candidate: Candidate | Structure, limits: ValidityLimits | None = None,
          elements: tuple[str, ...] | None = None, allow_intermetallic: bool = True) -> list[str]:
    """Every reason `candidate` should not be featurized or evaluated; [] when it passes.

    Structural sanity first (ordered, atom count, volume per atom in Å^3, shortest distance in
    Å), then the composition: SMACT charge neutrality with the Pauling electronegativity test,
    pymatgen oxidation states as a second opinion, no noble gases or radioactive elements.
    Cheap (milliseconds): it is the hard filter that runs before anything costs time."""
    from xtalforge.synthesis.composition import composition_problems

    structure = candidate.structure if isinstance(candidate, Candidate) else candidate
    limits = limits or ValidityLimits()
    out = []
    p = structure_problem(structure, limits, elements)
    if p:
        out.append(p)
    if len(structure):
        comp = structure.composition.element_composition  # drop oxidation-state decorations
        out.extend(q for q in composition_problems(comp, None, allow_intermetallic) if q not in out)
    return out


def filter_checked(cands: list[Candidate], limits: ValidityLimits, elements: tuple[str, ...] | None = None,
                   allow_intermetallic: bool = True) -> tuple[list[Candidate], dict[str, int]]:
    """Like `filter_valid`, with the compositional checks of `check` added; rejection counts are
    keyed `too_close`, `volume`, `charge` (not charge-balanced / electronegativity), `element`."""
    keep, why = [], {}
    for c in cands:
        problems = check(c, limits, elements, allow_intermetallic)
        if not problems:
            keep.append(c)
            continue
        p = problems[0]
        key = ("too_close" if p.startswith("atoms") else
               "charge" if ("charge-balanced" in p or "electronegativity" in p) else
               "element" if ("element" in p or "noble gas" in p) else p.split(" ")[0])
        why[key] = why.get(key, 0) + 1
    return keep, why
