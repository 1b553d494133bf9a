"""The cheap fidelity: the MLIP's single-point energy of each unrelaxed proposal.

A relaxation costs hundreds of MLIP calls; the energy of the proposal as drawn costs one, and
the default featurizer runs that forward pass anyway (the CHGNet embedding is read from it).
So every candidate gets, at no extra model cost, `e_single_point` (eV/atom, on the hull's energy
scale: MP2020-corrected where the oracle's energies are) in its meta. The selector turns it into
a single-point e_above_hull against the current hull and gives it to the surrogate as a lower
fidelity of e_above_hull (fidelity 0; relaxations are 1): the multi-fidelity GP learns how far
relaxation moves a proposal's energy from the candidates evaluated both ways, and ranks the
rest of the pool by what their single points say. A proposal from a known prototype that sits
near its minimum has a low single-point energy; a random one with atoms at odd distances a
high one, whatever it later relaxes to, which is why it is a fidelity and not a filter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pymatgen.core import Composition

from xtalforge.types import Candidate

KEY = "e_single_point"  # candidate.meta: eV/atom, on the hull's scale
CAP = 1.0  # eV/atom above the hull: beyond this a single point says only "far off", and its size would set the GP's scale


def featurize(cands: Sequence[Candidate], featurizer: str, elements: Sequence[str], oracle,
              single_point: bool, mp2020: bool) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Feature rows {id: row} of `cands` and, where the screening oracle offers
    `single_point` and the featurizer reads the MLIP embedding, {id: {KEY: eV/atom}} from the
    same forward pass."""
    from xtalforge.model.descriptors import featurize as features_of

    structures = [c.structure for c in cands]
    sp = getattr(oracle, "single_point", None)
    if not (single_point and sp is not None and featurizer == "chgnet+composition"):
        X = features_of(featurizer, structures, elements, embed=getattr(oracle, "embed", None))
        return {c.id: X[i] for i, c in enumerate(cands)}, {}
    emb, energy = sp(structures)
    X = features_of(featurizer, structures, elements, embed=lambda _s: emb)
    meta = {}
    for c, e in zip(cands, energy):
        if np.isfinite(e):
            meta[c.id] = {KEY: corrected_per_atom(c, float(e), mp2020)}
    return {c.id: X[i] for i, c in enumerate(cands)}, meta


def corrected_per_atom(c: Candidate, e_per_atom: float, mp2020: bool) -> float:
    """eV/atom on the hull's scale: as measured, or MP2020-corrected for MLIPs trained without it."""
    if not mp2020:
        return e_per_atom
    from xtalforge.references.hull import mp2020_entry

    return float(mp2020_entry(c.structure, e_per_atom * len(c.structure), c.id, apply=True).energy_per_atom)


def e_above_hull(cands: Mapping[str, Candidate], hull) -> dict[str, float]:
    """{id: single-point e_above_hull (eV/atom), capped at CAP} for candidates with a single
    point, against `hull` as it stands (its phase diagram's hull energy at each composition,
    computed once per reduced composition)."""
    pd = hull.phase_diagram
    at: dict[str, float] = {}
    out = {}
    for cid, c in cands.items():
        e = (c.meta or {}).get(KEY)
        if e is None or not np.isfinite(e):
            continue
        comp = c.structure.composition
        key = comp.element_composition.reduced_formula
        if key not in at:
            try:
                at[key] = float(pd.get_hull_energy_per_atom(Composition(comp.element_composition.reduced_composition)))
            except Exception:  # an element outside the hull's system
                at[key] = np.nan
        if np.isfinite(at[key]):
            out[cid] = min(float(e) - at[key], CAP)
    return out
