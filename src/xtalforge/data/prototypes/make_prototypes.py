"""Writes the shipped prototype CIFs: textbook structure types, built from their space group,
Wyckoff positions and a representative compound's lattice constants (room-temperature values
rounded to ~0.01 Å; exact numbers do not matter, the substitution generator rescales the volume).

Run from the repository root to regenerate:  .venv/bin/python src/xtalforge/data/prototypes/make_prototypes.py
"""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Lattice, Species, Structure
from pymatgen.io.cif import CifWriter

HERE = Path(__file__).resolve().parent


def _sp(*symbols: str) -> list[Species]:
    return [Species.from_str(s) for s in symbols]


def hexa(a: float, c: float) -> Lattice:
    return Lattice.hexagonal(a, c)


# name: (structure type, space group symbol, lattice, decorated species, fractional coordinates)
PROTOTYPES: dict[str, tuple[str, str, Lattice, list[str], list[list[float]]]] = {
    "rocksalt_MgO": ("rocksalt (B1)", "Fm-3m", Lattice.cubic(4.21), ["Mg2+", "O2-"],
                     [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "cscl_CsCl": ("CsCl (B2)", "Pm-3m", Lattice.cubic(4.12), ["Cs+", "Cl-"],
                  [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "zincblende_ZnS": ("zincblende (B3)", "F-43m", Lattice.cubic(5.41), ["Zn2+", "S2-"],
                       [[0, 0, 0], [0.25, 0.25, 0.25]]),
    "wurtzite_ZnO": ("wurtzite (B4)", "P6_3mc", hexa(3.25, 5.21), ["Zn2+", "O2-"],
                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]),
    "nias_NiAs": ("nickeline (B8_1)", "P6_3/mmc", hexa(3.62, 5.03), ["Ni3+", "As3-"],
                  [[0, 0, 0], [1 / 3, 2 / 3, 0.25]]),
    "fluorite_CaF2": ("fluorite (C1)", "Fm-3m", Lattice.cubic(5.46), ["Ca2+", "F-"],
                      [[0, 0, 0], [0.25, 0.25, 0.25]]),
    "antifluorite_Li2O": ("antifluorite", "Fm-3m", Lattice.cubic(4.61), ["O2-", "Li+"],
                          [[0, 0, 0], [0.25, 0.25, 0.25]]),
    "rutile_TiO2": ("rutile (C4)", "P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti4+", "O2-"],
                    [[0, 0, 0], [0.305, 0.305, 0]]),
    "cdi2_CdI2": ("CdI2 (C6), layered", "P-3m1", hexa(4.24, 6.84), ["Cd2+", "I-"],
                  [[0, 0, 0], [1 / 3, 2 / 3, 0.25]]),
    "mos2_MoS2": ("molybdenite 2H (C7), layered", "P6_3/mmc", hexa(3.16, 12.29), ["Mo4+", "S2-"],
                  [[1 / 3, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.621]]),
    "cuprite_Cu2O": ("cuprite (C3)", "Pn-3m", Lattice.cubic(4.27), ["O2-", "Cu+"],
                     [[0, 0, 0], [0.25, 0.25, 0.25]]),
    "pyrite_FeS2": ("pyrite (C2)", "Pa-3", Lattice.cubic(5.42), ["Fe2+", "S-"],
                    [[0, 0, 0], [0.385, 0.385, 0.385]]),
    "reo3_ReO3": ("ReO3 (D0_9)", "Pm-3m", Lattice.cubic(3.75), ["Re6+", "O2-"],
                  [[0, 0, 0], [0.5, 0, 0]]),
    "corundum_Al2O3": ("corundum (D5_1)", "R-3c", hexa(4.76, 12.99), ["Al3+", "O2-"],
                       [[0, 0, 0.352], [0.306, 0, 0.25]]),
    "perovskite_SrTiO3": ("cubic perovskite (E2_1)", "Pm-3m", Lattice.cubic(3.905), ["Sr2+", "Ti4+", "O2-"],
                          [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
    "ilmenite_FeTiO3": ("ilmenite", "R-3", hexa(5.09, 14.09), ["Fe2+", "Ti4+", "O2-"],
                        [[0, 0, 0.3554], [0, 0, 0.1464], [0.317, 0.020, 0.2440]]),
    "layered_LiCoO2": ("alpha-NaFeO2 layered ABO2", "R-3m", hexa(2.82, 14.05), ["Li+", "Co3+", "O2-"],
                       [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2604]]),
    "delafossite_CuFeO2": ("delafossite ABO2", "R-3m", hexa(3.04, 17.17), ["Cu+", "Fe3+", "O2-"],
                           [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.1066]]),
    "spinel_MgAl2O4": ("spinel (H1_1)", "Fd-3m", Lattice.cubic(8.08), ["Mg2+", "Al3+", "O2-"],
                       [[0, 0, 0], [0.625, 0.625, 0.625], [0.3874, 0.3874, 0.3874]]),
    "k2nif4_Sr2TiO4": ("K2NiF4, Ruddlesden-Popper n=1", "I4/mmm", Lattice.tetragonal(3.88, 12.60),
                       ["Sr2+", "Ti4+", "O2-", "O2-"],
                       [[0, 0, 0.355], [0, 0, 0], [0, 0.5, 0], [0, 0, 0.16]]),
    "rp2_Sr3Ti2O7": ("Ruddlesden-Popper n=2", "I4/mmm", Lattice.tetragonal(3.90, 20.38),
                     ["Sr2+", "Sr2+", "Ti4+", "O2-", "O2-", "O2-"],
                     [[0, 0, 0.5], [0, 0, 0.3172], [0, 0, 0.0975], [0, 0, 0], [0, 0, 0.1936], [0, 0.5, 0.0965]]),
    "scheelite_CaWO4": ("scheelite", "I4_1/a", Lattice.tetragonal(5.24, 11.38), ["Ca2+", "W6+", "O2-"],
                        [[0, 0, 0.5], [0, 0, 0], [0.1504, 0.7585, 0.0861]]),
    "pyrochlore_Y2Ti2O7": ("pyrochlore A2B2O7", "Fd-3m", Lattice.cubic(10.09), ["Y3+", "Ti4+", "O2-", "O2-"],
                           [[0.625, 0.625, 0.625], [0.125, 0.125, 0.125], [0.453, 0.25, 0.25], [0.5, 0.5, 0.5]]),
    "cacl2_CaCl2": ("CaCl2 (distorted rutile)", "Pnnm", Lattice.orthorhombic(6.24, 6.43, 4.20), ["Ca2+", "Cl-"],
                    [[0, 0, 0], [0.275, 0.325, 0]]),
    "anatase_TiO2": ("anatase (C5)", "I4_1/amd", Lattice.tetragonal(3.785, 9.514), ["Ti4+", "O2-"],
                     [[0, 0, 0], [0, 0, 0.2083]]),
    "a_type_La2O3": ("A-type rare-earth sesquioxide (La2O3)", "P-3m1", hexa(3.94, 6.13),
                              ["La3+", "O2-", "O2-"],
                              [[1 / 3, 2 / 3, 0.246], [1 / 3, 2 / 3, 0.647], [0, 0, 0]]),
}


def build(name: str) -> Structure:
    _kind, sg, lat, species, coords = PROTOTYPES[name]
    return Structure.from_spacegroup(sg, lat, _sp(*species), coords, tol=0.01)


def main() -> None:
    for name in PROTOTYPES:
        s = build(name)
        CifWriter(s, symprec=None).write_file(HERE / f"{name}.cif")
        print(f"{name:28s} {s.composition.reduced_formula:10s} {len(s):3d} atoms (conventional)")


if __name__ == "__main__":
    main()
