"""Both reference hulls on Ca-Ti-O with real CHGNet: the perovskite's polymorphs, the cache,
hull distances recomputed as the hull moves."""

import time

import pytest
from pymatgen.analysis.phase_diagram import PDEntry

from xtalforge.references.hull import mp2020_entry
from xtalforge.references.hulls import build_reference_hulls
from xtalforge.references.relaxed import model_key, relax_known

from .conftest import SETTINGS, CountingRelax, cubic_catio3


def test_cubic_catio3_above_the_oracle_hull_and_pnma_on_it(oracle_hulls, chgnet_model):
    hulls, relax, seconds = oracle_hulls
    print(f"oracle-consistent Ca-Ti-O hull: {len(hulls.relaxed.relaxed_ids)} CHGNet relaxations in {seconds:.1f} s")
    assert "mp-4019" in hulls.relaxed.relaxed_ids
    (cubic,) = CountingRelax(chgnet_model)([cubic_catio3()])
    assert cubic.ok, cubic.error
    d = hulls.distance(mp2020_entry(cubic.structure, cubic.energy, "cubic", apply=False))
    assert d.e_above_hull >= 0.03, d
    pnma = next(e for e in hulls.relaxed.entries if e.entry_id == "mp-4019")
    on = hulls.distance(pnma)
    assert abs(on.e_above_hull) <= 0.005, on
    assert hulls.decomposition(pnma)[0][0] == "CaTiO3 (mp-4019)"
    assert [label for label, _ in hulls.decomposition(mp2020_entry(cubic.structure, cubic.energy, apply=False))] == [
        "CaTiO3 (mp-4019)"]


def test_what_only_the_dft_hull_has_is_stated(oracle_hulls):
    hulls, _, _ = oracle_hulls
    # Ca2Ti3O8 is on MP-20's hull but the tables carry no structure for it
    assert hulls.dft_only["mp-1540712"] == "no structure"
    assert hulls.dft_only["mp-12205"].startswith("more than 20 sites")  # Ti4O7, 22 sites
    text = "\n".join(hulls.describe())
    assert "no structure" in text and "Ca2Ti3O8 mp-1540712" in text and "not all of MP" in text
    # Ti's and O's ground states in MP have no structure here: their terminals are MP's references
    assert set(hulls.oracle_elements_from_mp) == {"O", "Ti"}


def test_a_second_campaign_reads_the_cache(oracle_hulls, ca_ti_o, chgnet_model, known_cache):
    first, _, first_s = oracle_hulls
    relax = CountingRelax(chgnet_model)
    t0 = time.perf_counter()
    again = build_reference_hulls(ca_ti_o, relax, model_key("chgnet"), SETTINGS, known_cache,
                                  max_e_above_hull_dft=0.0, max_sites_on_hull=20)
    second_s = time.perf_counter() - t0
    print(f"hulls built: {first_s:.1f} s relaxing, {second_s:.2f} s from the cache")
    assert relax.calls == [] and again.relaxed.relaxed_ids == []
    assert sorted(again.relaxed.cached_ids) == sorted(first.relaxed.relaxed_ids)
    energies = {e.entry_id: e.energy for e in first.relaxed.entries}
    assert {e.entry_id: e.energy for e in again.relaxed.entries} == pytest.approx(energies)
    assert second_s < first_s / 3
    # other settings are another cache entry: nothing is read back for fmax 0.05
    other = relax_known([ca_ti_o.by_id()["mp-2605"]], relax, model_key("chgnet"), {**SETTINGS, "fmax": 0.05},
                        known_cache)
    assert other.relaxed_ids == ["mp-2605"] and relax.calls == [1]


def test_hull_distances_are_recomputed_as_the_hull_moves(oracle_hulls, ca_ti_o, chgnet_model, known_cache):
    fresh = build_reference_hulls(ca_ti_o, CountingRelax(chgnet_model), model_key("chgnet"), SETTINGS, known_cache,
                                  max_e_above_hull_dft=0.0, max_sites_on_hull=20)
    pnma = next(e for e in fresh.relaxed.entries if e.entry_id == "mp-4019")
    before = fresh.recompute({"pnma": pnma})["pnma"]
    lower = PDEntry(pnma.composition, pnma.energy - 0.05 * pnma.composition.num_atoms, name="found")
    fresh.add("found", lower)  # the campaign finds a CaTiO3 50 meV/atom below Pnma
    after = fresh.recompute({"pnma": pnma})["pnma"]
    assert after.e_above_hull == pytest.approx(0.05, abs=1e-6)
    assert after.e_above_hull_dft > before.e_above_hull_dft
    current = fresh.recompute()  # every campaign entry by default
    assert set(current) == {"found"} and current["found"].e_above_hull <= 1e-9
    assert fresh.is_hit(current["found"]) and not fresh.is_hit(after)


def test_failed_relaxations_are_cached_and_not_retried(tmp_path):
    """EMT knows O but not Ca: its Ca phases fail, and the next call does not try them again."""
    from xtalforge.oracles.mlip.relax import Relaxer
    from xtalforge.references.known import load_known

    emt = Relaxer("ase:ase.calculators.emt.EMT")
    calls = []

    def relax(ss):
        calls.append(len(ss))
        return emt.relax_many(ss, fmax=0.1, max_steps=50)

    phases = [p for p in load_known("Ca-O", sources=["snapshot"]).with_structure() if p.nsites <= 4]
    first = relax_known(phases, relax, "ase:ase.calculators.emt.EMT", SETTINGS, tmp_path)
    assert first.failed and all(pid.startswith("mp-") for pid in first.failed)
    assert sum(calls) == len(phases)
    again = relax_known(phases, relax, "ase:ase.calculators.emt.EMT", SETTINGS, tmp_path)
    assert sum(calls) == len(phases) and again.failed == first.failed
    assert sorted(again.cached_ids) == sorted(p.material_id for p in phases)


def test_reference_hulls_stand_in_for_a_hull(oracle_hulls, ca_ti_o, chgnet_model, known_cache):
    """What the MLIP oracle calls on its hull works on both hulls at once."""
    hulls = build_reference_hulls(ca_ti_o, CountingRelax(chgnet_model), model_key("chgnet"), SETTINGS, known_cache,
                                  max_e_above_hull_dft=0.0, max_sites_on_hull=20)
    pnma = next(e for e in hulls.relaxed.entries if e.entry_id == "mp-4019")
    candidate = PDEntry(pnma.composition, pnma.energy + 0.02 * pnma.composition.num_atoms, name="cand")
    hulls.add("cand", candidate)
    assert hulls.all_e_above_hull() == {"cand": pytest.approx(0.02, abs=1e-6)}
    assert hulls.e_above_hull(candidate) == pytest.approx(0.02, abs=1e-6)
    assert hulls.e_above_hull_dft(candidate) == pytest.approx(hulls.recompute()["cand"].e_above_hull_dft)
    assert hulls.stable_keys() == [] and hulls.stable_keys(0.03) == ["cand"]
    assert hulls.e_form_per_atom(candidate) < -3.0  # against MP's elemental references, as MP quotes it
    assert set(hulls.campaign) == {"cand"} and hulls.dft.campaign["cand"] is candidate
