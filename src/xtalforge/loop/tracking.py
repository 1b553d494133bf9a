"""MLflow: the window onto a campaign (the store, not MLflow, is its memory).

One MLflow run per campaign; a resumed campaign continues the same run. Metrics use
step=round, and a round's metrics are only logged once its results are in the store, so a
resumed round never logs a step twice.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def resolve_uri(uri: str, base: Path | None = None) -> str:
    """Make a relative sqlite/file URI absolute, so a resumed campaign finds the same store."""
    base = base or Path.cwd()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        p = (base / uri[len("sqlite:///"):]).resolve()
        p.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{p}"
    if "://" not in uri:
        return (base / uri).resolve().as_uri()
    return uri


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}."))
        else:
            out[key] = str(v)[:500]
    return out


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None):
        from mlflow.tracking import MlflowClient

        # MLflow prints an INFO line per migration on a fresh SQLite store; keep the terminal clean
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            loc = None
            if artifact_root is not None and uri.startswith("sqlite"):
                artifact_root.mkdir(parents=True, exist_ok=True)
                loc = artifact_root.resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=loc)
        else:
            self.experiment_id = exp.experiment_id
        self.run_id: str | None = None

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str], run_id: str | None = None) -> str:
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 90):
            self.client.log_batch(self.run_id, params=items[i : i + 90])
        return self.run_id

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))]
        for i in range(0, len(items), 900):
            self.client.log_batch(self.run_id, metrics=items[i : i + 900])

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        try:
            self.client.log_artifact(self.run_id, str(path), subdir)
        except Exception as err:  # a full disk or a remote hiccup must not stop the campaign
            log.warning("could not log artifact %s: %s", path, err)

    def log_artifacts(self, folder: Path, subdir: str | None = None) -> None:
        try:
            self.client.log_artifacts(self.run_id, str(folder), subdir)
        except Exception as err:
            log.warning("could not log artifacts %s: %s", folder, err)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def run_url(self) -> str:
        return f"{self.uri} · experiment {self.experiment_id} · run {self.run_id}"


def ensure_env() -> None:
    # mlflow asks git for provenance on every run start; silence that noise where git is absent
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
