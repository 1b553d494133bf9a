"""`xtalforge hull`: a rediscovered CaO with real CHGNet, and every kind of bad input."""

import csv
import re

import pytest
from pymatgen.core import Lattice, Structure

from xtalforge.cli.hull import COLUMNS
from xtalforge.cli.main import main

from .conftest import rocksalt_cao


@pytest.fixture
def cifs(tmp_path):
    rocksalt_cao().to(filename=str(tmp_path / "cao.cif"))
    Structure(Lattice.cubic(2.9), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(tmp_path / "cscl.cif"))
    Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
              [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]).to(filename=str(tmp_path / "sto.cif"))
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a 4\nnonsense\n")
    return tmp_path


def test_rocksalt_cao_is_a_rediscovery(cifs, tmp_path, capsys):
    out = tmp_path / "table.csv"
    rc = main(["hull", str(cifs / "cao.cif"), str(cifs / "cscl.cif"), "--chemsys", "Ca-O", "--references", "snapshot",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--threads", "1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    with out.open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    cao, cscl = rows
    assert cao["formula"] == "CaO" and cao["known_match"] == "mp-2605" and cao["novel"] == "False"
    assert abs(float(cao["e_above_hull"])) < 0.01  # it is the known ground state, relaxed by the same CHGNet
    assert "CaO (mp-2605)" in cao["decomposition"]
    assert cscl["known_match"] == "" and cscl["novel"] == "True"
    assert float(cscl["e_above_hull"]) > 0.1  # CsCl-type CaO: far above rocksalt
    assert "mp-2605" in printed and "not all of MP" in printed
    # as given, without relaxing: the known phases come from the cache
    rc = main(["hull", str(cifs / "cao.cif"), "--chemsys", "Ca-O", "--references", "snapshot", "--no-relax",
               "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    printed = capsys.readouterr().out
    assert rc == 0 and "mp-2605" in printed
    assert re.search(r"(\d+) known phases relaxed by the MLIP \(\1 from the cache\)", printed), printed


@pytest.mark.parametrize(("case", "message"), [
    ("outside", "sto.cif: SrTiO3 has Sr, Ti, outside the chemical system Ca-O"),
    ("unparsable", "broken.cif: not a readable structure file"),
    ("missing", "nothing.cif: no such file"),
    ("no reference", "no Materials Project elemental reference for Po"),
    ("not an element", "Qq is not an element"),
    ("mp-api", "mp-api: "),
])
def test_bad_input_is_one_line_exit_2_nothing_written(cifs, tmp_path, capsys, monkeypatch, case, message):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    out = tmp_path / "table.csv"
    files = {"outside": [cifs / "sto.cif"], "unparsable": [cifs / "broken.cif"],
             "missing": [cifs / "nothing.cif"]}.get(case, [cifs / "cao.cif"])
    chemsys = {"no reference": "Ca-O-Po", "not an element": "Ca-Qq"}.get(case, "Ca-O")
    refs = ["mp-api"] if case == "mp-api" else ["snapshot"]
    rc = main(["hull", *map(str, files), "--chemsys", chemsys, "--references", *refs, "--out", str(out),
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_every_bad_file_gets_its_line(cifs, tmp_path, capsys):
    rc = main(["hull", str(cifs / "cao.cif"), str(cifs / "sto.cif"), str(cifs / "broken.cif"),
               "--chemsys", "Ca-O", "--out", str(tmp_path / "nowhere" / "t.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 3
    assert "sto.cif" in err[0] and "broken.cif" in err[1] and "nowhere" in err[2]
