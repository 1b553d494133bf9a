"""Drawing crystals from a Wyckoff model for a chemical system: decode, check, prefer
charge-balanced compositions.

Charge balance is a preference, applied by rejection (a prior of 0/1 over compositions, not a
mask): each draw of the model is split into crystals whose reduced formula passes SMACT's charge
neutrality and electronegativity test (`generators.compositions.is_charge_balanced`) and those
that do not; balanced compounds are taken first, then pure elements (neutral, but a campaign
learns nothing new from yet another elemental polymorph), and unbalanced ones only fill what
`oversample` rounds of drawing could not. A mask cannot do this exactly, because whether a
formula balances is only known once its last site is drawn. Metals and intermetallics are
therefore still possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.core import Composition, Element, Structure

from xtalforge.generators.wyckoff.encoding import CrystalSeq, decode
from xtalforge.generators.wyckoff.model import Constraints, WyckoffTransformer
from xtalforge.generators.wyckoff.sampler import sample
from xtalforge.generators.wyckoff.tables import WyckoffTables

MIN_DISTANCE = 0.5  # Å, as synthesis.validity
VOLUME_PER_ATOM = (5.0, 100.0)  # Å^3/atom, as synthesis.validity


def structure_problem(s: Structure) -> str:
    """'' when no two atoms are closer than MIN_DISTANCE Å and the density is that of a solid."""
    n = len(s)
    vpa = s.volume / n
    if not math.isfinite(vpa) or not VOLUME_PER_ATOM[0] <= vpa <= VOLUME_PER_ATOM[1]:
        return "volume"
    if min(s.lattice.abc) < MIN_DISTANCE:
        return "too_close"
    if n > 1:
        dm = s.distance_matrix
        np.fill_diagonal(dm, np.inf)
        if dm.min() < MIN_DISTANCE:
            return "too_close"
    return ""


def formula_of(q: CrystalSeq, tables: WyckoffTables) -> Composition:
    """Composition of the conventional cell of a sequence (without decoding coordinates)."""
    counts: dict[str, float] = {}
    for w, z in zip(q.letters, q.species):
        el = Element.from_Z(int(z)).symbol
        counts[el] = counts.get(el, 0) + int(tables.mult[q.sg - 1, w])
    return Composition(counts)


def charge_balanced(comp: Composition) -> bool:
    """SMACT test as the search generators use it (pure elements pass)."""
    from xtalforge.generators.compositions import is_charge_balanced

    return is_charge_balanced(comp)


@dataclass
class Drawn:
    seq: CrystalSeq
    structure: Structure  # primitive cell
    logp: float  # log-probability under the model (and the masks it was drawn with)
    balanced: bool


def decode_checked(seqs: list[CrystalSeq], logp: torch.Tensor, tables: WyckoffTables, max_atoms: int | None
                   ) -> tuple[list[Drawn], dict[str, int]]:
    """Decode sequences to primitive structures; keep those that pass the structural checks."""
    out, why = [], {}
    for q, lp in zip(seqs, logp.tolist()):
        if not math.isfinite(lp):
            why["dead_end"] = why.get("dead_end", 0) + 1
            continue
        try:
            s = decode(q, tables)
            p = structure_problem(s)
            if not p:
                s = s.get_primitive_structure()
                if max_atoms is not None and len(s) > max_atoms:
                    p = "too_many_atoms"
        except Exception:  # a degenerate sampled lattice
            p = "lattice"
        if p:
            why[p] = why.get(p, 0) + 1
        else:
            out.append(Drawn(q, s, lp, charge_balanced(s.composition)))
    return out, why


def draw(model: WyckoffTransformer, n: int, cons: Constraints, tables: WyckoffTables, gen: torch.Generator,
         temperature: float = 1.0, composition: dict[int, int] | None = None, prefer_balanced: bool = True,
         oversample: int = 4, batch: int | None = None) -> tuple[list[Drawn], dict[str, int]]:
    """Up to `n` valid crystals, charge-balanced compounds first when `prefer_balanced`, in at most
    `oversample` rounds of drawing. Returns them and the counts of rejected draws by reason
    (plus 'unbalanced_used' for unbalanced crystals that filled the remainder)."""
    taken: list[Drawn] = []
    elemental: list[Drawn] = []
    spare: list[Drawn] = []
    why: dict[str, int] = {}
    for _ in range(max(1, oversample)):
        if len(taken) >= n:
            break
        k = batch or max(4 * (n - len(taken)), 32)  # balanced compounds can be a small share
        seqs, logp = sample(model, k, cons, gen, temperature, composition=composition)
        got, w = decode_checked(seqs, logp, tables, cons.max_atoms)
        for key, v in w.items():
            why[key] = why.get(key, 0) + v
        for d in got:
            if not prefer_balanced or (d.balanced and len(d.structure.composition.elements) > 1):
                if len(taken) < n:
                    taken.append(d)
            elif d.balanced:
                elemental.append(d)
            else:
                spare.append(d)
    out = taken + elemental[: max(0, n - len(taken))]
    fill = spare[: max(0, n - len(out))]
    if fill:
        why["unbalanced_used"] = len(fill)
    return out + fill, why


__all__ = ["Drawn", "MIN_DISTANCE", "VOLUME_PER_ATOM", "charge_balanced", "decode_checked", "draw", "formula_of",
           "structure_problem"]
