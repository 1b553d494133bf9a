"""`xtalforge synth train | score` end to end, and the errors a user sees for bad files."""

import csv
import itertools

import numpy as np
import pytest

from xtalforge.cli.main import main
from xtalforge.config import load_config, parse_config
from xtalforge.synthesis.model import PUSynthesizabilityModel

CATIONS = {"Li": 1, "Na": 1, "K": 1, "Cs": 1, "Mg": 2, "Ca": 2, "Sr": 2, "Ba": 2, "Al": 3, "Y": 3, "La": 3, "Zr": 4}
ANIONS = {"O": 2, "S": 2, "F": 1, "Cl": 1, "Br": 1, "N": 3}


def _write(path, header, rows):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def files(tmp_path):
    from pymatgen.core import Composition

    known = [Composition({m: qx, x: qm}).reduced_formula
             for (m, qm), (x, qx) in itertools.product(CATIONS.items(), ANIONS.items())]
    rng = np.random.default_rng(0)
    pool = ["Fe", "Co", "Ni", "Cu", "Ru", "Pd", "Ag", "Pt", "Au", "Sn", "Sb", "Bi"]
    hypo = sorted({Composition({e: int(rng.integers(1, 5)) for e in rng.choice(pool, 3, replace=False)}).reduced_formula
                   for _ in range(150)})
    return (_write(tmp_path / "known.csv", ["formula", "source"], [[f, "textbook"] for f in known]),
            _write(tmp_path / "hypo.csv", ["id", "formula"], [[i, f] for i, f in enumerate(hypo)]))


def test_train_then_score(files, tmp_path, test_cifs, capsys):
    known, hypo = files
    model = tmp_path / "synth.npz"
    assert main(["synth", "train", str(known), "--unlabeled", str(hypo), "--out", str(model),
                 "--bags", "30", "--cv", "3"]) == 0
    out = capsys.readouterr().out
    assert "3-fold PU ROC AUC" in out and model.is_file()
    assert PUSynthesizabilityModel.load(model).meta["cv"]["roc_auc_mean"] >= 0.9

    todo = _write(tmp_path / "todo.csv", ["name", "formula"], [["salt", "KCl"], ["mess", "Fe3Pt2Sb"], ["oxide", "SrO"]])
    scored = tmp_path / "scored.csv"
    assert main(["synth", "score", str(model), str(todo), "--out", str(scored)]) == 0
    rows = list(csv.DictReader(scored.open()))
    assert [r["name"] for r in rows] == ["salt", "mess", "oxide"]
    p = {r["name"]: float(r["p_synth"]) for r in rows}
    assert all(0 <= v <= 1 for v in p.values())
    assert p["salt"] > p["mess"] and p["oxide"] > p["mess"]

    # a cif column works too (CDVAE-style CSVs)
    cifs = [(test_cifs / "pymatgen_test_structures" / f"{n}.cif").read_text() for n in ("SrTiO3", "Li2O")]
    cif_csv = _write(tmp_path / "cifs.csv", ["material_id", "cif"], [["a", cifs[0]], ["b", cifs[1]]])
    assert main(["synth", "score", str(model), str(cif_csv), "--out", str(tmp_path / "cifs_scored.csv")]) == 0
    back = list(csv.DictReader((tmp_path / "cifs_scored.csv").open()))
    assert [r["material_id"] for r in back] == ["a", "b"] and all(r["p_synth"] for r in back)


def test_train_without_unlabeled_draws_artificial_formulas(files, tmp_path, capsys):
    known, _ = files
    assert main(["synth", "train", str(known), "--out", str(tmp_path / "m"), "--bags", "10"]) == 0
    assert "artificial formulas" in capsys.readouterr().out
    assert (tmp_path / "m.npz").is_file()


def test_bad_files_are_explained(files, tmp_path, capsys):
    known, hypo = files
    nocol = _write(tmp_path / "nocol.csv", ["name", "energy"], [["NaCl", "1"]])
    assert main(["synth", "train", str(nocol), "--unlabeled", str(hypo), "--out", str(tmp_path / "m")]) == 2
    assert "needs a 'formula' or a 'cif' column" in capsys.readouterr().err

    bad = _write(tmp_path / "bad.csv", ["formula"], [["NaCl"], ["KBr"], ["Zz2O3"]])
    assert main(["synth", "train", str(bad), "--unlabeled", str(hypo), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "row 3" in err and "Zz2O3" in err

    assert main(["synth", "score", str(tmp_path / "absent.npz"), str(known), "--out", str(tmp_path / "s.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    not_a_model = tmp_path / "fake.npz"
    not_a_model.write_bytes(b"PK\x03\x04 not really")
    assert main(["synth", "score", str(not_a_model), str(known), "--out", str(tmp_path / "s.csv")]) == 2
    assert "not a synthesizability model" in capsys.readouterr().err


def test_campaign_config_names_the_model(tmp_path):
    cfg = load_config("configs/quickstart.yaml")
    assert cfg.synthesis.model is None and cfg.synthesis.use == "constraint" and cfg.synthesis.min_p_synth == 0.5
    m = tmp_path / "m.npz"
    m.write_bytes(b"x")
    cfg = parse_config({"chemical_system": ["Ba", "Ti", "O"],
                        "synthesis": {"model": str(m), "as": "objective", "min_p_synth": 0.7}})
    assert cfg.synthesis.use == "objective"
    # round-trips through the YAML a campaign writes into its run folder
    assert parse_config(cfg.model_dump()).synthesis == cfg.synthesis
    assert cfg.model_dump()["synthesis"]["as"] == "objective"
