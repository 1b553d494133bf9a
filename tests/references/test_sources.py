"""Where known phases come from: the snapshot, mp-api (with its fallback), user files."""

import gzip
import json
import math

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from xtalforge.references.hull import elemental_references
from xtalforge.references.known import KnownMaterialsError, default_sources, load_known, parse_chemsys

from .conftest import rocksalt_cao


def test_user_structures_and_entries(tmp_path):
    cscl = Structure(Lattice.cubic(2.9), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cscl.to(filename=str(tmp_path / "cscl_cao.cif"))
    Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
              [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]).to(filename=str(tmp_path / "sto.cif"))
    mu = {k: v.energy_per_atom for k, v in elemental_references(["Ca", "O"]).items()}
    (tmp_path / "refs.csv").write_text(f"formula,energy_per_atom,name\nCaO2,{(mu['Ca'] + 2 * mu['O']) / 3 - 1.5},peroxide\n")
    known = load_known("Ca-O", sources=[tmp_path / "cscl_cao.cif", tmp_path / "sto.cif", tmp_path / "refs.csv"])
    ids = {p.material_id: p for p in known.phases}
    assert set(ids) == {"cscl_cao", "refs:peroxide"}  # SrTiO3 is outside Ca-O: left out
    assert ids["cscl_cao"].structure is not None and math.isnan(ids["cscl_cao"].energy_per_atom)
    assert ids["refs:peroxide"].has_energy and ids["refs:peroxide"].structure is None
    assert [p.material_id for p in known.with_energy()] == ["refs:peroxide"]
    assert len(known.sources) == 3 and "user file" in known.sources[0]
    # a folder of CIFs is a source too
    folder = load_known("Ca-O", sources=[tmp_path])
    assert {p.material_id for p in folder.phases} == {"cscl_cao"}


def test_broken_user_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.cif").write_text("this is not a CIF\n")
    with pytest.raises(KnownMaterialsError, match="bad.cif: not a readable structure"):
        load_known("Ca-O", sources=[tmp_path / "bad.cif"])
    (tmp_path / "bad.csv").write_text("formula,enthalpy\nCaO,1\n")
    with pytest.raises(KnownMaterialsError, match="need columns formula and energy"):
        load_known("Ca-O", sources=[tmp_path / "bad.csv"])
    with pytest.raises(KnownMaterialsError, match="no such reference file"):
        load_known("Ca-O", sources=[tmp_path / "missing.json"])


def test_chemical_systems_are_checked():
    assert parse_chemsys("Ti-O-Ca") == ("Ca", "O", "Ti")
    with pytest.raises(KnownMaterialsError, match="Xx is not an element"):
        parse_chemsys("Ca-Xx-O")
    with pytest.raises(KnownMaterialsError, match="no Materials Project elemental reference for Po"):
        parse_chemsys("Ca-Po")


def test_mp_api_unreachable_falls_back_to_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    assert default_sources() == ["snapshot"]
    known = load_known("Ca-O", sources=["mp-api"], mp_cache_dir=tmp_path)
    assert known.warnings and "MP_API_KEY" in known.warnings[0] and "shipped snapshot" in known.warnings[0]
    assert "mp-2605" in known.by_id() and known.sources[0].startswith("snapshot")
    with pytest.raises(KnownMaterialsError, match="mp-api: .*MP_API_KEY"):
        load_known("Ca-O", sources=["mp-api"], strict=True, mp_cache_dir=tmp_path)
    monkeypatch.setenv("MP_API_KEY", "set")
    assert default_sources() == ["mp-api"]


def test_mp_api_entries_from_the_cache(tmp_path, monkeypatch):
    """What mp-api returned once (kept in the cache) is read without the network."""
    monkeypatch.delenv("MP_API_KEY", raising=False)
    mu = {k: v.energy_per_atom for k, v in elemental_references(["Ca", "O"]).items()}
    s = rocksalt_cao()
    e = ComputedStructureEntry(s, ((mu["Ca"] + mu["O"]) / 2 - 3.3) * len(s), entry_id="mp-2605-GGA",
                               data={"material_id": "mp-2605"})
    (tmp_path / "mp_entries_Ca-O.json.gz").write_bytes(gzip.compress(json.dumps([e.as_dict()]).encode()))
    known = load_known("Ca-O", sources=["mp-api", "snapshot"], mp_cache_dir=tmp_path)
    cao = known.by_id()["mp-2605"]
    assert cao.source == "mp-api" and cao.energy_per_atom == pytest.approx(e.energy_per_atom)
    assert known.warnings == [] and known.sources[0].startswith("Materials Project via mp-api")
    # the snapshot adds what mp-api did not return, never a second mp-2605
    assert sum(p.material_id == "mp-2605" for p in known.phases) == 1 and len(known.phases) > 1
