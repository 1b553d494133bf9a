"""Every plot renders to a readable, non-blank PNG on a real pymatgen hull, for 1-5 elements,
and the report renders them with the top candidates and their synthesis routes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Composition

from xtalforge.loop import plots
from xtalforge.loop.report_doc import render_html, render_markdown
from xtalforge.references.hull import Hull


def pixel_std(png: Path) -> float:
    """Spread of the RGB values (0-1): about 0 for a blank image, ~0.1+ for a plot."""
    img = imread(str(png))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, img.shape
    return float(np.std(img[..., :3]))


def campaign_hull(elements: list[str], n: int = 20, seed: int = 0) -> Hull:
    """A real Hull (MP elemental references) plus `n` compounds with energies spread around
    the elements' line: some land on the hull, most above it, as in a campaign."""
    rng = np.random.default_rng(seed)
    hull = Hull(elements)
    ref = {e.composition.elements[0].symbol: e.energy_per_atom for e in hull.references}
    for i in range(n):
        amounts = rng.integers(0, 4, size=len(elements))
        if (amounts > 0).sum() < min(2, len(elements)):
            continue
        comp = Composition({el: int(a) for el, a in zip(elements, amounts) if a})
        e_mix = sum(ref[el.symbol] * comp[el] for el in comp.elements)
        hull.add(f"c{i}", PDEntry(comp, e_mix + rng.normal(-0.5, 0.4) * comp.num_atoms, name=f"c{i}"))
    return hull


@pytest.mark.parametrize("elements", [["Li", "O"], ["Ca", "Ti", "O"], ["Li", "Fe", "P", "O"],
                                      ["Li", "Fe", "P", "S", "O"], ["Si"]])
def test_hull_plot_for_any_number_of_elements(tmp_path, elements):
    hull = campaign_hull(elements)
    e_hull = hull.all_e_above_hull()
    png = plots.hull_plot(tmp_path / "hull.png", hull.phase_diagram, hull.campaign, e_hull, 0.0)
    assert png.is_file() and pixel_std(png) > 0.05
    if 2 <= len(elements) <= 4:
        assert any(v <= 1e-9 for v in e_hull.values()), "the test hull should hold a campaign hit"


def test_discovery_curve_pareto_and_parity(tmp_path):
    rng = np.random.default_rng(1)
    e = rng.normal(0.3, 0.4, 18)
    e[4] = np.nan  # a failed relaxation
    disc = plots.discovery_curve(tmp_path / "d.png", e, list(e <= 0), np.repeat([0, 1, 2], 6), 0.0, "Ca-Ti-O")
    par = plots.pareto_plot(tmp_path / "p.png", e, rng.uniform(0, 1, 18), [f"X{i}" for i in range(18)])
    m = rng.normal(0.2, 0.3, 8)
    parity = plots.parity_plot(tmp_path / "s.png", m, m + rng.normal(0, 0.05, 8), np.full(8, 0.1), [1] * 4 + [2] * 4)
    for png in (disc, par, parity):
        assert pixel_std(png) > 0.05, png


def test_plots_without_data_say_so(tmp_path):
    """Before the first results (or the first surrogate) a plot is a sentence, not a blank."""
    for png in (plots.discovery_curve(tmp_path / "d.png", [], [], [], 0.0),
                plots.parity_plot(tmp_path / "s.png", [], [], [], []),
                plots.pareto_plot(tmp_path / "p.png", [np.nan], [1.0], y_label="density")):
        assert pixel_std(png) > 0.005


def test_budget_split_and_structure_pictures(tmp_path):
    from pymatgen.core import Lattice, Structure

    split = plots.budget_split_plot(tmp_path / "b.png", {"random_symmetric": [0.33, 0.31], "substitution": [0.67, 0.69]})
    cell = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.9), ["Ca", "Ti", "O"],
                                     [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]])
    pic = plots.structure_image(tmp_path / "s.png", cell, "CaTiO3 · Pm-3m (221)", "+0.031 eV/atom · new")
    for png in (split, pic):
        assert pixel_std(png) > 0.05, png
    # the corner Ti is drawn at all 8 corners, the edge O at 4 edges each: 1 Ca + 8 Ti + 12 O
    assert len(plots._with_boundary_images(cell)) == 21


ROUTE = {"candidate_id": "abc123", "target": "CaTiO3", "rank": 1, "reaction": "CaO + TiO2 -> CaTiO3",
         "precursors": "CaO + TiO2", "byproducts": "", "dE_eV_per_atom": -0.0812, "dE_eV_per_fu": -0.406,
         "dG_T_eV_per_atom": -0.0812, "T_K": 1073.15, "energy_sources": "CaO: hull; TiO2: hull", "note": ""}


def test_report_renders_plots_top_candidates_and_routes(tmp_path):
    png = plots.parity_plot(tmp_path / "plots" / "s.png", [0.1, 0.2], [0.12, 0.18], [0.05, 0.05], [1, 1])
    row = dict(id="abc123", formula="CaTiO3", spacegroup="Pnma (62)", e_above_hull=-0.012,
               e_form_per_atom=-3.4, hit=True, source="random_symmetric", round=1, _parents="CaO (p1)",
               _cif="../top_cifs/01_CaTiO3_abc123.cif", _picture=png, _novelty="rediscovered (mp-4019)")
    doc = {"title": "campaign t: Ca-O-Ti", "headline": "1 hit in 2 oracle calls", "facts": [("hits", "1", None)],
           "links": [("all candidates (CSV)", "../candidates.csv")], "mae_definition": "Surrogate MAE: ...",
           "next": {"look": ["CaTiO3 Pnma (62) (abc123): -0.012 eV/atom"], "spend": ["x"], "wrong": ["nothing"]},
           "plots": [("surrogate parity", png, "interactive/s.html")], "top": [row], "routes": {"abc123": [ROUTE]}}
    md = render_markdown(doc, tmp_path)
    assert "![surrogate parity](plots/s.png)" in md and "[interactive version](interactive/s.html)" in md
    assert ("| 1 | CaTiO3 | Pnma (62) | -0.012 | -3.400 | yes | rediscovered (mp-4019) | random_symmetric | 2 "
            "| CaO (p1) | [01_CaTiO3_abc123.cif](../top_cifs/01_CaTiO3_abc123.cif) |") in md
    # the route as a table with units, and a sentence reading it
    assert "| ΔE at 0 K (eV/atom) |" in md and "| 1 | CaO + TiO2 -> CaTiO3 | -0.081 | -0.406 | -0.081 | 1073 |" in md
    assert "CaO + TiO2 → CaTiO3: releases 0.081 eV/atom at 0 K; at 1073 K (800 °C) ΔG ≈ -0.081 eV/atom, favourable" in md
    html = render_html(doc)
    assert "data:image/png;base64," in html and "<th>T (K)</th>" in html
    assert "href='../top_cifs/01_CaTiO3_abc123.cif'" in html and "id='cand-abc123'" in html
    assert "href='#cand-abc123'" in html  # the closer-look line links to the candidate's card
    assert "did not run" in render_markdown({**doc, "routes": None}, tmp_path)
