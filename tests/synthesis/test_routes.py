"""Synthesis routes: balanced reactions, energies from the campaign hull and the precursor table."""

import csv

import pytest
from pymatgen.core import Composition, Element, Lattice, Structure

from xtalforge.references.hull import Hull, mp2020_entry
from xtalforge.synthesis.routes import (
    FormationEnergies,
    Target,
    load_precursors,
    routes_for,
    routes_markdown,
    routes_table,
    targets_from_hull,
    write_routes_csv,
    write_routes_markdown,
)


def _balanced(reaction: str) -> bool:
    """Element counts of 'a A + b B -> c C + ...' agree on both sides."""
    def side(text: str) -> Composition:
        total = Composition()
        for term in text.split(" + "):
            parts = term.split(" ")
            coeff, formula = (float(parts[0]), parts[1]) if len(parts) == 2 else (1.0, parts[0])
            total += Composition(formula) * coeff
        return total

    left, right = reaction.split(" -> ")
    a, b = side(left), side(right)
    return all(abs(a[e] - b[e]) < 1e-6 for e in set(a.elements) | set(b.elements))


@pytest.fixture(scope="module")
def ba_ti_o_hull(chgnet_model):
    """A Ba-Ti-O campaign hull with CHGNet energies of cubic BaTiO3 (the candidate) and rutile.

    Single points at experimental geometries keep the test fast; relaxing moves them by
    ~0.01 eV/atom, far less than the reaction energies below. CHGNet is trained on MPtrj with
    MP2020 corrections already applied (CHGNet README, "Notes for Training"), so its energies
    are on the MP2020 scale as they are: apply=False, or the anion correction counts twice."""
    bto = Structure(Lattice.cubic(4.01), ["Ba", "Ti", "O", "O", "O"],
                    [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    rutile = Structure(Lattice.tetragonal(4.594, 2.959), ["Ti", "Ti", "O", "O", "O", "O"],
                       [[0, 0, 0], [.5, .5, .5], [.305, .305, 0], [.695, .695, 0], [.805, .195, .5], [.195, .805, .5]])
    hull = Hull(["Ba", "Ti", "O"])
    for key, s in (("bto", bto), ("rutile", rutile)):
        e = float(chgnet_model.predict_structure(s)["e"]) * len(s)
        hull.add(key, mp2020_entry(s, e, key, apply=False))
    return hull


def test_batio3_from_baco3_and_tio2(ba_ti_o_hull):
    pre = load_precursors()
    [target] = targets_from_hull(ba_ti_o_hull, ["bto"])
    # CHGNet's BaTiO3 is strongly bound, as in MP (about -3.5 eV/atom; experiment -3.42)
    assert -4.0 < target.e_form_per_atom < -3.0
    energies = FormationEnergies(ba_ti_o_hull, (), pre)
    assert energies.per_atom(Composition("TiO2"))[1].startswith("campaign hull")
    assert energies.per_atom(Composition("BaCO3"))[1].startswith("experiment")
    routes = routes_for(target.composition, energies, pre, target.e_form_per_atom, top=None)
    assert routes and all(_balanced(r.reaction) for r in routes)
    assert [r.de_per_atom for r in routes] == sorted(r.de_per_atom for r in routes)
    carb = next(r for r in routes if set(r.precursors) == {"BaCO3", "TiO2"})
    assert carb.byproducts == ("CO2",)
    assert carb.reaction == "TiO2 + BaCO3 -> BaTiO3 + CO2"
    # BaCO3 + TiO2 -> BaTiO3 + CO2 is endothermic at 0 K, as in MP and in experiment
    # (dHf: -17.08 - 4.08 + 12.62 + 9.78 = +1.25 eV per BaTiO3): it runs at ~1000 C only
    # because the CO2 it releases carries ~214 J/(mol K) of entropy, so ΔG(T) turns negative.
    assert carb.de_per_atom > 0.02
    assert carb.dg_per_atom < carb.de_per_atom and carb.dg_per_atom < 0
    # with no gas to release, BaO + TiO2 is downhill from the start
    oxide = next(r for r in routes if set(r.precursors) == {"BaO", "TiO2"})
    assert oxide.de_per_atom < 0 and oxide.dg_per_atom == pytest.approx(oxide.de_per_atom)
    assert oxide.de_per_atom < carb.de_per_atom
    # CHGNet's rutile and the experimental TiO2 agree to within 0.3 eV/atom: one scale
    assert energies.scale_mismatch([Composition("TiO2")]) == {}
    rows = routes_table([target], hull=ba_ti_o_hull, per_target=20)
    assert not any("disagree" in r["note"] for r in rows)


def test_double_corrected_hull_is_flagged(chgnet_model):
    """MP2020 applied again on CHGNet's (already corrected) rutile puts it ~0.45 eV/atom below
    experiment; the route table must say so rather than rank routes on mixed scales."""
    rutile = Structure(Lattice.tetragonal(4.594, 2.959), ["Ti", "Ti", "O", "O", "O", "O"],
                       [[0, 0, 0], [.5, .5, .5], [.305, .305, 0], [.695, .695, 0], [.805, .195, .5], [.195, .805, .5]])
    hull = Hull(["Ba", "Ti", "O"])
    e = float(chgnet_model.predict_structure(rutile)["e"]) * len(rutile)
    hull.add("rutile", mp2020_entry(rutile, e, "rutile", apply=True))
    rows = routes_table([Target("t", Composition("BaTiO3"), -3.45)], hull=hull, per_target=1)
    assert "energy scales disagree" in rows[0]["note"] and "TiO2" in rows[0]["note"]


def test_nitrate_and_hydroxide_routes_release_their_gases():
    pre = load_precursors()
    energies = FormationEnergies(None, (), pre)
    routes = routes_for("BaTiO3", energies, pre, target_e_form=-3.4, top=None)
    by = {tuple(sorted(r.precursors)): r for r in routes}
    assert set(by[("Ba(NO3)2", "TiO2")].byproducts) == {"NO2", "O2"}
    assert by[("Ba(OH)2", "TiO2")].byproducts == ("H2O",)
    assert all(_balanced(r.reaction) for r in routes)


def test_table_and_writers(tmp_path):
    targets = [Target("c1", Composition("LiMn2O4"), -2.0), Target("c2", Composition("Li3N"), -0.5)]
    rows = routes_table(targets, per_target=2)
    c1 = [r for r in rows if r["candidate_id"] == "c1"]
    assert [r["rank"] for r in c1] == [1, 2] and all(_balanced(r["reaction"]) for r in c1)
    [c2] = [r for r in rows if r["candidate_id"] == "c2"]
    assert c2["reaction"] == "" and "not an oxide" in c2["note"]
    path = write_routes_csv(rows, tmp_path / "routes.csv")
    back = list(csv.DictReader(path.open()))
    assert len(back) == 3 and back[0]["target"] == "LiMn2O4"
    md = write_routes_markdown(rows, tmp_path / "routes.md").read_text()
    assert md.count("\n| c1 |") == 2 and "ΔE (eV/atom)" in routes_markdown(rows)


def test_user_precursors_and_errors(tmp_path):
    own = tmp_path / "pre.csv"
    own.write_text("formula,kind,dhf_ev_per_fu\nLi2O,oxide,-6.197\nCoO,oxide,-2.464\nO2,gas,0\n")
    pre = load_precursors(own)
    rows = routes_table([Target("x", Composition("LiCoO2"), -1.9)], precursors=pre)
    assert rows[0]["precursors"] == "Li2O + CoO" and "takes up O2" in rows[0]["note"]
    assert all(Element(e).symbol in ("Li", "Co", "O") for e in Composition("LiCoO2").elements)
    bad = tmp_path / "bad.csv"
    bad.write_text("formula,kind\nLi2O,oxide\nXy2O,oxide\n")
    with pytest.raises(ValueError, match="line 3"):
        load_precursors(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("name\nLi2O\n")
    with pytest.raises(ValueError, match="formula and kind"):
        load_precursors(nocol)
