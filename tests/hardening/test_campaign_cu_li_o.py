"""A real campaign in a system whose reduced formulas print with parentheses (Li(CuO)2)."""

import pytest
from mlflow.tracking import MlflowClient

from xtalforge.config import parse_config
from xtalforge.loop.campaign import Campaign
from xtalforge.loop.store import CampaignStore


@pytest.mark.slow
def test_cu_li_o_campaign_logs_its_generator_metrics(tmp_path, ray_local):
    cfg = parse_config(dict(
        name="culio", chemical_system=["Cu", "Li", "O"], max_atoms=7, rounds=1,
        proposals_per_round=30, seed=1, acquisition={"batch_size": 1, "kind": "random"},
        mlip={"workers": 1, "max_steps": 30},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tests"},
        output_dir=str(tmp_path / "runs"),
    ))
    camp = Campaign.create(cfg, progress=False)
    camp.run()

    st = CampaignStore(f"sqlite:///{camp.run_dir / 'store.db'}")
    assert st.stages() == {0: "done"}
    run_id = st.get("mlflow_run_id")
    st.close()
    run = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    names = set(run.data.metrics)
    gen = [n for n in names if n.startswith("generators/learned_random_symmetric_p_")]
    assert gen, sorted(names)
    assert all("(" not in n and ")" not in n for n in names)
