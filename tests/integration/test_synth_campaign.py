"""A real campaign with synthesizability as a constraint of the acquisition."""

import csv

from xtalforge.cli.main import main
from xtalforge.loop.campaign import Campaign
from xtalforge.loop.store import CampaignStore
from xtalforge.synthesis.model import PUSynthesizabilityModel
from tests.integration.test_resume import tiny_config


def _known_and_hypothetical(tmp_path):
    # known: textbook Ca/Ti oxides and a few other binaries; unlabeled: unusual stoichiometries
    known = ["CaO", "TiO2", "CaTiO3", "Ca2TiO4", "Ti2O3", "MgO", "SrTiO3", "BaTiO3", "SrO", "Al2O3", "ZrO2"]
    hypo = ["Ca3TiO5", "CaTi2O5", "Ca4TiO6", "Ca2Ti3O8", "Ca5Ti2O9", "CaTi3O7", "Sr3TiO5", "Ba4TiO6", "Mg3Ti2O7"]
    for name, rows in (("known.csv", known), ("hypo.csv", hypo)):
        with (tmp_path / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["formula"])
            w.writerows([[f] for f in rows])
    return tmp_path / "known.csv", tmp_path / "hypo.csv"


def test_campaign_with_synthesizability_constraint(tmp_path, ray_local):
    known, hypo = _known_and_hypothetical(tmp_path)
    model = tmp_path / "synth.npz"
    assert main(["synth", "train", str(known), "--unlabeled", str(hypo), "--out", str(model), "--bags", "20"]) == 0
    thr = 0.5
    cfg = tiny_config(tmp_path, name="synth", rounds=2,
                      synthesis={"model": str(model), "min_p_synth": thr, "as": "constraint"})
    camp = Campaign.create(cfg, progress=False)
    camp.run()

    st = CampaignStore(f"sqlite:///{camp.run_dir / 'store.db'}")
    cands = {c.id: c for c in st.candidates()}
    assert all("p_synth" in c.meta and 0.0 <= c.meta["p_synth"] <= 1.0 for c in cands.values())
    scored = PUSynthesizabilityModel.load(model).score(list(cands.values()))
    assert [round(float(v), 6) for v in scored] == [round(c.meta["p_synth"], 6) for c in cands.values()]
    picked = st.selected("mlip")
    assert len(picked) == 4
    feasible = [c for c in cands.values() if c.meta["p_synth"] >= thr]
    if feasible:  # the constraint holds whenever the pool had a synthesizable candidate
        assert all(cands[i].meta["p_synth"] >= thr for i in picked)
    metrics = st.round_metrics()
    assert all("p_synth_mean" in metrics[r] and "p_synth_frac_ok" in metrics[r] for r in (0, 1))
    st.close()
    assert (camp.run_dir / "synthesis_routes.csv").is_file()
