"""Known Ca-Ti-O phases and one oracle-consistent hull relaxed by real CHGNet, shared by the tests."""

from __future__ import annotations

import time

import pytest
from pymatgen.core import Lattice, Structure


def cubic_catio3() -> Structure:
    """The ideal Pm-3m perovskite (5 atoms); the ground state is the tilted Pnma one."""
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.84), ["Ca", "Ti", "O"],
                                     [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]])


def rocksalt_cao() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.81), ["Ca", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


@pytest.fixture(scope="session")
def ca_ti_o():
    from xtalforge.references.known import load_known

    return load_known("Ca-Ti-O", sources=["snapshot"])


class CountingRelax:
    """Real CHGNet relaxations (one thread, as in a Ray actor), counting what it is asked."""

    def __init__(self, model):
        self.model = model
        self.calls: list[int] = []

    def __call__(self, structures):
        import torch
        from threadpoolctl import threadpool_limits

        from xtalforge.oracles.mlip.relax import relax

        self.calls.append(len(structures))
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(limits=1):
                return [relax(self.model, s, fmax=0.1, max_steps=300) for s in structures]
        finally:
            torch.set_num_threads(before)


SETTINGS = {"fmax": 0.1, "max_steps": 300, "relax_cell": True}


@pytest.fixture(scope="session")
def known_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("known_relaxed")


@pytest.fixture(scope="session")
def oracle_hulls(ca_ti_o, chgnet_model, known_cache):
    """Ca-Ti-O hulls with the DFT hull's vertices of at most 20 sites relaxed by CHGNet
    (8 relaxations), and the seconds that took."""
    from xtalforge.references.hulls import build_reference_hulls
    from xtalforge.references.relaxed import model_key

    relax = CountingRelax(chgnet_model)
    t0 = time.perf_counter()
    hulls = build_reference_hulls(ca_ti_o, relax, model_key("chgnet"), SETTINGS, known_cache,
                                  max_e_above_hull_dft=0.0, max_sites_on_hull=20)
    return hulls, relax, time.perf_counter() - t0
