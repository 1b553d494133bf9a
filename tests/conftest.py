"""Shared fixtures: the public test data beside the checkout, a real Ray with 2 CPUs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: see Makefile

import pytest  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)


def _data_dir() -> Path:
    env = os.environ.get("XTALFORGE_TEST_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    return (here.parent / "shared" / "data").resolve()


DATA = _data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test data not found at {DATA}; set XTALFORGE_TEST_DATA to the shared/data folder")
    return DATA


@pytest.fixture(scope="session")
def test_cifs(data_dir: Path) -> Path:
    return data_dir / "test_cifs"


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance (2 CPUs) for the whole session."""
    import ray

    from xtalforge.loop.executor import start_ray

    started = start_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def chgnet_model():
    from xtalforge.oracles.mlip.relax import load_chgnet

    return load_chgnet(threads=1)
