"""MLflow: the window onto a campaign (the store, not MLflow, is its memory).

One MLflow run per campaign; a resumed campaign continues the same run. A round's metrics are
logged once its results are in the store, at step = round number as the CLI and the report
count rounds (1, 2, ...), so a resumed round never logs a step twice.

`ROUND_METRICS` is the catalogue and the contract with dashboards: every name a round may log,
its unit, when it appears, and the MLflow key it is logged under. The keys carry a section
prefix (`discovery/`, `generators/`, ...): MLflow groups a run's charts by it, sections in
alphabetical order, so the headline section is named to come first. The loop and its emitters
use the short internal names; this module alone maps them to keys (`mlflow_key`).
docs/metrics.md is rendered from it (`metrics_markdown`) and a test keeps the two in step.
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
    """One per-round metric. `name` (what the loop emits) may hold `{gen}` (a generator),
    `{oracle}` (an oracle), `{arm}` (an acquisition function), `{objective}` (an objective) or
    `{key}` (generator-defined); `key` is the MLflow key, with the same placeholders."""

    name: str
    unit: str
    when: str
    meaning: str
    key: str = ""


# The sections of a run's charts, in the order MLflow shows them (alphabetical), with what
# each holds. The headline charts are the `discovery/` ones, shown first.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("discovery", "the headline: hits, hit rate, oracle calls, hypervolume; the plots as images"),
    ("generators", "what each generator proposed, how much got through, its budget share"),
    ("lab", "requests to and results from a lab oracle"),
    ("oracle", "oracle results and failures, lowest e_above_hull, worker use"),
    ("selection", "the acquisition: pool, arms' picks and weights, the pool screen"),
    ("surrogate", "the GP: fit, calibration of its predictions"),
    ("time", "seconds per stage of the round"),
)
OTHER_SECTION = "other"  # a name the catalogue does not know: still logged, under other/


ROUND_METRICS: tuple[MetricSpec, ...] = (
    # generation and filtering, per generator and summed
    MetricSpec("proposals_{gen}", "count", EVERY, "structures the generator proposed this round",
               key="generators/proposals_{gen}"),
    MetricSpec("valid_{gen}", "count", EVERY, "of those, passing the validity filter (charge, distances, atoms)",
               key="generators/valid_{gen}"),
    MetricSpec("unique_{gen}", "count", EVERY, "of those, not a StructureMatcher duplicate of any candidate so far",
               key="generators/unique_{gen}"),
    MetricSpec("novel_{gen}", "count", EVERY,
               "of those, matching no reference structure (equals unique_{gen} without references)",
               key="generators/novel_{gen}"),
    MetricSpec("time_generate_{gen}_s", "s", EVERY, "wall time of this generator's proposals and filters",
               key="time/generate_{gen}_s"),
    MetricSpec("budget_share_{gen}", "fraction", EVERY,
               "share of this round's proposals the generator got (Thompson-sampled from its hit rate)",
               key="generators/budget_share_{gen}"),
    MetricSpec("budget_posterior_{gen}", "fraction", UPDATED,
               "posterior mean of (hit rate of its picks) x (share of its proposals that were new): "
               "expected hits per proposal, the yield the budget split follows",
               key="generators/budget_posterior_{gen}"),
    MetricSpec("settled_dropped_{gen}", "count", EVERY,
               "of the unique ones, left out of the pool because their composition is settled "
               "(relaxed 3 or more times; see loop/compositions.py)",
               key="generators/settled_dropped_{gen}"),
    MetricSpec("compositions_relaxed", "count", UPDATED, "reduced compositions relaxed so far",
               key="generators/compositions_relaxed"),
    MetricSpec("compositions_settled", "count", UPDATED,
               "of those, relaxed often enough that fewer of their new proposals reach the pool",
               key="generators/compositions_settled"),
    MetricSpec("proposals", "count", EVERY, "sum of proposals_{gen}",
               key="generators/proposals"),
    MetricSpec("valid", "count", EVERY, "sum of valid_{gen}",
               key="generators/valid"),
    MetricSpec("unique", "count", EVERY, "sum of unique_{gen} less settled_dropped_{gen}: new candidates stored "
               "this round",
               key="generators/unique"),
    MetricSpec("novel", "count", EVERY, "sum of novel_{gen}",
               key="generators/novel"),
    # acquisition
    MetricSpec("pool_size", "count", EVERY, "candidates not yet picked, the acquisition's choice set",
               key="selection/pool_size"),
    MetricSpec("pool_repeats_of_evaluated", "count", "rounds whose pool held such candidates",
               "pool candidates StructureMatcher matched to the start or the result of an evaluated "
               "candidate (ahead of the pick, or as a pick, which is then replaced): left out, no oracle "
               "call is spent on them", key="selection/repeats_left_out"),
    MetricSpec("pool_size_synthesizable", "count", "campaigns with a synthesis model used as a constraint",
               "pool candidates with p_synth >= synthesis.min_p_synth, the ones the acquisition chose from",
               key="selection/pool_size_synthesizable"),
    MetricSpec("acquisition_method_is_model", "0/1", EVERY, "1 when the surrogate picked, 0 for a model-free pick",
               key="selection/model_picked"),
    # evaluation and results
    MetricSpec("evaluations_{oracle}", "count", EVERY,
               "results the oracle returned this round (MLIP: for this round's picks; a lab: "
               "what arrived since the previous round)",
               key="oracle/results_{oracle}"),
    MetricSpec("failed_{oracle}", "count", EVERY, "of those, failed (exploded relaxation, timeout, dead worker)",
               key="oracle/failed_{oracle}"),
    MetricSpec("evaluations_total_{oracle}", "count", EVERY, "the oracle's results so far (ok and failed)",
               key="oracle/results_total_{oracle}"),
    MetricSpec("failed_total_{oracle}", "count", EVERY, "of those, failed",
               key="oracle/failed_total_{oracle}"),
    MetricSpec("evaluations_total", "count", EVERY, "MLIP oracle calls so far (ok and failed)",
               key="discovery/oracle_calls"),
    MetricSpec("ok_total", "count", EVERY, "successful MLIP evaluations so far",
               key="oracle/ok_total"),
    MetricSpec("sun_count", "count", EVERY,
               "hits so far: stable (e_above_hull <= hull.stable_threshold), unique and novel",
               key="discovery/hits"),
    MetricSpec("rediscovered_count", "count", EVERY,
               "stable evaluated candidates that match a known material: rediscoveries, never hits",
               key="discovery/rediscovered"),
    MetricSpec("sun_rate", "fraction", EVERY, "sun_count / evaluations_total",
               key="discovery/hits_per_call"),
    MetricSpec("best_e_above_hull", "eV/atom", EVERY, "lowest e_above_hull of any evaluated candidate, current hull",
               key="oracle/best_e_above_hull"),
    MetricSpec("hypervolume", "product of the objectives' units", MULTI,
               "volume the Pareto front of the evaluated candidates dominates: over acquisition.objectives "
               "when there are several, else over (e_above_hull, p_synth); reference point e_above_hull "
               "0.5 eV/atom, p_synth 0, any other objective its worst value so far",
               key="discovery/hypervolume"),
    MetricSpec("lab_results_new", "count", LAB, "lab results taken in at the start of the round",
               key="lab/results_new"),
    MetricSpec("lab_results_total", "count", LAB, "lab results so far",
               key="lab/results_total"),
    MetricSpec("lab_requests_new", "count", LAB, "lab requests sent this round",
               key="lab/requests_new"),
    MetricSpec("lab_requests_open", "count", LAB, "lab requests not yet answered",
               key="lab/requests_open"),
    MetricSpec("lab_results_waited", "count", LAB, "results a round held for (lab.wait) got",
               key="lab/results_waited"),
    MetricSpec("time_lab_wait_s", "s", LAB, "time a round held for lab results (lab.wait)",
               key="time/lab_wait_s"),
    # surrogate
    MetricSpec("surrogate_nll", "nats", MODEL, "GP negative log marginal likelihood per training point",
               key="surrogate/nll"),
    MetricSpec("surrogate_n_train", "count", MODEL, "GP training points",
               key="surrogate/n_train"),
    MetricSpec("time_surrogate_fit_s", "s", MODEL,
               "GP fit time, the hyperparameters fitted ahead (surrogate_prefit) included",
               key="time/surrogate_fit_s"),
    MetricSpec("surrogate_prefit", "0/1", MODEL,
               "1 when the hyperparameters were fitted while the last relaxations of the round before "
               "finished (config `overlap`) and the picks only conditioned the GP on all results",
               key="surrogate/prefit"),
    MetricSpec("surrogate_nll_{objective}", "nats", MODEL, "surrogate_nll of the model of one objective",
               key="surrogate/nll_{objective}"),
    MetricSpec("surrogate_exact", "0/1", MODEL, "1 for an exact GP, 0 for one on a subset of the data",
               key="surrogate/exact"),
    MetricSpec("surrogate_multi_fidelity", "0/1", MODEL, "1 when MLIP and lab values are modelled jointly",
               key="surrogate/multi_fidelity"),
    MetricSpec("acq_screen_rescored", "count", MODEL, "pool candidates the batch step rescored exactly",
               key="selection/screen_rescored"),
    MetricSpec("acq_screen_certified", "0/1", MODEL, "1 when the pool screen provably kept the best picks",
               key="selection/screen_certified"),
    MetricSpec("acq_picks_{arm}", "count", MODEL, "picks this acquisition function made this round",
               key="selection/picks_{arm}"),
    MetricSpec("acq_weight_{arm}", "probability", MODEL, "GP-Hedge weight of the acquisition function",
               key="selection/weight_{arm}"),
    MetricSpec("acq_reward_{arm}", "standardized", MODEL, "GP-Hedge reward of its previous nominees",
               key="selection/reward_{arm}"),
    MetricSpec("surrogate_mae_last_round", "eV/atom", PARITY,
               "|predicted - measured| e_above_hull over this round's evaluated picks",
               key="surrogate/mae_round"),
    MetricSpec("surrogate_within_1sigma", "fraction", PARITY, "of those, measured within 1 predicted sigma",
               key="surrogate/within_1sigma_round"),
    MetricSpec("surrogate_within_2sigma", "fraction", PARITY, "of those, measured within 2 predicted sigma",
               key="surrogate/within_2sigma_round"),
    # generators' own learning
    MetricSpec("gen_{gen}_{key}", "varies", GENERATOR, "what Generator.update returns (weights, success rates)",
               key="generators/learned_{gen}_{key}"),
    # time per stage and use of the oracle
    MetricSpec("time_generate_s", "s", EVERY,
               "propose, filter and deduplicate, all generators (when generated_ahead is 1, this ran "
               "ahead of the round and is not part of its time_round_s)",
               key="time/generate_s"),
    MetricSpec("generated_ahead", "flag", EVERY,
               "1 when this round's candidates were generated ahead of it (config `overlap`): while "
               "the previous round's oracle ran, learning from all rounds but that one, or, for the "
               "first round, while the campaign started",
               key="time/generated_ahead"),
    MetricSpec("time_ahead_wait_s", "s", EVERY,
               "time the round waited, before it began, for its candidates generated and screened "
               "ahead (the lookahead outlasted the previous round's oracle); part of time_round_s",
               key="time/ahead_wait_s"),
    MetricSpec("time_featurize_s", "s", EVERY, "embeddings of new candidates",
               key="time/featurize_s"),
    MetricSpec("time_acquire_s", "s", EVERY, "surrogate fit and acquisition",
               key="time/acquire_s"),
    MetricSpec("time_oracle_s", "s", EVERY, "wall time until every pick of the round came back",
               key="time/oracle_s"),
    MetricSpec("time_oracle_startup_s", "s", EVERY,
               "time the round waited for MLIP workers still loading their model (the first round, "
               "or after a worker was replaced) before it could embed candidates",
               key="time/oracle_startup_s"),
    MetricSpec("time_update_s", "s", EVERY, "generator updates",
               key="time/update_s"),
    MetricSpec("time_record_s", "s", EVERY,
               "tables, CIFs, plots and artifact upload; with `overlap`, only gathering their data, "
               "the files are written while the next round's oracle runs",
               key="time/record_s"),
    MetricSpec("time_round_s", "s", EVERY, "the whole round, as run in this process",
               key="time/round_s"),
    MetricSpec("oracle_utilization", "fraction", EVERY,
               "MLIP workers' busy time / (time_oracle_s x workers)",
               key="oracle/utilization"),
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


def _pattern(template: str) -> re.Pattern:
    """A regex matching the concrete names of a template (a placeholder: any non-empty text)."""
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+?)", re.escape(template)) + "$")


def _by_specificity() -> list[tuple[re.Pattern, MetricSpec]]:
    """Specs in the order a name is matched against them: exact names first, then the templates
    with the most fixed text (`evaluations_total_{oracle}` before `evaluations_{oracle}`)."""
    specs = sorted(ROUND_METRICS, key=lambda sp: ("{" in sp.name, -len(re.sub(r"\{\w+\}", "", sp.name))))
    return [(_pattern(sp.name), sp) for sp in specs]


_MATCHERS = _by_specificity()


def spec_of(name: str) -> MetricSpec | None:
    """The catalogue entry a concrete metric name belongs to, or None."""
    for pat, sp in _MATCHERS:
        if pat.match(name):
            return sp
    return None


def undocumented(names: list[str]) -> list[str]:
    """The names that match no ROUND_METRICS entry (a placeholder matches any non-empty text)."""
    return sorted(n for n in names if spec_of(n) is None)


def mlflow_key(name: str) -> str:
    """The MLflow key of a metric the loop emits ("sun_count" -> "discovery/hits"); a name the
    catalogue does not know goes under `other/`. Not yet made MLflow-safe (see `mlflow_keys`)."""
    sp = spec_of(name)
    if sp is None:
        return f"{OTHER_SECTION}/{name}"
    if "{" not in sp.name:
        return sp.key
    return sp.key.format(**_pattern(sp.name).match(name).groupdict())


def mlflow_keys(names: list[str]) -> dict[str, str]:
    """name -> MLflow-safe key, sectioned (`mlflow_key`), no two names sharing a key."""
    sectioned = {n: mlflow_key(n) for n in names}
    safe = metric_keys(sorted(set(sectioned.values())))
    return {n: safe[k] for n, k in sectioned.items()}


def mlflow_step(round_index: int) -> int:
    """The MLflow step of a round: the loop counts rounds from 0, people (the CLI, the report,
    MLflow) from 1."""
    return int(round_index) + 1


# Each round's plots are also logged at this step: MLflow's image chart opens on step 0 and,
# of several images at one step, shows the last logged, so it opens on the latest round.
IMAGE_LATEST_STEP = 0


def metrics_markdown() -> str:
    """The tables in docs/metrics.md, one per section, rendered from ROUND_METRICS."""
    out: list[str] = []
    for section, about in SECTIONS:
        specs = sorted((sp for sp in ROUND_METRICS if sp.key.split("/")[0] == section), key=lambda sp: sp.key)
        out += [f"### `{section}/`: {about}", "", "| MLflow key | emitted as | unit | logged | meaning |",
                "|---|---|---|---|---|"]
        out += [f"| `{sp.key}` | `{sp.name}` | {sp.unit} | {sp.when} | {sp.meaning.replace('|', '/')} |"
                for sp in specs]
        out.append("")
    return "\n".join(out)


def renamed_markdown() -> str:
    """The changelog table of docs/metrics.md: each metric's MLflow key before sections, and now."""
    lines = ["| before | now |", "|---|---|"]
    lines += [f"| `{sp.name}` | `{sp.key}` |" for sp in ROUND_METRICS]
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


def _compact(v: Any) -> str:
    """A config value as one short line: dicts as `k=v, ...`, lists of dicts by their `name`
    with options in parentheses, empty and None values left out."""
    if isinstance(v, dict):
        return ", ".join(f"{k}={_compact(x)}" for k, x in v.items() if x not in (None, "", [], {}))
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            return "; ".join(
                (f"{x['name']}({_compact({k: y for k, y in x.items() if k != 'name'})})" if "name" in x
                 else f"({_compact(x)})").replace("()", "") for x in v)
        return "[" + ", ".join(_compact(x) for x in v) + "]"
    return str(v)


MAX_PARAM = 6000  # MLflow's limit on a param value (characters)


def grouped_params(params: dict[str, Any]) -> dict[str, str]:
    """The config, one line per top-level key, a section's options on that line
    (`acquisition` -> "kind=qlognei, batch_size=6, ..."): logged as `config.<key>` tags."""
    return {k: _compact(v)[:MAX_PARAM] for k, v in params.items()}


def headline_params(params: dict[str, Any]) -> dict[str, str]:
    """The few params that tell campaigns apart at a glance. MLflow prints a run's params above
    every image chart, so dozens of them push the plots out of view; the rest of the config is
    in the `config.<section>` tags and the config.yaml artifact."""
    acq = params.get("acquisition") or {}
    gens = params.get("generators") or []
    out = {
        "chemical_system": "-".join(params["chemical_system"]) if isinstance(params.get("chemical_system"), list)
        else params.get("chemical_system"),
        "rounds": params.get("rounds"),
        "proposals_per_round": params.get("proposals_per_round"),
        "batch_size": acq.get("batch_size") if isinstance(acq, dict) else None,
        "acquisition": acq.get("kind") if isinstance(acq, dict) else None,
        "generators": "+".join(g.get("name", "?") for g in gens if isinstance(g, dict)) or None,
    }
    return {k: str(v) for k, v in out.items() if v is not None}


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
        self._description_rank: tuple = ()  # see set_description
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
            self.experiment_id = client.create_experiment(self.experiment, artifact_location=loc,
                                                          tags=self._experiment_tags())
        else:
            self.experiment_id = exp.experiment_id
            if not (exp.tags or {}).get("mlflow.note.content"):  # an owner's own text stays
                for k, v in self._experiment_tags().items():
                    client.set_experiment_tag(self.experiment_id, k, v)
        self.client = client
        return True

    def _experiment_tags(self) -> dict[str, str]:
        """The experiment's description (shown above its runs) and the view it is made for."""
        return {"mlflow.note.content": EXPERIMENT_DESCRIPTION,
                # what the UI calls a "model training" experiment; `xtalforge ui` opens that view
                "mlflow.experimentKind": "custom_model_development"}

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
        tags.update({f"config.{k}": v for k, v in grouped_params(params).items() if v})
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={metric_key(k): v[:5000] for k, v in tags.items()})
        self.run_id = run.info.run_id
        head = headline_params(params)
        keys = metric_keys(list(head))
        self.client.log_batch(self.run_id, params=[Param(keys[k], v) for k, v in head.items()])
        return self.run_id

    def logged_steps(self, name: str) -> set[int]:
        """The rounds (0-based, as the loop counts them) already logged for metric `name` (an
        emitted name, e.g. "best_e_above_hull"); empty when MLflow cannot say."""
        if not self.ok:
            return set()
        key = mlflow_keys([name])[name]
        return self._call("read a metric history",
                          lambda: {m.step - mlflow_step(0) for m in self.client.get_metric_history(self.run_id, key)},
                          set())

    def log_metrics(self, metrics: dict[str, float], step: int) -> bool:
        """Log the finite numbers of `metrics` for round `step` (0-based, as the loop counts;
        MLflow gets step `mlflow_step(step)`, the round as people count it); others are
        skipped. Names become sectioned, MLflow-safe keys (`mlflow_keys`). Metrics MLflow did
        not take are kept and sent with the next call. True when everything so far has been sent."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        finite = {k: float(v) for k, v in metrics.items()
                  if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))}
        keys = mlflow_keys(list(finite))
        self._unsent.extend(Metric(keys[k], v, ts, mlflow_step(step)) for k, v in finite.items())
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

    def set_description(self, markdown: str, rank: tuple = ()) -> None:
        """The run's description: the UI shows it at the top of the run page. With a `rank`
        (e.g. (round, 0) for a round, (round, 1) for the final summary), a description ranked
        below the one already set is dropped: a round's files written in the background after
        the final report must not replace its summary."""
        if rank and rank < self._description_rank:
            return
        self._description_rank = max(self._description_rank, rank)
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
        """A PNG as an MLflow image chart for round `step` (0-based, as the loop counts): logged
        at the round's step (`mlflow_step`), so the slider follows the plot round by round, and
        again at `IMAGE_LATEST_STEP`, where the chart opens, so it opens on the latest round."""
        def send() -> None:
            from PIL import Image

            with Image.open(png) as im:
                rgb = im.convert("RGB")
                for s in (mlflow_step(step), IMAGE_LATEST_STEP):  # the latest last: it wins at step 0
                    self.client.log_image(self.run_id, rgb, key=metric_key(key), step=s, synchronous=True)

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
        """The run's page (a link for a tracking server; for a local store, where it is)."""
        if self.uri.startswith("http"):
            return ui_url(self.uri, self.experiment_id, self.run_id)
        return f"{self.uri} · experiment {self.experiment_id} · run {self.run_id}"


EXPERIMENT_DESCRIPTION = (
    "xtalforge discovery campaigns: one run per campaign. Open a run: its description has the "
    "headline numbers and the best candidates; **Model metrics** shows `discovery/` first "
    "(hits, hit rate, oracle calls, the plots, each opening on the latest round), then the "
    "other sections. Each run's `report/report.html` artifact is the full report. Metric "
    "names and units: docs/metrics.md in the xtalforge repository.")


def ui_url(base: str, experiment_id: str | None, run_id: str | None = None) -> str:
    """The address of an experiment (or one of its runs) in the MLflow UI at `base`, in the
    model-training view: MLflow 3 opens experiments in its GenAI view unless the address
    names the workflow type."""
    path = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") if experiment_id else "#/"
    return f"{base.rstrip('/')}/{path}?workflowType=machine_learning"


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


def ui_page(base: str, uri: str, run_dir: Path | None) -> str:
    """The address to open in the MLflow UI at `base`: the campaign's run in `run_dir` (its id
    from the campaign store, its experiment from the tracking store `uri`) in the model-training
    view; without a run folder, or when either store cannot say, the experiments list."""
    run_id = experiment_id = None
    if run_dir is not None and (Path(run_dir) / "store.db").is_file():
        try:
            from xtalforge.loop.store import CampaignStore, store_problem

            if store_problem(Path(run_dir) / "store.db") is None:
                st = CampaignStore(f"sqlite:///{(Path(run_dir) / 'store.db').resolve()}")
                run_id = st.get("mlflow_run_id")
                st.close()
            if run_id:
                from mlflow.tracking import MlflowClient

                experiment_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
        except Exception as err:  # the address is a convenience: the UI still starts
            log.info("could not find the campaign's MLflow run: %s", err)
            run_id = experiment_id = None
    return ui_url(base, experiment_id, run_id if experiment_id else None)
