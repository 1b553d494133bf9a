"""`xtalforge pretrain DATA.csv`: pre-train the Wyckoff generator on a CSV of CIFs.

Writes a checkpoint folder (model.pt + model.json) and one MLflow run with the training curve.
Imports stay inside the command so that building the CLI parser does not load torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train the Wyckoff generator on a CSV of CIFs (CDVAE format)")
    p.add_argument("data", help="CSV with a 'cif' column (e.g. perov_5/val.csv)")
    p.add_argument("--out", default="runs/wyckoff/model", help="checkpoint folder (default: runs/wyckoff/model)")
    p.add_argument("--model-size", default="small", choices=["tiny", "small", "base"])
    p.add_argument("--max-sites", type=int, help="most Wyckoff sites per crystal (default: the data's maximum)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--minutes", type=float, help="wall-clock budget; training stops when either runs out")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--symprec", type=float, default=0.01, help="symmetry tolerance in Å for encoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (small models run best on 1)")
    p.add_argument("--cache-dir", help="where encoded data sets are cached (default: ~/.cache/xtalforge/wyckoff)")
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    p.add_argument("--experiment", default="xtalforge-pretrain")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_pretrain)


def cmd_pretrain(a: argparse.Namespace) -> int:
    from xtalforge.generators.wyckoff.generator import SIZES
    from xtalforge.generators.wyckoff.tables import wyckoff_tables
    from xtalforge.generators.wyckoff.train import TrainConfig, cached_encodings, pretrain, save_checkpoint

    data = Path(a.data)
    if not data.is_file():
        print(f"error: no such file {data}", file=sys.stderr)
        return 2
    progress = not a.no_progress
    tables = wyckoff_tables()
    try:
        seqs = cached_encodings(data, tables, tol=a.symprec, cache_dir=a.cache_dir, progress=progress)
    except (ValueError, KeyError) as err:
        print(f"error: {data}: {err}", file=sys.stderr)
        return 2
    if not seqs:
        print(f"error: {data}: no structure could be encoded", file=sys.stderr)
        return 2
    max_sites = a.max_sites or max(q.n_sites for q in seqs)
    mcfg = SIZES[a.model_size](max_sites)
    tcfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, threads=a.threads,
                       max_seconds=a.minutes * 60 if a.minutes else None)
    tracker = _Tracking(a.tracking_uri, a.experiment, Path(a.out))
    n_fit = sum(q.n_sites <= max_sites for q in seqs)
    tracker.start(f"pretrain-{data.stem}", {"data": str(data.resolve()), "structures": n_fit,
                                             "model": mcfg.to_json(), "train": vars(tcfg)})
    print(f"pre-training a {a.model_size} model on {n_fit} structures from {data} -> {a.out}")
    status = "FAILED"
    try:
        model, metrics = pretrain(seqs, mcfg, tcfg, progress=progress, on_epoch=tracker.log)
        folder = save_checkpoint(model, a.out, {"data": str(data.resolve()), "structures": n_fit, **metrics})
        tracker.artifacts(folder)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    kept = (f"held-out NLL {metrics['best_val_nll']:.2f} at epoch {int(metrics['best_epoch'])}, kept"
            if "best_val_nll" in metrics else f"train NLL {metrics['train_nll']:.2f}")
    print(f"checkpoint: {folder} ({kept}; nats/crystal); MLflow run {tracker.run_id} at {tracker.uri}")
    print(f"use it in a campaign: generators: [{{name: wyckoff, options: {{checkpoint: {folder}}}}}]")
    return 0


class _Tracking:
    """The pre-training run in MLflow (MlflowClient; a local SQLite store by default)."""

    def __init__(self, uri: str, experiment: str, out: Path):
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            db = Path(uri[len("sqlite:///"):]).resolve()  # absolute, so any cwd finds the same store
            db.parent.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{db}"
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            loc = None
            if uri.startswith("sqlite"):
                root = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
                root.mkdir(parents=True, exist_ok=True)
                loc = root.resolve().as_uri()
            self.exp_id = self.client.create_experiment(experiment, artifact_location=loc)
        else:
            self.exp_id = exp.experiment_id
        self.run_id = ""

    def start(self, name: str, params: dict) -> None:
        self.run_id = self.client.create_run(self.exp_id, run_name=name).info.run_id
        flat = {}
        for k, v in params.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[
            Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v)) for k, v in flat.items()])

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, epoch) for k, v in metrics.items()])

    def artifacts(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder), "checkpoint")

    def finish(self, status: str) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)
