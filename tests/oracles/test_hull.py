import pytest
from pymatgen.core import Structure

from xtalforge.oracles.hull import Hull, elemental_references, load_reference_entries, mp2020_entry


def test_li_fe_o_has_its_11_stable_phases(data_dir):
    entries = load_reference_entries(data_dir / "pymatgen_li_fe_o_pd_entries" / "pd_entries_test.csv")
    hull = Hull(["Li", "Fe", "O"], entries, use_mp_elements=False)
    stable = sorted(e.composition.reduced_formula for e in hull.phase_diagram.stable_entries)
    assert stable == sorted(["Fe", "Fe2O3", "Fe3O4", "FeO", "Li", "Li2FeO3", "Li2O", "Li2O2",
                             "Li5FeO4", "LiFeO2", "O2"])
    worst = max(hull.e_above_hull(e) for e in entries)
    assert worst == pytest.approx(2.53, abs=0.01)


def test_shipped_elemental_references():
    refs = elemental_references()
    assert len(refs) == 89
    assert refs["O"].energy_per_atom == pytest.approx(-4.9467, abs=1e-3)
    assert refs["Fe"].energy_per_atom == pytest.approx(-8.47, abs=1e-2)
    with pytest.raises(KeyError, match="Xe|Og"):
        elemental_references(["Og"])


def test_mp2020_corrections_on_an_oxide(test_cifs):
    s = Structure.from_file(test_cifs / "camd" / "fe2o3.cif")
    raw = -7.0 * len(s)
    e = mp2020_entry(s, raw)
    names = " ".join(a.name for a in e.energy_adjustments)
    assert "oxide" in names and "Fe" in names
    # 6 O at -0.687 and 4 Fe at -2.256 eV per atom in this 10-atom cell
    assert e.correction == pytest.approx(-0.687 * 6 - 2.256 * 4, abs=0.05)


def test_formation_energy_and_hull_position():
    from pymatgen.analysis.phase_diagram import PDEntry

    refs = elemental_references(["Ca", "O"])
    hull = Hull(["Ca", "O"])
    mu = {k: v.energy_per_atom for k, v in refs.items()}
    cao = PDEntry("CaO", 2 * (mu["Ca"] + mu["O"]) / 2 - 2 * 3.0)  # 3 eV/atom below the elements
    hull.add("cao", cao)
    assert hull.e_form_per_atom(cao) == pytest.approx(-3.0, abs=1e-6)
    assert hull.e_above_hull(cao) == pytest.approx(0.0, abs=1e-9)
    worse = PDEntry("CaO", cao.energy + 2 * 0.1)
    assert hull.e_above_hull(worse) == pytest.approx(0.1, abs=1e-6)


def test_bad_reference_file_is_explained(tmp_path):
    p = tmp_path / "refs.csv"
    p.write_text("formula,energy\nCaO,not-a-number\n")
    with pytest.raises(ValueError, match="line 2"):
        load_reference_entries(p)
