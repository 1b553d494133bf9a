"""What a config may name is checked when it is read, before anything runs."""

from __future__ import annotations

import pytest

from xtalforge.config import ConfigError, parse_config


def _mlip(tmp_path, model: str, **options):
    return parse_config({"chemical_system": ["Cu"], "output_dir": str(tmp_path),
                         "mlip": {"model": model, "model_options": options}})


@pytest.mark.parametrize("model, options, why", [
    ("ase:os.system", {"command": "touch {marker}"}, "not an ASE calculator"),
    ("ase:subprocess.Popen", {"args": ["touch", "{marker}"]}, "not an ASE calculator"),
    ("ase:ase.calculators.espresso.Espresso", {}, "runs an external program"),
    ("ase:ase.calculators.lammpsrun.LAMMPS", {"command": "touch {marker}"}, "name a program"),
])
def test_only_calculators_that_compute_in_python_are_accepted(tmp_path, model, options, why):
    marker = tmp_path / "PWNED"
    opts = {k: (v.format(marker=marker) if isinstance(v, str) else [x.format(marker=marker) for x in v])
            for k, v in options.items()}
    with pytest.raises(ConfigError) as err:
        _mlip(tmp_path, model, **opts)
    assert why in "\n".join(err.value.problems)
    assert not marker.exists()


def test_the_loader_checks_too_and_a_real_calculator_loads(tmp_path):
    from xtalforge.oracles.mlip.relax import load_ase_calculator

    marker = tmp_path / "PWNED"
    with pytest.raises(ValueError, match="not an ASE calculator"):
        load_ase_calculator("ase:os.system", {"command": f"touch {marker}"})
    assert not marker.exists()
    from ase.calculators.emt import EMT

    assert isinstance(load_ase_calculator("ase:ase.calculators.emt.EMT"), EMT)
    assert _mlip(tmp_path, "ase:ase.calculators.emt.EMT").mlip.model == "ase:ase.calculators.emt.EMT"


def test_ray_settings(tmp_path):
    def ray(**kw):
        return parse_config({"chemical_system": ["Cu"], "ray": kw}).ray

    assert ray(address="10.0.0.5:6379").address == "10.0.0.5:6379"
    assert ray(address="ray://head.example:10001").address == "ray://head.example:10001"
    assert ray(address="local").address is None
    assert ray(runtime_env={"pip": ["xtalforge"]}).runtime_env == {"pip": ["xtalforge"]}
    with pytest.raises(ConfigError, match="HOST:PORT"):
        ray(address="http://head")
    cfg = parse_config({"chemical_system": ["Cu"], "mlip": {"workers": "auto"}})
    assert cfg.mlip.workers == "auto"
    with pytest.raises(ConfigError):
        parse_config({"chemical_system": ["Cu"], "mlip": {"workers": "many"}})
