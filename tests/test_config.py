from pathlib import Path

import pytest

from xtalforge.cli.main import main
from xtalforge.config import ConfigError, load_config, parse_config


def test_quickstart_config_parses():
    cfg = load_config(Path(__file__).parent.parent / "configs" / "quickstart.yaml")
    assert cfg.elements == ("Ca", "Ti", "O")
    assert cfg.rounds == 3 and cfg.acquisition.batch_size == 6 and cfg.max_atoms == 10


def test_each_bad_field_gets_one_line():
    with pytest.raises(ConfigError) as err:
        parse_config({"chemical_system": ["Ca", "Xx"], "rounds": -1, "colour": "red"})
    lines = err.value.problems
    assert len(lines) == 3
    assert any(line.startswith("chemical_system:") and "Xx" in line for line in lines)
    assert any(line.startswith("rounds:") for line in lines)
    assert any(line.startswith("colour:") and "unknown key" in line for line in lines)


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("chemical_system: [Ca, Unobtainium]\nrounds: 0\nmlip: {fmax: -1}\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3, err
    assert {line.split(":")[1].strip() for line in err} == {"chemical_system", "rounds", "mlip.fmax"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_system_without_compounds_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "noble.yaml"
    cfg.write_text("chemical_system: [He, Ne]\nmax_atoms: 4\n")
    assert main(["run", str(cfg)]) == 2
    assert "charge-balanced" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unsafe_yaml_is_not_executed(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(p)
