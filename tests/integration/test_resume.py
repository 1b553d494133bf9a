"""A real 2-round campaign (CHGNet, Ray, BoTorch, MLflow on SQLite) stopped and resumed."""

import pytest
from mlflow.tracking import MlflowClient

from xtalforge.config import parse_config
from xtalforge.loop.campaign import Campaign
from xtalforge.loop.store import CampaignStore
from xtalforge.loop.tracking import mlflow_key


def tiny_config(tmp_path, **over):
    base = dict(
        name="tiny",
        chemical_system=["Ca", "Ti", "O"],
        max_atoms=5,
        rounds=2,
        proposals_per_round=12,
        acquisition={"batch_size": 2},
        mlip={"workers": 2, "max_steps": 60},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tests"},
        output_dir=str(tmp_path / "runs"),
    )
    base.update(over)
    return parse_config(base)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "sequential"])
def test_stop_after_round_1_then_resume(tmp_path, ray_local, overlap):
    cfg = tiny_config(tmp_path, overlap=overlap)
    camp = Campaign.create(cfg, progress=False)
    run_dir = camp.run_dir
    camp.run(stop_after=1)

    st = CampaignStore(f"sqlite:///{run_dir / 'store.db'}")
    first = {m.candidate_id: m for m in st.measurements()}
    assert len(first) == 2
    if overlap:  # round 2 was generated while round 1's oracle ran, from what was known before it
        assert st.stages() == {0: "done", 1: "generated"}
        assert st.round_metrics()[1]["generated_ahead"] == 1.0
    else:
        assert st.stages() == {0: "done"}
    ahead = {c.id for c in st.candidates(round=1)}
    assert bool(ahead) == overlap
    run_id = st.get("mlflow_run_id")
    st.close()

    Campaign.open(run_dir, progress=False).run()

    st = CampaignStore(f"sqlite:///{run_dir / 'store.db'}")
    after = st.measurements()
    assert st.stages() == {0: "done", 1: "done"}
    assert len(after) == 4 and len({m.candidate_id for m in after}) == 4
    for m in after:
        if m.candidate_id in first:  # round-1 results kept as they were: not recomputed
            assert m.at == first[m.candidate_id].at and m.values == first[m.candidate_id].values
    assert sum(m.round == 1 for m in after) == 2
    if overlap:
        assert {c.id for c in st.candidates(round=1)} == ahead  # the resumed round did not generate again
    assert st.round_metrics()[1]["generated_ahead"] == float(overlap)
    assert st.integrity_problems() == []
    assert st.get("mlflow_run_id") == run_id
    st.close()

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["chemical_system"] == "Ca-O-Ti"
    for key in ("best_e_above_hull", "sun_count", "evaluations_mlip", "time_oracle_s", "proposals"):
        steps = [m.step for m in client.get_metric_history(run_id, mlflow_key(key))]
        assert sorted(steps) == [1, 2], (key, steps)  # rounds as people count them
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"rounds", "top_cifs", "candidates.csv"} <= arts
    assert (run_dir / "candidates.csv").read_text().count("\n") == 5
    assert list((run_dir / "top_cifs").glob("*.cif"))
