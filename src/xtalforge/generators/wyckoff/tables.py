"""Wyckoff tables of the 230 space groups (standard settings, conventional cells), from PyXtal.

A Wyckoff position is indexed by its letter: 'a'..'z' -> 1..26, 'A' -> 27 (only Pmmm has a 27th);
index 0 is the stop token that ends a crystal's list of sites.
"""

from __future__ import annotations

import string
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

N_SG = 230
N_LETTERS = 28  # 0 = stop, 1..27 = letters
LETTERS = "_" + string.ascii_lowercase + "A"

# crystal system -> which of the six lattice parameters (a, b, c, alpha, beta, gamma) are free
LATTICE_TYPES = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
LATTICE_FREE = {
    "triclinic": (1, 1, 1, 1, 1, 1),
    "monoclinic": (1, 1, 1, 0, 1, 0),
    "orthorhombic": (1, 1, 1, 0, 0, 0),
    "tetragonal": (1, 0, 1, 0, 0, 0),
    "trigonal": (1, 0, 1, 0, 0, 0),  # R groups in the hexagonal setting, as PyXtal uses
    "hexagonal": (1, 0, 1, 0, 0, 0),
    "cubic": (1, 0, 0, 0, 0, 0),
}


def letter_index(letter: str) -> int:
    """'a' -> 1 ... 'z' -> 26, 'A' -> 27."""
    i = LETTERS.find(letter)
    if i <= 0:
        raise ValueError(f"not a Wyckoff letter: {letter!r}")
    return i


def _frozen_axes(wp) -> list[int]:
    """Axes of the generator that carry no free parameter (PyXtal's convention, so that
    `wp.get_position_from_free_xyzs` and our decoding agree)."""
    fa = wp.get_frozen_axis()
    if fa is None:  # PyXtal leaves a few low-symmetry special forms undecided
        rot = wp.ops[0].rotation_matrix
        fa = [ax for ax in range(3) if not np.any(rot[:, ax])]
    return list(fa)


@dataclass(frozen=True)
class WyckoffTables:
    """Dense per-(space group, letter) arrays; row sg-1 belongs to space group sg.

    mult: atoms of the Wyckoff orbit in the conventional cell (0 where the letter does not exist);
    dof: free coordinates; free: (230, 28, 3) mask of the generator's free axes;
    cellsize: lattice points per conventional cell (1, 2, 3 or 4); ltype: index into LATTICE_TYPES.
    """

    mult: np.ndarray
    dof: np.ndarray
    free: np.ndarray
    cellsize: np.ndarray
    ltype: np.ndarray
    _groups: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def valid(self) -> np.ndarray:
        return self.mult > 0

    def lattice_free(self) -> np.ndarray:
        """(230, 6) mask of free lattice parameters per space group."""
        return np.array([LATTICE_FREE[LATTICE_TYPES[t]] for t in self.ltype], dtype=bool)

    def wyckoff(self, sg: int, letter: int):
        """PyXtal's Wyckoff_position for space group `sg` and letter index `letter`."""
        g = self._groups.get(sg)
        if g is None:
            from pyxtal.symmetry import Group

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = Group(sg)
            self._groups[sg] = g  # per-instance cache of immutable PyXtal objects
        for wp in g.Wyckoff_positions:
            if wp.letter == LETTERS[letter]:
                return wp
        raise KeyError(f"space group {sg} has no Wyckoff position {LETTERS[letter]!r}")

    def __getstate__(self) -> dict:
        # PyXtal groups are rebuilt on demand; only the arrays travel to Ray workers
        return {k: getattr(self, k) for k in ("mult", "dof", "free", "cellsize", "ltype")}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_groups", {})


@lru_cache(maxsize=1)
def wyckoff_tables() -> WyckoffTables:
    """Build the tables once per process (about 3 s: PyXtal parses all 230 groups)."""
    from pyxtal.symmetry import Group

    mult = np.zeros((N_SG, N_LETTERS), dtype=np.int64)
    dof = np.zeros((N_SG, N_LETTERS), dtype=np.int64)
    free = np.zeros((N_SG, N_LETTERS, 3), dtype=bool)
    cellsize = np.ones(N_SG, dtype=np.int64)
    ltype = np.zeros(N_SG, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sg in range(1, N_SG + 1):
            g = Group(sg)
            cellsize[sg - 1] = g.cellsize()
            ltype[sg - 1] = LATTICE_TYPES.index(g.lattice_type)
            for wp in g.Wyckoff_positions:
                i = letter_index(wp.letter)
                mult[sg - 1, i] = wp.multiplicity
                dof[sg - 1, i] = wp.get_dof()
                fr = _frozen_axes(wp)
                free[sg - 1, i] = [ax not in fr for ax in range(3)]
    for a in (mult, dof, free, cellsize, ltype):
        a.setflags(write=False)
    return WyckoffTables(mult, dof, free, cellsize, ltype)
