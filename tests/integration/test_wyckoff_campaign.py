"""A real 2-round Ca-Ti-O campaign (Ray, CHGNet, MLflow on SQLite) driven by the Wyckoff generator.

The model is tiny and pre-trained on the fly on five of the shared test crystals; every
evaluated candidate is its own, so each round fine-tunes it and logs gen_wyckoff_* metrics.
"""

from pathlib import Path

from mlflow.tracking import MlflowClient

from xtalforge.config import load_config, parse_config
from xtalforge.loop.campaign import Campaign
from xtalforge.loop.store import CampaignStore
from xtalforge.loop.tracking import mlflow_key

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_wyckoff_config_parses():
    cfg = load_config(CONFIGS / "wyckoff.yaml")
    assert [g.name for g in cfg.generators] == ["random_symmetric", "wyckoff"]


def test_tiny_campaign_with_the_wyckoff_generator(tmp_path, ray_local, test_cifs):
    folder = test_cifs / "pymatgen_test_structures"
    data = [str(folder / f"{n}.cif") for n in ("SrTiO3", "TiO2", "VO2", "CsCl", "Li2O")]
    cfg = parse_config(dict(
        name="tiny-wyckoff",
        chemical_system=["Ca", "Ti", "O"],
        max_atoms=5,
        rounds=2,
        proposals_per_round=12,
        generators=[{"name": "wyckoff", "options": {
            "pretrain_data": data, "model_size": "tiny", "pretrain_epochs": 40, "kl_samples": 8,
            "metric_samples": 8, "seed": 0}}],
        acquisition={"batch_size": 2},
        mlip={"workers": 2, "max_steps": 40},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tests"},
        output_dir=str(tmp_path / "runs"),
    ))
    camp = Campaign.create(cfg, progress=False)
    run_dir = camp.run_dir
    camp.run()

    st = CampaignStore(f"sqlite:///{run_dir / 'store.db'}")
    assert st.stages() == {0: "done", 1: "done"}
    cands = st.candidates()
    assert cands and all(c.source == "wyckoff" for c in cands)
    for c in cands:  # proposals sit inside the system and the cell-size limit
        assert {e.symbol for e in c.structure.composition.elements} <= {"Ca", "Ti", "O"}
        assert len(c.structure) <= 5 and c.meta["wyckoff"]["sg"] == c.meta["spacegroup"]
    assert len(st.measurements()) == 4
    state = st.load_state("generator:wyckoff")
    assert state["ready"] and state["updates"] == 2  # fine-tuned once per round
    run_id = st.get("mlflow_run_id")
    st.close()

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    for key in ("gen_wyckoff_mean_reward", "gen_wyckoff_kl", "gen_wyckoff_validity", "gen_wyckoff_uniqueness",
                "proposals_wyckoff"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, mlflow_key(key)))
        assert steps == [1, 2], (key, steps)  # rounds from 1
    rewards = [m.value for m in client.get_metric_history(run_id, mlflow_key("gen_wyckoff_mean_reward"))]
    assert all(0.0 <= r <= 1.0 for r in rewards)

    # a resumed campaign rebuilds the fine-tuned generator from the store, not from scratch
    from xtalforge.generators.registry import build_generator

    gen = build_generator("wyckoff", cfg.elements, cfg.max_atoms, {"model_size": "tiny"})
    gen.load_state_dict(state)
    assert gen.ready and gen.updates == 2
