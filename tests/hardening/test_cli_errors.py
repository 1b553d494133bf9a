"""Bad input and damaged state at the command line: one line, a documented exit code, nothing
written (README, "Exit codes": 0 ok, 1 failure while running, 2 bad input)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xtalforge.cli.main import main
from xtalforge.config import parse_config
from xtalforge.loop.store import CampaignStore


def _one_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def _config(tmp_path: Path, **over) -> Path:
    cfg = {"name": "c", "chemical_system": ["Li", "O"], "rounds": 1, "output_dir": str(tmp_path / "runs"),
           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, **over}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_binary_config_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert main(["run", str(path)]) == 2
    assert "not a text file" in _one_error(capsys)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("element", ["Og", "Es"])
def test_elements_without_data(tmp_path, capsys, element):
    assert main(["run", str(_config(tmp_path, chemical_system=[element, "O"]))]) == 2
    line = _one_error(capsys)
    assert element in line and "chemical_system" in line
    _nothing_written(tmp_path)


def test_a_config_naming_a_function_instead_of_a_calculator_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = _config(tmp_path, mlip={"model": "ase:os.system", "model_options": {"command": f"touch {marker}"}})
    assert main(["run", str(path)]) == 2
    assert "not an ASE calculator" in _one_error(capsys)
    assert not marker.exists()
    _nothing_written(tmp_path)


def _campaign_folder(tmp_path: Path) -> Path:
    """A run folder as a started campaign leaves it: config.yaml and a store."""
    cfg = parse_config({"name": "r", "chemical_system": ["Li", "O"], "output_dir": str(tmp_path),
                        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    CampaignStore(f"sqlite:///{run / 'store.db'}").close()
    return run


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("cmd", ["status", "resume"])
def test_a_damaged_store(tmp_path, capsys, cmd):
    run = _campaign_folder(tmp_path)
    db = run / "store.db"
    db.write_bytes(db.read_bytes()[:100] + b"\xde\xad" * 3000)  # a header, then garbage
    before = _digest(db)
    assert main([cmd, str(run)]) == 1
    assert "store.db" in _one_error(capsys)
    assert _digest(db) == before


@pytest.mark.parametrize("cmd", ["status", "resume"])
def test_an_empty_store_is_not_written_into(tmp_path, capsys, cmd):
    run = _campaign_folder(tmp_path)
    (run / "store.db").unlink()
    (run / "store.db").write_bytes(b"")
    assert main([cmd, str(run)]) == 1
    assert "empty" in _one_error(capsys)
    assert (run / "store.db").stat().st_size == 0


@pytest.mark.parametrize("cmd", ["status", "resume"])
def test_an_invalid_edited_config(tmp_path, capsys, cmd):
    run = _campaign_folder(tmp_path)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("rounds: 3", "rounds: -1"))
    assert main([cmd, str(run)]) == 2
    line = _one_error(capsys)
    assert "config.yaml" in line and "rounds" in line


def test_synth_score_refuses_impossible_formulas_and_writes_nothing(tmp_path, capsys):
    known = tmp_path / "known.csv"
    known.write_text("formula\n" + "\n".join(["NaCl", "KCl", "MgO", "CaO", "SrO", "BaO", "LiF", "NaF", "KBr",
                                              "CsCl", "Al2O3", "Y2O3", "ZrO2", "TiO2", "SrTiO3", "CaTiO3"]) + "\n")
    model = tmp_path / "m.npz"
    assert main(["synth", "train", str(known), "--out", str(model), "--bags", "3"]) == 0
    capsys.readouterr()
    table = tmp_path / "todo.csv"
    table.write_text("formula\nCa1e400O\nCa0O\nCaO\n")
    out = tmp_path / "scored.csv"
    assert main(["synth", "score", str(model), str(table), "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 2 and all(ln.startswith("error: ") for ln in err), err  # one line per bad row
    assert "Ca1e400O" in err[0] and "amount 0 of Ca" in err[1]
    assert not out.exists()


def test_lab_serve_on_a_port_that_does_not_exist(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xtalforge.cli.main", "lab", "serve", str(tmp_path), "--port", "99999"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "99999 is not a port" in lines[0], lines
