"""`xtalforge sample` (CIFs + samples.csv from the shipped checkpoint; bad input exits 2) and
`xtalforge pretrain` on the Materials Project table (split by composition, leave-system-out)."""

from __future__ import annotations

import csv
import gzip
import json

import pandas as pd
import pytest
from pymatgen.core import Element, Structure

from xtalforge.cli.main import main
from xtalforge.generators.wyckoff.generator import trained_systems_within
from xtalforge.generators.wyckoff.train import load_checkpoint, read_card, shipped_checkpoint


def test_sample_writes_one_cif_per_crystal_and_a_table(tmp_path, capsys):
    out = tmp_path / "bzo"
    assert main(["sample", "--chemsys", "Ba-Zr-O", "--n", "12", "--out", str(out), "--seed", "1",
                 "--max-atoms", "10"]) == 0
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert 6 <= len(rows) <= 12
    assert {"formula", "spacegroup", "n_sites"} <= set(rows[0])
    for r in rows:
        s = Structure.from_file(out / r["file"])
        assert {str(e) for e in s.composition.elements} <= {"Ba", "Zr", "O"}
        assert len(s) == int(r["n_sites"]) <= 10 and 1 <= int(r["spacegroup"]) <= 230
        assert s.composition.reduced_formula == r["formula"]
    assert "crystals" in capsys.readouterr().out
    # the same seed gives the same crystals; an existing table is never overwritten
    again = tmp_path / "again"
    assert main(["sample", "--chemsys", "Zr-Ba-O", "--n", "12", "--out", str(again), "--seed", "1",
                 "--max-atoms", "10"]) == 0
    assert (again / "samples.csv").read_text() == (out / "samples.csv").read_text()
    assert main(["sample", "--chemsys", "Ba-Zr-O", "--n", "3", "--out", str(out)]) == 2


def test_sample_with_a_target_composition(tmp_path):
    out = tmp_path / "csp"
    assert main(["sample", "--chemsys", "Ba-Zr-O", "--composition", "BaZrO3", "--n", "4", "--out", str(out),
                 "--max-atoms", "10"]) == 0
    assert {r["formula"] for r in csv.DictReader(open(out / "samples.csv"))} == {"BaZrO3"}


def _outside_vocabulary() -> str:
    vocab = set(read_card(shipped_checkpoint())["info"]["elements"])
    return next(Element.from_Z(z).symbol for z in range(100, 0, -1) if Element.from_Z(z).symbol not in vocab)


@pytest.mark.parametrize("args, says", [
    (["--chemsys", "Ba-Zr-O", "--n", "0"], "--n must be at least 1"),
    (["--chemsys", "Ba-Xx-O", "--n", "5"], "not an element symbol"),
    (["--chemsys", "-", "--n", "5"], "empty chemical system"),
    (["--chemsys", "Ba-Zr-O", "--n", "5", "--max-atoms", "2"], "cannot share"),
    (["--chemsys", "Ba-Zr-O", "--n", "5", "--composition", "SrTiO3"], "outside --chemsys"),
    (["--chemsys", "Ba-Zr-O", "--n", "5", "--spacegroup", "231"], "1 to 230"),
    (["--chemsys", "Ba-Zr-O", "--n", "5", "--checkpoint", "/nonexistent/ckpt"], "model.json"),
])
def test_sample_refuses_bad_input_in_one_line(tmp_path, capsys, args, says):
    rc = main(["sample", *args, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_sample_refuses_elements_outside_the_vocabulary(tmp_path, capsys):
    el = _outside_vocabulary()
    assert main(["sample", "--chemsys", f"{el}-O", "--n", "5", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "vocabulary" in err and el in err and "model.json" in err


def test_pretrain_on_the_mp_table_splits_by_composition_and_leaves_a_system_out(tmp_path, data_dir, capsys):
    src = data_dir / "mp_reference" / "mp_structures.csv.gz"
    df = pd.read_csv(src)
    small = df[df["nsites"] <= 6]
    hidden = small[small["reduced_formula"].isin(["BaO", "ZrO2", "BaZrO3", "BaO2"])]
    pick = pd.concat([small[~small.index.isin(hidden.index)].head(60), hidden])
    data = tmp_path / "mp_small.csv.gz"
    with gzip.open(data, "wt") as fh:
        pick.to_csv(fh, index=False)
    out = tmp_path / "ckpt"
    rc = main(["pretrain", str(data), "--out", str(out), "--epochs", "2", "--model-size", "tiny",
               "--exclude-chemsys", "Zr-Ba-O", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
               "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert rc == 0, capsys.readouterr().err
    card = json.loads((out / "model.json").read_text())["info"]
    assert card["data"]["excluded_chemsys"] == ["Ba-O-Zr"] and card["data"]["excluded_structures"] == len(hidden)
    assert not {"Ba-O", "O-Zr", "Ba-O-Zr"} & set(card["chemical_systems"])
    assert sum(card["split"]["structures"].values()) <= 60 and card["split"]["structures"]["train"] > 30
    assert (out / "CARD.md").is_file() and "best_val_nll" in card["metrics"]
    assert ("test_nll" in card["metrics"]) == (card["split"]["structures"]["test"] > 0)
    load_checkpoint(out)
    assert trained_systems_within(("Ba", "Zr", "O"), out) == []  # fit for a Ba-Zr-O rediscovery benchmark
    assert main(["pretrain", str(data), "--exclude-chemsys", "Ba-Qq", "--out", str(tmp_path / "y"),
                 "--no-progress"]) == 2
