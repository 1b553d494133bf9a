"""The shipped known-materials snapshot: what it holds, how fast a system loads, how it is built."""

import csv
import gc
import gzip
import re
import time

import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from xtalforge.references.build_snapshot import build
from xtalforge.references.hull import elemental_references
from xtalforge.references.known import load_known
from xtalforge.references.snapshot import ENTRIES_FILE, Snapshot, subsystems


def test_ca_ti_o_loads_well_under_a_second():
    # CPU time of this thread: wall time measures the machine's other jobs, and the process's CPU
    # time counts the threads earlier tests left running in it (Ray, MLflow, torch); their garbage
    # is collected first, so a collection of it does not land inside the timed load
    gc.collect()
    t0, c0 = time.perf_counter(), time.thread_time()
    snap = Snapshot.read()
    known = load_known("Ca-Ti-O", sources=["snapshot"], snapshot=snap)
    first, first_cpu = time.perf_counter() - t0, time.thread_time() - c0
    gc.collect()
    t0, c0 = time.perf_counter(), time.thread_time()
    again = load_known("Ti-O-Ca", sources=["snapshot"], snapshot=snap)
    second, second_cpu = time.perf_counter() - t0, time.thread_time() - c0
    print(f"snapshot read + Ca-Ti-O: {first:.3f} s ({first_cpu:.3f} s CPU); "
          f"Ca-Ti-O again: {second:.3f} s ({second_cpu:.3f} s CPU)")
    assert first_cpu < 0.5 and second_cpu < 0.1
    assert [p.material_id for p in again.phases] == [p.material_id for p in known.phases]
    systems = {p.chemsys for p in known.phases}
    assert systems <= set(subsystems(["Ca", "Ti", "O"]))
    assert {"Ca", "O", "Ti", "Ca-O", "O-Ti", "Ca-O-Ti"} <= systems
    assert len(known.phases) > 50 and len(known.with_structure()) > 40


def test_energies_are_on_the_mp_scale(ca_ti_o):
    mu = {k: v.energy_per_atom for k, v in elemental_references(["Ca", "O"]).items()}
    cao = ca_ti_o.by_id()["mp-2605"]
    assert cao.formula == "CaO" and cao.spacegroup == "Fm-3m" and cao.source == "mp20"
    assert cao.energy_per_atom == pytest.approx(-3.306016 + (mu["Ca"] + mu["O"]) / 2, abs=1e-5)
    assert cao.structure is not None and len(cao.structure) == 2
    entry = cao.entry()
    assert entry.entry_id == "mp-2605" and entry.energy_per_atom == pytest.approx(cao.energy_per_atom)
    # an entry only the structure table has (no MP-20 row) comes with that table's energy
    ruddlesden_popper = ca_ti_o.by_id()["mp-4163"]
    assert ruddlesden_popper.formula == "Ca3Ti2O7" and ruddlesden_popper.source == "mp_structures"
    # an MP-20 entry whose structure the tables lack still has its energy
    assert not ca_ti_o.by_id()["mp-1540712"].structure and ca_ti_o.by_id()["mp-1540712"].has_energy


def test_every_mp20_row_is_shipped(data_dir):
    with gzip.open(data_dir / "mp_reference" / "mp20_formation_energies.csv.gz", "rt") as fh:
        mp20 = {r["material_id"]: float(r["formation_energy_per_atom"]) for r in csv.DictReader(fh)}
    snap = Snapshot.read()
    with snap_file(ENTRIES_FILE) as fh:
        rows = {r["material_id"]: r for r in csv.DictReader(gzip.open(fh, "rt"))}
    assert len(mp20) == 36681 and set(mp20) <= set(rows)
    assert all(abs(float(rows[k]["e_form_per_atom"]) - v) < 1e-6 for k, v in mp20.items())
    assert snap.n_structures == 36737


def snap_file(name):
    from importlib import resources

    return resources.files("xtalforge.data").joinpath("references").joinpath(name).open("rb")


def test_structures_survive_the_compact_encoding(data_dir, ca_ti_o):
    table = pd.read_csv(data_dir / "mp_reference" / "mp_structures.csv.gz", usecols=["material_id", "cif"])
    cifs = dict(zip(table.material_id, table.cif))
    tight = StructureMatcher(ltol=1e-3, stol=1e-3, angle_tol=0.01, primitive_cell=False, scale=False)
    for mid in ("mp-4019", "mp-2605", "mp-390", "mp-4163"):
        ref = Structure.from_str(cifs[mid], fmt="cif")
        got = ca_ti_o.by_id()[mid].structure
        assert np.allclose(got.lattice.abc, ref.lattice.abc, atol=1e-4)
        assert np.allclose(got.lattice.angles, ref.lattice.angles, atol=1e-3)
        assert tight.fit(got, ref), mid


def test_exclude_a_ternary_system():
    known = load_known("Ca-Ti-O", sources=["snapshot"], exclude_chemsys=["Ti-Ca-O"])
    formulas = {p.formula for p in known.phases}
    assert "CaO" in formulas and "TiO2" in formulas
    assert not formulas & {"CaTiO3", "Ca3Ti2O7", "CaTi2O4"}
    assert "hidden" in known.sources[0]


def test_build_from_the_source_tables_reproduces_the_shipped_rows(data_dir, tmp_path):
    """The build script on the Ca-O rows of the two MP tables gives the shipped Ca-O rows:
    a Ca-O entry's hull distance depends on Ca-O entries only."""
    src = tmp_path / "src"
    src.mkdir()
    only_ca_o = re.compile(r"^(?:(?:Ca|O)\d*)+$")
    for name in ("mp20_formation_energies.csv.gz", "mp_structures.csv.gz"):
        df = pd.read_csv(data_dir / "mp_reference" / name)
        df[df.reduced_formula.str.match(only_ca_o)].to_csv(src / name, index=False, compression="gzip")
    counts = build(src, tmp_path / "out")
    assert counts["dropped"] == 0 and counts["structures"] == counts["with_structure_in_source"]
    built = Snapshot.read(tmp_path / "out").rows(["Ca", "O"])
    shipped = {r.material_id: r for r in Snapshot.read().rows(["Ca", "O"])}
    assert {r.material_id for r in built} == set(shipped)
    for r in built:
        s = shipped[r.material_id]
        assert (r.formula, r.spacegroup, r.source) == (s.formula, s.spacegroup, s.source)
        assert r.e_form_per_atom == pytest.approx(s.e_form_per_atom, abs=1e-6)
        assert r.e_above_hull == pytest.approx(s.e_above_hull, abs=1e-4)
        assert (r.structure >= 0) == (s.structure >= 0)
