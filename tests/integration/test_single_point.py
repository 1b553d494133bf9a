"""The cheap fidelity in a real campaign: CHGNet single points of the unrelaxed proposals, from
the embedding pass, reach the surrogate as a lower fidelity of e_above_hull."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from xtalforge.loop import single_point
from xtalforge.loop.campaign import Campaign
from xtalforge.loop.store import CampaignStore
from xtalforge.types import Candidate, Fidelity, Status

from .test_resume import tiny_config


def test_single_points_train_the_surrogate_below_the_relaxations(tmp_path, ray_local):
    cfg = tiny_config(tmp_path)
    assert cfg.acquisition.single_point  # on by default
    camp = Campaign.create(cfg, progress=False)
    camp.run()
    run_dir = camp.run_dir

    st = CampaignStore(f"sqlite:///{run_dir / 'store.db'}")
    cands = {c.id: c for c in st.candidates()}
    with_sp = {i: c.meta[single_point.KEY] for i, c in cands.items() if single_point.KEY in c.meta}
    assert len(with_sp) >= 0.9 * len(cands) and all(np.isfinite(v) for v in with_sp.values())
    # relaxing never raises CHGNet's energy above the single point of the starting structure
    ok = [m for m in st.measurements() if m.status == Status.ok and m.candidate_id in with_sp]
    assert ok
    for m in ok:
        assert m.values["energy_per_atom"] <= with_sp[m.candidate_id] + 1e-3, m.candidate_id
    # round 2 fitted the multi-fidelity GP: relaxations and single points of e_above_hull
    assert st.round_metrics()[1]["surrogate_multi_fidelity"] == 1.0
    # its hyperparameters were fitted in the background during round 1 (while a worker idled,
    # or in the round's tail when both finished together); the pick only conditioned on them
    assert st.round_metrics()[1]["surrogate_prefit"] == 1.0
    st.close()

    again = Campaign.open(run_dir, progress=False)
    try:
        again.load()
        feats = again.store.features(list(cands))
        d = again.selector.training_data(feats, [])["e_above_hull"]
        low = [(i, y) for i, y, f in zip(d.ids, d.y, d.fidelity) if f == Fidelity.single_point]
        high = {i for i, f in zip(d.ids, d.fidelity) if f == Fidelity.mlip}
        assert len(low) >= 0.9 * len(cands) and high == {m.candidate_id for m in ok}
        assert all(y <= single_point.CAP for _, y in low)

        # hyperparameters fitted ahead (as while a round's last relaxations run), then a pick
        # that only conditions on the data
        before = again.store.load_state("surrogate")
        with ThreadPoolExecutor(1) as pool:
            ahead = again.selector.prefit(pool, [])
            assert ahead is not None and "e_above_hull" in ahead.result()["params"]
            metrics = again.selector.select(2, [])
        assert metrics["surrogate_prefit"] == 1.0 and metrics["surrogate_multi_fidelity"] == 1.0
        assert len(again.store.selected("mlip", round=2)) == cfg.acquisition.batch_size
        # a supercell of an evaluated start is a repeat, also when checked from another thread
        # against the evaluated structures already taken in (refresh=False)
        done = next(c for i, c in cands.items() if i in again.results.measured)
        twin = Candidate(structure=done.structure * (1, 1, 2), source="test", round=2)
        assert again.results.repeats_of_evaluated([twin], refresh=False) == {twin.id: done.id}
        after = again.store.load_state("surrogate")
        assert after["params"]["e_above_hull"] != before["params"]["e_above_hull"], "refitted ahead, and kept"

        # repeats nobody matched ahead: twins of every evaluated start (15 % larger, so their
        # ids differ) join the pool, and a batch as large as the pool picks all of it; the twins
        # are matched as picks, left out, and the rest of the pool is picked in their place
        evaluated = [c for i, c in cands.items() if i in again.results.measured]
        twins = [Candidate(structure=c.structure.copy().scale_lattice(1.15 * c.structure.volume), source="test",
                           round=3) for c in evaluated]
        assert not {t.id for t in twins} & set(cands)
        again.store.add_candidates(twins)
        again.store.set_features({t.id: feats[c.id] for t, c in zip(twins, evaluated)})
        pool = set(cands) - set(again.store.selected("mlip")) - set(again.results.measured)
        pool -= set(again.results.repeats_of_evaluated([cands[i] for i in pool]))
        again.cfg.acquisition.batch_size = len(pool) + len(twins)
        metrics = again.selector.select(3, [])
        picked = set(again.store.selected("mlip", round=3))
        assert picked == pool and not picked & {t.id for t in twins}
        assert metrics["pool_repeats_of_evaluated"] >= len(twins)
        assert again.results.repeats_of_evaluated(twins, match=False) == {
            t.id: c.id for t, c in zip(twins, evaluated)}
    finally:
        again.store.close()
