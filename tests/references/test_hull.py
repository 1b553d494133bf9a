"""Hulls, MP2020 corrections of MLIP energies, and every source of reference entries."""

import csv
import gzip
import json
import os

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from threadpoolctl import threadpool_limits

from xtalforge.references.hull import (
    Hull,
    elemental_references,
    fetch_mp_entries,
    gather_references,
    load_reference_entries,
    mp2020_entry,
    mp_run_parameters,
)

# MP2020 per-atom corrections (pymatgen MP2020Compatibility.yaml), eV/atom of the anion or U metal
OXIDE, PEROXIDE, SUPEROXIDE, SULFIDE, FLUORIDE = -0.687, -0.465, -0.161, -0.503, -0.462
U_FE, U_MN, U_CO = -2.256, -1.668, -1.638


def _adjustments(entry) -> dict[str, float]:
    return {a.name.split("(")[-1].rstrip(")"): a.value for a in entry.energy_adjustments}


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
    assert e.parameters["run_type"] == "GGA+U" and e.parameters["hubbards"] == {"Fe": 5.3}


def test_anion_types_detected_on_chgnet_relaxed_structures(test_cifs, chgnet_model):
    """Peroxide / superoxide / sulfide come from the relaxed geometry (O-O and S neighbours):
    it must survive a CHGNet relaxation."""
    import torch

    from xtalforge.oracles.mlip.batched import relax_batched

    cifs = test_cifs / "pymatgen_test_structures"
    ko2 = Structure.from_spacegroup("I4/mmm", Lattice.tetragonal(4.03, 6.70), ["K", "O"],
                                    [[0, 0, 0], [0, 0, 0.4007]]).get_primitive_structure()  # O-O 1.33 Å
    mos2 = Structure.from_file(test_cifs / "cod_minerals_from_ase" / "cod_9007661.cif").get_primitive_structure()
    cases = {"Li2O2": (Structure.from_file(cifs / "Li2O2.cif"), "peroxide", PEROXIDE, "O"),
             "K2O2": (Structure.from_file(cifs / "K2O2.cif").get_primitive_structure(), "peroxide", PEROXIDE, "O"),
             "KO2": (ko2, "superoxide", SUPEROXIDE, "O"),
             "MoS2": (mos2, "S", SULFIDE, "S")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            relaxed = relax_batched(chgnet_model, [c[0] for c in cases.values()], fmax=0.1, max_steps=100)
    finally:
        torch.set_num_threads(threads)
    for (name, (_, kind, per_atom, anion)), r in zip(cases.items(), relaxed):
        assert r.ok, (name, r.error)
        entry = mp2020_entry(r.structure, r.energy)
        adj = _adjustments(entry)
        n_anion = r.structure.composition[anion]
        assert adj.get(kind) == pytest.approx(per_atom * n_anion, abs=1e-3), (name, adj)
        assert entry.parameters["run_type"] == "GGA"  # no +U metal: Mo gets U only in oxides/fluorides


def test_sulfate_sulfur_is_not_a_sulfide():
    """S bonded to O (a sulfate) gets no sulfide correction, only the oxide one."""
    d = 1.48 / np.sqrt(3) / 5.0  # S-O 1.48 Å along the cube diagonals of a 5 Å cell
    s = Structure(Lattice.cubic(5.0), ["Ba", "S", "O", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5]] + [[0.5 + a * d, 0.5 + b * d, 0.5 + a * b * d]
                                                  for a, b in [(1, 1), (1, -1), (-1, 1), (-1, -1)]])
    adj = _adjustments(mp2020_entry(s, -40.0))
    assert set(adj) == {"oxide"} and adj["oxide"] == pytest.approx(4 * OXIDE, abs=1e-3)


def test_fluorides_oxyfluorides_and_oxidation_state_decorations(test_cifs):
    lif = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.03), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    adj = _adjustments(mp2020_entry(lif, -4.9 * len(lif)))
    assert adj == {"F": pytest.approx(FLUORIDE * 4, abs=1e-3)}
    # La2CoO4F: F is the most electronegative element, so MP's U table is F's; Co gets +U
    lcof = Structure.from_file(test_cifs / "pymatgen_test_structures" / "La2CoO4F.cif")
    params = mp_run_parameters(lcof)
    assert params["run_type"] == "GGA+U" and params["hubbards"] == {"Co": 3.32}
    adj = _adjustments(mp2020_entry(lcof, -7.0 * len(lcof)))
    c = lcof.composition
    assert adj["oxide"] == pytest.approx(OXIDE * c["O"], abs=1e-3)
    assert adj["F"] == pytest.approx(FLUORIDE * c["F"], abs=1e-3)
    assert adj["Co"] == pytest.approx(U_CO * c["Co"], abs=1e-3)
    # Mn2+ / O2- decorated sites (CHGNet's MnO example) are corrected like the neutral structure
    mno = Structure.from_file(test_cifs / "chgnet_examples" / "MnO.cif")
    assert any(getattr(sp, "oxi_state", 0) for sp in mno.species)
    adj = _adjustments(mp2020_entry(mno, -8.0 * len(mno)))
    assert adj == {"oxide": pytest.approx(OXIDE, abs=1e-3), "Mn": pytest.approx(U_MN, abs=1e-3)}
    # Fe with S only: plain GGA, no U correction, sulfide correction
    fes = Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.45, 5.75), ["Fe", "S"],
                                    [[0, 0, 0], [1 / 3, 2 / 3, 0.25]])
    e = mp2020_entry(fes, -6.0 * len(fes))
    assert e.parameters["run_type"] == "GGA" and set(_adjustments(e)) == {"S"}
    # an element needs no correction
    assert mp2020_entry(Structure.from_file(test_cifs / "pymatgen_test_structures" / "Si.cif"), -10.8).correction == 0


def test_formation_energy_and_hull_position():
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
    p.write_text("formula,enthalpy\nCaO,1\n")
    with pytest.raises(ValueError, match="need columns formula and energy"):
        load_reference_entries(p)
    j = tmp_path / "refs.json"
    j.write_text(json.dumps([{"composition": "CaO"}]))
    with pytest.raises(ValueError, match="entry 0 is not a pymatgen entry"):
        load_reference_entries(j)
    with pytest.raises(FileNotFoundError):
        load_reference_entries(tmp_path / "nothing.json")


def _ca_o_entries(test_cifs) -> list:
    mu = {k: v.energy_per_atom for k, v in elemental_references(["Ca", "O"]).items()}
    cao = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.8), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    e_cao = (mu["Ca"] + mu["O"] - 2 * 3.0) * 4  # -3 eV/atom formation energy, 8-atom cell
    cao2 = ComputedEntry("CaO2", (mu["Ca"] + 2 * mu["O"]) - 3 * 2.2, entry_id="cao2")  # -2.2 eV/atom: on the hull
    return [ComputedStructureEntry(cao, e_cao, entry_id="cao"), cao2]


@pytest.mark.parametrize("layout", ["list", "dict", "entries", "single", "gz"])
def test_reference_json_layouts(tmp_path, test_cifs, layout):
    entries = _ca_o_entries(test_cifs)
    dicts = [e.as_dict() for e in entries]
    data = {"list": dicts, "dict": {e.entry_id: d for e, d in zip(entries, dicts)}, "entries": {"entries": dicts},
            "single": dicts[0], "gz": dicts}[layout]
    p = tmp_path / ("refs.json.gz" if layout == "gz" else "refs.json")
    raw = json.dumps(data).encode()
    p.write_bytes(gzip.compress(raw) if layout == "gz" else raw)
    got = load_reference_entries(p)
    want = entries[:1] if layout == "single" else entries
    assert [type(e) for e in got] == [type(e) for e in want]
    assert [e.energy for e in got] == pytest.approx([e.energy for e in want])
    if layout != "single":
        hull = Hull(["Ca", "O"], got)
        assert sorted(e.composition.reduced_formula for e in hull.phase_diagram.stable_entries) == [
            "Ca", "CaO", "CaO2", "O2"]


def test_reference_csv_formula_and_energy(tmp_path, test_cifs):
    mu = {k: v.energy_per_atom for k, v in elemental_references(["Ca", "O"]).items()}
    p = tmp_path / "refs.csv"
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["formula", "energy", "energy_per_atom", "name"])
        w.writerow(["Ca2O2", 2 * (mu["Ca"] + mu["O"]) - 4 * 3.0, "", "rocksalt"])  # per formula as written
        w.writerow(["CaO2", "", (mu["Ca"] + 2 * mu["O"]) / 3 - 1.5, ""])
    got = load_reference_entries(p)
    assert [e.name for e in got] == ["rocksalt", "CaO2"]
    hull = Hull(["Ca", "O"], got)
    assert hull.e_form_per_atom(got[0]) == pytest.approx(-3.0, abs=1e-9)
    assert hull.e_form_per_atom(got[1]) == pytest.approx(-1.5, abs=1e-9)


def test_references_combine_files_cache_and_campaign(tmp_path, test_cifs, monkeypatch):
    """A user file, a Materials Project cache (read offline) and the campaign's own relaxations."""
    monkeypatch.delenv("MP_API_KEY", raising=False)
    entries = _ca_o_entries(test_cifs)
    user = tmp_path / "user.json"
    user.write_text(json.dumps([entries[1].as_dict()]))  # CaO2 only
    (tmp_path / "mp").mkdir()
    (tmp_path / "mp" / "mp_entries_Ca-O.json.gz").write_bytes(gzip.compress(json.dumps([entries[0].as_dict()]).encode()))
    refs = gather_references(["O", "Ca"], files=[user], mp_api=None, cache_dir=tmp_path / "mp")
    assert sorted(e.composition.reduced_formula for e in refs) == ["CaO", "CaO2"]
    hull = Hull(["Ca", "O"], refs)
    cao2 = refs[0]
    assert hull.e_above_hull(cao2) == pytest.approx(0.0, abs=1e-9)
    # the campaign finds a CaO2 0.2 eV/atom lower: the file's CaO2 now sits 0.2 above the hull
    hull.add("found", PDEntry("CaO2", cao2.energy - 3 * 0.2))
    assert hull.e_above_hull(cao2) == pytest.approx(0.2, abs=1e-9)
    assert gather_references(["Ca", "O"], files=[user], mp_api=False, cache_dir=tmp_path / "mp") != refs


def test_materials_project_without_key_or_package_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="MP_API_KEY"):
        gather_references(["Ca", "O"], mp_api=True, cache_dir=tmp_path)
    assert gather_references(["Ca", "O"], mp_api=None, cache_dir=tmp_path) == []  # optional: skipped
    try:
        import mp_api  # noqa: F401
    except ImportError:
        monkeypatch.setenv("MP_API_KEY", "not-a-real-key")
        with pytest.raises(RuntimeError, match="mp-api"):
            fetch_mp_entries(["Ca", "O"], tmp_path)


@pytest.mark.online
def test_materials_project_fetch_is_cached(tmp_path):
    if not os.environ.get("MP_API_KEY"):
        pytest.skip("MP_API_KEY is not set")
    pytest.importorskip("mp_api")
    try:
        entries = fetch_mp_entries(["Ca", "O"], tmp_path)
    except Exception as err:  # offline, or MP down
        pytest.skip(f"Materials Project unreachable: {err}")
    assert any(e.composition.reduced_formula == "CaO" for e in entries)
    assert (tmp_path / "mp_entries_Ca-O.json.gz").is_file()
    again = fetch_mp_entries(["O", "Ca"], tmp_path, api_key="unused: read from the cache")
    assert len(again) == len(entries)
