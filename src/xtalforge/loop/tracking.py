"""MLflow: the window onto a campaign (the store, not MLflow, is its memory).

One MLflow run per campaign; a resumed campaign continues the same run. Metrics use
step=round, and a round's metrics are only logged once its results are in the store, so a
resumed round never logs a step twice.

`ROUND_METRICS` is the contract with dashboards: every name a round may log, with its unit and
when it appears. Names never change meaning between versions; docs/metrics.md is rendered from
it (`metrics_markdown`) and a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# MLflow accepts letters, digits, '_', '-', '.', ' ', '/' (newer versions also ':') in metric and
# param names, at most 250 characters; a reduced formula such as Li(CuO)2 has '(' and ')'.
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
MAX_NAME = 250


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:6]


def metric_key(name: str) -> str:
    """`name` as MLflow accepts it: every other character becomes '_'
    ("gen_random_symmetric_p_Li(CuO)2" -> "gen_random_symmetric_p_Li_CuO_2"); a name over
    MLflow's 250 characters is cut and ends in a short digest of the whole. A safe name is kept."""
    safe = _UNSAFE.sub("_", name)
    if len(safe) > MAX_NAME:
        safe = f"{safe[: MAX_NAME - 7]}-{_digest(name)}"
    return safe


def metric_keys(names: list[str]) -> dict[str, str]:
    """name -> MLflow key for every name, no two names sharing a key: when names differ only in
    unsafe characters, all but the first (in sorted order, so the same on every round) get a
    digest of their original name appended."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    # names MLflow takes as they are first, so they never change
    for name in sorted(set(names), key=lambda n: (metric_key(n) != n, n)):
        key = metric_key(name)
        if key in taken:
            key = f"{key[: MAX_NAME - 7]}-{_digest(name)}"
        taken.add(key)
        out[name] = key
    return out


# When a metric is logged (the `when` of a MetricSpec).
EVERY = "every round"
MODEL = "rounds with a fitted surrogate"
PARITY = "rounds whose picks had surrogate predictions"
MULTI = "campaigns with several objectives, or with p_synth on candidates"
GENERATOR = "as the generator reports them"
LAB = "campaigns with a lab oracle (config `lab:`)"
UPDATED = "rounds that update the generators (update_generators)"


@dataclass(frozen=True)
class MetricSpec:
    """One per-round metric. `name` may hold `{gen}` (a generator), `{oracle}` (an oracle),
    `{arm}` (an acquisition function), `{objective}` (an objective) or `{key}` (generator-defined)."""

    name: str
    unit: str
    when: str
    meaning: str


ROUND_METRICS: tuple[MetricSpec, ...] = (
    # generation and filtering, per generator and summed
    MetricSpec("proposals_{gen}", "count", EVERY, "structures the generator proposed this round"),
    MetricSpec("valid_{gen}", "count", EVERY, "of those, passing the validity filter (charge, distances, atoms)"),
    MetricSpec("unique_{gen}", "count", EVERY, "of those, not a StructureMatcher duplicate of any candidate so far"),
    MetricSpec("novel_{gen}", "count", EVERY,
               "of those, matching no reference structure (equals unique_{gen} without references)"),
    MetricSpec("time_generate_{gen}_s", "s", EVERY, "wall time of this generator's proposals and filters"),
    MetricSpec("budget_share_{gen}", "fraction", EVERY,
               "share of this round's proposals the generator got (Thompson-sampled from its hit rate)"),
    MetricSpec("budget_posterior_{gen}", "fraction", UPDATED,
               "posterior mean of (hit rate of its picks) x (share of its proposals that were new): "
               "expected hits per proposal, the yield the budget split follows"),
    MetricSpec("proposals", "count", EVERY, "sum of proposals_{gen}"),
    MetricSpec("valid", "count", EVERY, "sum of valid_{gen}"),
    MetricSpec("unique", "count", EVERY, "sum of unique_{gen}: new candidates stored this round"),
    MetricSpec("novel", "count", EVERY, "sum of novel_{gen}"),
    # acquisition
    MetricSpec("pool_size", "count", EVERY, "candidates not yet picked, the acquisition's choice set"),
    MetricSpec("acquisition_method_is_model", "0/1", EVERY, "1 when the surrogate picked, 0 for a model-free pick"),
    # evaluation and results
    MetricSpec("evaluations_{oracle}", "count", EVERY,
               "results the oracle returned this round (MLIP: for this round's picks; a lab: "
               "what arrived since the previous round)"),
    MetricSpec("failed_{oracle}", "count", EVERY, "of those, failed (exploded relaxation, timeout, dead worker)"),
    MetricSpec("evaluations_total_{oracle}", "count", EVERY, "the oracle's results so far (ok and failed)"),
    MetricSpec("failed_total_{oracle}", "count", EVERY, "of those, failed"),
    MetricSpec("evaluations_total", "count", EVERY, "MLIP oracle calls so far (ok and failed)"),
    MetricSpec("ok_total", "count", EVERY, "successful MLIP evaluations so far"),
    MetricSpec("sun_count", "count", EVERY,
               "hits so far: stable (e_above_hull <= hull.stable_threshold), unique and novel"),
    MetricSpec("sun_rate", "fraction", EVERY, "sun_count / evaluations_total"),
    MetricSpec("best_e_above_hull", "eV/atom", EVERY, "lowest e_above_hull of any evaluated candidate, current hull"),
    MetricSpec("hypervolume", "product of the objectives' units", MULTI,
               "volume the Pareto front of the evaluated candidates dominates: over acquisition.objectives "
               "when there are several, else over (e_above_hull, p_synth); reference point e_above_hull "
               "0.5 eV/atom, p_synth 0, any other objective its worst value so far"),
    MetricSpec("lab_results_new", "count", LAB, "lab results taken in at the start of the round"),
    MetricSpec("lab_results_total", "count", LAB, "lab results so far"),
    MetricSpec("lab_requests_new", "count", LAB, "lab requests sent this round"),
    MetricSpec("lab_requests_open", "count", LAB, "lab requests not yet answered"),
    MetricSpec("lab_results_waited", "count", LAB, "results a round held for (lab.wait) got"),
    MetricSpec("time_lab_wait_s", "s", LAB, "time a round held for lab results (lab.wait)"),
    # surrogate
    MetricSpec("surrogate_nll", "nats", MODEL, "GP negative log marginal likelihood per training point"),
    MetricSpec("surrogate_n_train", "count", MODEL, "GP training points"),
    MetricSpec("time_surrogate_fit_s", "s", MODEL, "GP fit time"),
    MetricSpec("surrogate_nll_{objective}", "nats", MODEL, "surrogate_nll of the model of one objective"),
    MetricSpec("surrogate_exact", "0/1", MODEL, "1 for an exact GP, 0 for one on a subset of the data"),
    MetricSpec("surrogate_multi_fidelity", "0/1", MODEL, "1 when MLIP and lab values are modelled jointly"),
    MetricSpec("acq_screen_rescored", "count", MODEL, "pool candidates the batch step rescored exactly"),
    MetricSpec("acq_screen_certified", "0/1", MODEL, "1 when the pool screen provably kept the best picks"),
    MetricSpec("acq_picks_{arm}", "count", MODEL, "picks this acquisition function made this round"),
    MetricSpec("acq_weight_{arm}", "probability", MODEL, "GP-Hedge weight of the acquisition function"),
    MetricSpec("acq_reward_{arm}", "standardized", MODEL, "GP-Hedge reward of its previous nominees"),
    MetricSpec("surrogate_mae_last_round", "eV/atom", PARITY,
               "|predicted - measured| e_above_hull over this round's evaluated picks"),
    MetricSpec("surrogate_within_1sigma", "fraction", PARITY, "of those, measured within 1 predicted sigma"),
    MetricSpec("surrogate_within_2sigma", "fraction", PARITY, "of those, measured within 2 predicted sigma"),
    # generators' own learning
    MetricSpec("gen_{gen}_{key}", "varies", GENERATOR, "what Generator.update returns (weights, success rates)"),
    # time per stage and use of the oracle
    MetricSpec("time_generate_s", "s", EVERY,
               "propose, filter and deduplicate, all generators (when generated_ahead is 1, this ran "
               "ahead of the round and is not part of its time_round_s)"),
    MetricSpec("generated_ahead", "flag", EVERY,
               "1 when this round's candidates were generated ahead of it (config `overlap`): while "
               "the previous round's oracle ran, learning from all rounds but that one, or, for the "
               "first round, while the campaign started"),
    MetricSpec("time_featurize_s", "s", EVERY, "embeddings of new candidates"),
    MetricSpec("time_acquire_s", "s", EVERY, "surrogate fit and acquisition"),
    MetricSpec("time_oracle_s", "s", EVERY, "wall time until every pick of the round came back"),
    MetricSpec("time_oracle_startup_s", "s", EVERY,
               "time the round waited for MLIP workers still loading their model (the first round, "
               "or after a worker was replaced) before it could embed candidates"),
    MetricSpec("time_update_s", "s", EVERY, "generator updates"),
    MetricSpec("time_record_s", "s", EVERY,
               "tables, CIFs, plots and artifact upload; with `overlap`, only gathering their data, "
               "the files are written while the next round's oracle runs"),
    MetricSpec("time_round_s", "s", EVERY, "the whole round, as run in this process"),
    MetricSpec("oracle_utilization", "fraction", EVERY,
               "MLIP workers' busy time / (time_oracle_s x workers)"),
)


def round_metric_names(generators: list[str], oracles: list[str], when: tuple[str, ...] = (EVERY,)) -> list[str]:
    """The concrete metric names a round logs for these generators and oracles.

    `gen_{gen}_{key}` names are left out: their keys belong to the generator.
    """
    out: list[str] = []
    for spec in ROUND_METRICS:
        if spec.when not in when or any(p in spec.name for p in ("{key}", "{arm}", "{objective}")):
            continue
        if "{gen}" in spec.name:
            out.extend(spec.name.format(gen=g) for g in generators)
        elif "{oracle}" in spec.name:
            out.extend(spec.name.format(oracle=o) for o in oracles)
        else:
            out.append(spec.name)
    return out


def undocumented(names: list[str]) -> list[str]:
    """The names that match no ROUND_METRICS entry (a placeholder matches any non-empty text)."""
    import re

    pats = [re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(s.name)) + "$") for s in ROUND_METRICS]
    return sorted(n for n in names if not any(p.match(n) for p in pats))


def metrics_markdown() -> str:
    """The table in docs/metrics.md, rendered from ROUND_METRICS."""
    lines = ["| metric | unit | logged | meaning |", "|---|---|---|---|"]
    for s in ROUND_METRICS:
        lines.append(f"| `{s.name}` | {s.unit} | {s.when} | {s.meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


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
    """One campaign's MLflow run; every call after `start` writes to that run.

    MLflow is a window, not the campaign's memory, so no call here raises: a failure is logged
    (a warning the first time, then at INFO), metrics that could not be sent are kept and sent
    with the next batch, and while the tracking store is down (`cooldown_s` after a failure)
    calls are skipped instead of waiting on it again."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None,
                 cooldown_s: float = 30.0, max_unsent: int = 100_000):
        # MLflow prints an INFO line per migration on a fresh SQLite store; keep the terminal clean
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.uri = uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        self.cooldown_s = cooldown_s
        self.max_unsent = max_unsent
        self.client = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.failures = 0  # calls that failed or were skipped
        self._warned = False
        self._down_until = 0.0
        self._unsent: list = []  # mlflow Metric objects not yet accepted by the store
        self._connect()

    # -- failure handling ------------------------------------------------------------------
    def _connect(self) -> bool:
        """Open the client and the experiment; False (and a logged failure) when it cannot."""
        if self.experiment_id is not None:
            return True
        return self._call("open the experiment", self._open_experiment, False)

    def _open_experiment(self) -> bool:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            loc = None
            # A local store keeps artifacts beside the run folders; a server chooses its own
            # (proxied) artifact root, which is what makes a remote --tracking-uri work.
            if self.artifact_root is not None and self.uri.startswith("sqlite"):
                self.artifact_root.mkdir(parents=True, exist_ok=True)
                loc = self.artifact_root.resolve().as_uri()
            self.experiment_id = client.create_experiment(self.experiment, artifact_location=loc)
        else:
            self.experiment_id = exp.experiment_id
        self.client = client
        return True

    def _call(self, what: str, fn: Callable[[], _T], default: _T) -> _T:
        """fn(), or `default` when it raises or the store is cooling down after a failure."""
        if time.monotonic() < self._down_until:
            self.failures += 1
            log.debug("MLflow is down: skipped %s", what)
            return default
        try:
            return fn()
        except Exception as err:  # any MLflow, network or disk error: the campaign goes on
            self.failures += 1
            self._down_until = time.monotonic() + self.cooldown_s
            if not self._warned:
                self._warned = True
                log.warning("MLflow tracking at %s failed to %s (%s: %s); the campaign goes on and "
                            "its store keeps every result; later tracking failures are logged at "
                            "INFO", self.uri, what, type(err).__name__, str(err)[:300])
            else:
                log.info("MLflow tracking failed to %s: %s: %s", what, type(err).__name__, str(err)[:300])
            return default

    @property
    def ok(self) -> bool:
        """Whether tracking has a run to write to."""
        return self.client is not None and self.run_id is not None

    # -- the run ---------------------------------------------------------------------------
    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str],
              run_id: str | None = None) -> str | None:
        """Start a new run (or continue `run_id`); its id, or None when MLflow cannot be reached
        (the caller tries again on its next start)."""
        if run_id:
            self.run_id = run_id
            if self._connect():
                self._call("reopen the run", lambda: self.client.update_run(run_id, status="RUNNING"), None)
            return run_id
        if not self._connect():
            return None
        return self._call("start the run", lambda: self._create_run(run_name, params, tags), None)

    def _create_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        tags = dict(tags)
        # MLflow's own tags, so the UI's "source" and "git commit" columns are filled too
        tags.setdefault("mlflow.source.name", "xtalforge")
        tags.setdefault("mlflow.source.type", "LOCAL")
        if tags.get("git_commit"):
            tags.setdefault("mlflow.source.git.commit", tags["git_commit"])
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        flat = flatten(params)
        keys = metric_keys(list(flat))
        items = [Param(keys[k], v) for k, v in flat.items()]
        for i in range(0, len(items), 90):
            self.client.log_batch(self.run_id, params=items[i : i + 90])
        return self.run_id

    def logged_steps(self, key: str) -> set[int]:
        """Steps already logged for metric `key` (empty when MLflow cannot say)."""
        if not self.ok:
            return set()
        return self._call("read a metric history",
                          lambda: {m.step for m in self.client.get_metric_history(self.run_id, metric_key(key))},
                          set())

    def log_metrics(self, metrics: dict[str, float], step: int) -> bool:
        """Log the finite numbers of `metrics` at `step` (the round); others are skipped. Names
        are made MLflow-safe (`metric_key`). Metrics MLflow did not take are kept and sent with
        the next call. True when everything so far has been sent."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        finite = {k: float(v) for k, v in metrics.items()
                  if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))}
        keys = metric_keys(list(finite))
        self._unsent.extend(Metric(keys[k], v, ts, step) for k, v in finite.items())
        if len(self._unsent) > self.max_unsent:  # a long outage: keep the newest
            del self._unsent[: len(self._unsent) - self.max_unsent]
        if not self.ok:
            return False
        return self._call("log metrics", self._flush, False)

    def _flush(self) -> bool:
        while self._unsent:
            batch = self._unsent[:900]
            self.client.log_batch(self.run_id, metrics=batch)
            del self._unsent[: len(batch)]
        return True

    def set_tag(self, key: str, value: str) -> None:
        if self.ok:
            self._call(f"set tag {key}", lambda: self.client.set_tag(self.run_id, key, value[:5000]), None)

    def set_description(self, markdown: str) -> None:
        """The run's description: the UI shows it at the top of the run page."""
        self.set_tag("mlflow.note.content", markdown)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        # a full disk or a remote hiccup must not stop the campaign
        if self.ok:
            self._call(f"log artifact {path}", lambda: self.client.log_artifact(self.run_id, str(path), subdir), None)

    def log_artifacts(self, folder: Path, subdir: str | None = None) -> None:
        if self.ok:
            self._call(f"log artifacts {folder}",
                       lambda: self.client.log_artifacts(self.run_id, str(folder), subdir), None)

    def log_image(self, png: Path, key: str, step: int) -> None:
        """A PNG as an MLflow image with a step: the UI shows it in the run's charts with a
        step slider, so a plot can be followed round by round."""
        def send() -> None:
            from PIL import Image

            with Image.open(png) as im:
                self.client.log_image(self.run_id, im.convert("RGB"), key=metric_key(key), step=step,
                                      synchronous=True)

        if self.ok:
            self._call(f"log image {png}", send, None)

    def finish(self, status: str = "FINISHED") -> None:
        if not self.ok:
            return
        if self._unsent:  # a last try for what an outage held back
            self._down_until = 0.0
            self._call("log metrics", self._flush, False)
        self._call("end the run", lambda: self.client.set_terminated(self.run_id, status=status), None)

    def run_url(self) -> str:
        if self.uri.startswith("http"):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.uri} · experiment {self.experiment_id} · run {self.run_id}"


def artifact_root_of(run_dir: Path, uri: str, run_id: str | None) -> str:
    """Where a campaign's artifacts live, as a URI: the experiment's artifact location when the
    run is known, else the folder `Tracker` uses for a local store (beside the run folders)."""
    if run_id:
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            run = client.get_run(run_id)
            return client.get_experiment(run.info.experiment_id).artifact_location
        except Exception as err:
            log.warning("could not read the run's artifact location: %s", err)
    return (Path(run_dir).resolve().parent / "mlartifacts").as_uri()


def ui_command(uri: str, host: str, port: int, artifact_root: str | None = None) -> list[str]:
    """The `mlflow ui` command line for a tracking store.

    One worker: the UI serves one reader, and each worker costs a Python process.
    `--default-artifact-root` points experiments created from the UI at the campaign's artifact
    folder, so what the UI and the campaign write ends up in one place.
    """
    import sys

    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root]
    return cmd


def ensure_env() -> None:
    # mlflow asks git for provenance on every run start; silence that noise where git is absent
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def ui_target(run_dir: Path | None, tracking_uri: str | None = None) -> tuple[str, str | None]:
    """(tracking URI, artifact root URI or None) that `xtalforge ui` should open.

    With a run folder: its config's tracking URI (unless `tracking_uri` overrides it) and the
    artifact location of its MLflow run. Without: `tracking_uri`, else the default local store
    runs/mlflow.db with its artifacts in runs/mlartifacts."""
    if run_dir is None:
        if tracking_uri:
            return tracking_uri, None
        return resolve_uri("sqlite:///runs/mlflow.db"), (Path("runs") / "mlartifacts").resolve().as_uri()
    from xtalforge.config import load_config
    from xtalforge.loop.run_paths import resolved_uri

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a campaign folder (no config.yaml)")
    # a relative SQLite path in config.yaml is relative to the run folder, so a copied folder
    # opens the copy's store
    uri = tracking_uri or resolved_uri(load_config(run_dir / "config.yaml", relative_to=run_dir).tracking.uri,
                                       run_dir)
    if uri.startswith(("http://", "https://")):
        return uri, None
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"{run_dir}: its tracking store {uri[len('sqlite:///'):]} is not there "
                                "(copy it with the run folder, or name one with --tracking-uri)")
    run_id = None
    if (run_dir / "store.db").is_file():
        from xtalforge.loop.store import CampaignStore, store_problem

        if store_problem(run_dir / "store.db") is None:
            st = CampaignStore(f"sqlite:///{(run_dir / 'store.db').resolve()}")
            run_id = st.get("mlflow_run_id")
            st.close()
    return uri, local_artifact_root(uri, artifact_root_of(run_dir, uri, run_id))


def local_artifact_root(uri: str, recorded: str) -> str:
    """The artifact root to serve for a local SQLite store: the recorded one (an absolute URI
    MLflow keeps in the store) unless the store was moved or copied, in which case the
    `mlartifacts` folder beside the store it is now, when there is one."""
    if not uri.startswith("sqlite:///") or not recorded.startswith("file://"):
        return recorded
    here = Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
    from urllib.parse import unquote, urlparse

    there = Path(unquote(urlparse(recorded).path))
    if there != here and here.is_dir():
        return here.as_uri()
    return recorded
