"""`xtalforge pretrain DATA.csv`: a CSV of CIFs in, a checkpoint and an MLflow run out."""

from __future__ import annotations

import pandas as pd
from mlflow.tracking import MlflowClient
from pymatgen.core import Structure

from xtalforge.cli.main import main
from xtalforge.generators.wyckoff.train import load_checkpoint

NAMES = ["SrTiO3", "TiO2", "Li2O", "CsCl", "VO2", "Si"]


def _csv(test_cifs, path):
    cifs = [Structure.from_file(test_cifs / "pymatgen_test_structures" / f"{n}.cif").to(fmt="cif") for n in NAMES]
    pd.DataFrame({"material_id": range(len(cifs)), "cif": cifs}).to_csv(path)  # CDVAE layout: index column first
    return path


def test_pretrain_writes_a_checkpoint_and_an_mlflow_run(tmp_path, test_cifs, capsys):
    data = _csv(test_cifs, tmp_path / "six.csv")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = main(["pretrain", str(data), "--out", str(tmp_path / "ckpt"), "--epochs", "3", "--model-size", "tiny",
               "--tracking-uri", uri, "--experiment", "pre", "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "6 structures" in out and "checkpoint:" in out
    model = load_checkpoint(tmp_path / "ckpt")
    assert model.cfg.d_model == 48 and model.cfg.max_sites >= 2
    assert list((tmp_path / "cache").glob("six-*.json"))  # encodings are cached for the next run

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pre")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["structures"] == "6"
    nll = client.get_metric_history(run.info.run_id, "train_nll")
    assert sorted(m.step for m in nll) == [0, 1, 2]
    assert nll[-1].value < nll[0].value  # it learns
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert arts == {"checkpoint/model.pt", "checkpoint/model.json", "checkpoint/CARD.md"}


def test_pretrain_rejects_a_csv_without_cifs(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"formula": ["SrTiO3"]}).to_csv(bad)
    rc = main(["pretrain", str(bad), "--out", str(tmp_path / "x"), "--cache-dir", str(tmp_path / "c"),
               "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--no-progress"])
    assert rc == 2
    assert "no 'cif' column" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path / "missing.csv"), "--no-progress"]) == 2
