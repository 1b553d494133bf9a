"""A tiny real campaign's report opened in headless Chromium: every picture loads, every link
resolves, and each top candidate has a picture of its structure and a CIF to follow."""

from __future__ import annotations

from pathlib import Path

from xtalforge.config import parse_config
from xtalforge.loop.campaign import Campaign

from ..browser import chromium, page_check


def tiny_campaign(tmp_path: Path) -> Path:
    cfg = parse_config(dict(
        name="tiny", chemical_system=["Ca", "Ti", "O"], max_atoms=5, rounds=2, proposals_per_round=12,
        acquisition={"batch_size": 2}, mlip={"workers": 2, "max_steps": 60},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "report-browser"},
        output_dir=str(tmp_path / "runs")))
    camp = Campaign.create(cfg, progress=False)
    camp.run()
    return camp.run_dir


def test_report_opens_in_chromium_with_every_picture_and_link(tmp_path, ray_local):
    chromium()  # skip early, before the campaign, where there is no browser
    run_dir = tiny_campaign(tmp_path)
    report = run_dir / "report" / "report.html"
    assert report.is_file()

    found = page_check(run_dir, "report/report.html")
    assert found["title"].startswith("xtalforge campaign tiny")
    assert not found["broken_images"], found["broken_images"]
    assert not found["broken_links"], found["broken_links"]
    assert found["external"] == []  # a local store: the MLflow run is named, not linked
    # pictures: 5 plots and one structure per top candidate (4 relaxations, all shown)
    structures = [i for i in found["images"] if i.startswith("structure of ")]
    cifs = [h for h in found["links"] if h.startswith("../top_cifs/") and h.endswith(".cif")]
    n_ok = (run_dir / "candidates.csv").read_text().count(",ok,")
    assert n_ok >= 1 and len(structures) == n_ok and len(set(cifs)) == n_ok  # in the table and on each card
    assert len(found["images"]) >= 5 + n_ok
    for needed in ("../candidates.csv", "../top_cifs/", "interactive/convex_hull.html",
                   "interactive/discovery_curve.html"):
        assert needed in found["links"], needed
    assert (run_dir / "report" / "interactive" / "plotly.min.js").is_file()  # offline

    # the interactive pages draw their figure (plotly ran, offline)
    for page in ("convex_hull", "discovery_curve"):
        inner = page_check(run_dir / "report" / "interactive", f"{page}.html")
        assert inner["svgs"] > 0 and not inner["broken_images"] and not inner["broken_links"], inner
    text = report.read_text()
    assert "What to look at next" in text and "What looks wrong" in text and "Surrogate MAE:" in text
