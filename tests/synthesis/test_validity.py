"""The hard validity filter: compositions and structures, real crystals and broken ones."""

import pytest
from pymatgen.core import Lattice, Structure

from xtalforge.synthesis.composition import composition_problems, parse_formula
from xtalforge.structure import ValidityLimits, structure_problem

KNOWN = ["NaCl", "Fe2O3", "Fe3O4", "BaTiO3", "SrTiO3", "LiFePO4", "Li2O2", "K2O2", "KO2", "Al2Cu",
         "Si", "CaC2", "Li3N", "MoS2", "Ni3S2", "CoAsS", "La2CoO4F", "Li3V2(PO4)3", "TlBiSe2"]
INVALID = ["NaCl2", "Ca2O", "TiO4", "Fe2O5", "MgO3", "NaCl3", "Li3O"]


@pytest.mark.parametrize("formula", KNOWN)
def test_known_compounds_pass(formula):
    assert composition_problems(formula) == []


@pytest.mark.parametrize("formula", INVALID)
def test_unbalanced_compounds_fail(formula):
    problems = composition_problems(formula)
    assert len(problems) == 1 and "charge-balanced" in problems[0]


def test_other_compositional_reasons():
    assert "noble gas" in composition_problems("XeO3")[0]
    assert "radioactive" in composition_problems("PuO2")[0]
    assert "outside" in composition_problems("BaTiO3", elements=("Ca", "Ti", "O"))[0]
    assert "Qq" in composition_problems("Qq2O")[0]
    with pytest.raises(ValueError, match="empty"):
        parse_formula("  ")


def _problems(s: Structure) -> list[str]:
    out = [p] if (p := structure_problem(s, ValidityLimits())) else []
    return out + (composition_problems(s.composition.element_composition) if len(s) else [])


def test_real_crystals_pass_and_broken_ones_fail(test_cifs):
    names = ["SrTiO3", "LiFePO4", "Li2O", "K2O2", "TiO2", "VO2", "Si", "CsCl"]
    for name in names:
        s = Structure.from_file(test_cifs / "pymatgen_test_structures" / f"{name}.cif")
        assert _problems(s) == [], name
    assert _problems(Structure.from_file(test_cifs / "camd" / "fe2o3.cif")) == []

    disordered = Structure.from_file(test_cifs / "pymatgen_test_structures" / "Li10GeP2S12.cif")
    assert "disordered" in structure_problem(disordered, ValidityLimits())
    # two atoms 0.3 Å apart and a composition that cannot be charge-balanced: both reported
    fused = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.575]])
    problems = _problems(fused)
    assert any("apart" in p for p in problems) and any("charge-balanced" in p for p in problems)
