"""A crystal as its Wyckoff sequence: space group, (letter, element, free xyz) per orbit, lattice.

Encoding goes through PyXtal's symmetry analysis (`pyxtal.from_seed`, standard setting); decoding
rebuilds every atom of the conventional cell from the Wyckoff orbit of each site, so a decoded
crystal has its space group's symmetry by construction.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from xtalforge.generators.wyckoff.tables import LATTICE_TYPES, LETTERS, WyckoffTables, letter_index

log = logging.getLogger(__name__)
MAX_Z = 100  # element vocabulary: Z = 1..100


@dataclass
class CrystalSeq:
    """One crystal in the generator's vocabulary.

    sg: space group number; letters: Wyckoff letter index per site (1 = 'a');
    species: atomic number per site; xyz: (n_sites, 3) fractional generator coordinates, with
    the axes that are not free set to 0; lattice: a, b, c in Å and alpha, beta, gamma in degrees
    of the conventional cell in the standard setting.
    """

    sg: int
    letters: list[int]
    species: list[int]
    xyz: np.ndarray
    lattice: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def n_sites(self) -> int:
        return len(self.letters)

    def n_atoms(self, tables: WyckoffTables) -> int:
        """Atoms in the conventional cell."""
        return int(sum(tables.mult[self.sg - 1, w] for w in self.letters))

    def to_json(self) -> dict:
        return {"sg": int(self.sg), "letters": [int(w) for w in self.letters],
                "species": [int(z) for z in self.species],
                "xyz": np.asarray(self.xyz, float).round(6).tolist(),
                "lattice": np.asarray(self.lattice, float).round(6).tolist()}

    @classmethod
    def from_json(cls, d: dict) -> CrystalSeq:
        return cls(int(d["sg"]), [int(w) for w in d["letters"]], [int(z) for z in d["species"]],
                   np.asarray(d["xyz"], float).reshape(-1, 3), np.asarray(d["lattice"], float))


def canonical_order(seq: CrystalSeq) -> CrystalSeq:
    """Sites sorted by Wyckoff letter (high site symmetry first), then element, then xyz, so
    one crystal has one sequence."""
    keys = [(w, z, *np.round(x, 4)) for w, z, x in zip(seq.letters, seq.species, seq.xyz)]
    order = sorted(range(seq.n_sites), key=lambda i: keys[i])
    return CrystalSeq(seq.sg, [seq.letters[i] for i in order], [seq.species[i] for i in order],
                      np.asarray(seq.xyz)[order].reshape(-1, 3), np.asarray(seq.lattice, float), seq.meta)


def encode(structure: Structure, tables: WyckoffTables, tol: float = 0.01) -> CrystalSeq | None:
    """The Wyckoff sequence of an ordered structure, or None when PyXtal cannot analyse it.

    `tol` is the symmetry tolerance in Å: relaxed structures carry numerical noise that would
    otherwise drop them to P1."""
    from pyxtal import pyxtal

    if not structure.is_ordered:
        return None
    x = pyxtal()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x.from_seed(structure, tol=tol, standard=True)
    except Exception as err:  # spglib or PyXtal reject degenerate inputs
        log.debug("from_seed failed: %s", err)
        return None
    sg = int(x.group.number)
    letters, species, xyz = [], [], []
    for site in x.atom_sites:
        li = letter_index(site.wp.letter)
        wp = tables.wyckoff(sg, li)
        pos = wp.search_generator(np.asarray(site.position, float), tol=tol)
        if pos is None:
            pos = np.asarray(site.position, float)
        p = wp.ops[0].operate(pos)
        p = (p - np.floor(p)) * tables.free[sg - 1, li]
        letters.append(li)
        species.append(Element(site.specie).Z)
        xyz.append(p)
    if not letters or max(species) > MAX_Z:
        return None
    lat = np.array(x.lattice.get_para(degree=True), float)
    return canonical_order(CrystalSeq(sg, letters, species, np.array(xyz).reshape(-1, 3), lat))


def orbit_positions(tables: WyckoffTables, sg: int, letter: int, xyz) -> np.ndarray:
    """Fractional coordinates of every atom of the Wyckoff orbit (space group `sg`, letter index
    `letter`) generated from the free coordinates `xyz`, in the conventional cell."""
    wp = tables.wyckoff(sg, letter)
    pos = wp.ops[0].operate(np.asarray(xyz, float) * tables.free[sg - 1, letter])
    out = np.array([op.operate(pos) for op in wp.ops])
    return out - np.floor(out)


def site_positions(seq: CrystalSeq, tables: WyckoffTables, i: int) -> np.ndarray:
    """Fractional coordinates of every atom of site i's orbit in the conventional cell."""
    return orbit_positions(tables, seq.sg, seq.letters[i], seq.xyz[i])


def full_lattice(seq: CrystalSeq, tables: WyckoffTables) -> Lattice:
    """The conventional lattice with the crystal system's constraints imposed (b = a, 90°, ...)."""
    a, b, c, al, be, ga = (float(v) for v in seq.lattice)
    lt = LATTICE_TYPES[tables.ltype[seq.sg - 1]]
    if lt == "cubic":
        b = c = a
    if lt in ("cubic", "tetragonal", "trigonal", "hexagonal"):
        b = a
    if lt in ("cubic", "tetragonal", "orthorhombic"):
        al = be = ga = 90.0
    elif lt in ("trigonal", "hexagonal"):
        al, be, ga = 90.0, 90.0, 120.0
    elif lt == "monoclinic":
        al = ga = 90.0
    return Lattice.from_parameters(a, b, c, al, be, ga)


def decode(seq: CrystalSeq, tables: WyckoffTables) -> Structure:
    """The conventional cell of `seq` (all atoms of every orbit)."""
    species, coords = [], []
    for i in range(seq.n_sites):
        pos = site_positions(seq, tables, i)
        coords.append(pos)
        species.extend([Element.from_Z(seq.species[i]).symbol] * len(pos))
    return Structure(full_lattice(seq, tables), species, np.concatenate(coords))


__all__ = ["CrystalSeq", "LETTERS", "canonical_order", "decode", "encode", "full_lattice", "site_positions"]
