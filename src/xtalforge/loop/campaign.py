"""The round driver: propose -> filter -> featurize -> acquire -> evaluate -> update -> record.

A campaign is an object built from its config and its run folder; everything it knows after a
crash comes back from the store, so `Campaign.open(run_dir).run()` resumes where it stopped.
What it found lives in `CampaignResults`, how it picks in `Selector`, and it drives the oracles
of its config through the `Oracle` role without naming any of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from xtalforge.acquisition.registry import get_arm
from xtalforge.config import CampaignConfig, ConfigError, element_data_problems, load_config, parse_config
from xtalforge.loop import report
from xtalforge.loop.config_guard import guard_resume
from xtalforge.loop.lock import CampaignLocked, RunLock, lock_holder
from xtalforge.loop.proposals import Proposer
from xtalforge.loop.results import CampaignResults
from xtalforge.loop.run_paths import portable_config, resolved_config
from xtalforge.loop.selector import Selector
from xtalforge.loop.store import CampaignStore
from xtalforge.loop.tracking import Tracker, git_commit, resolve_uri
from xtalforge.oracles.base import Oracle, OracleContext
from xtalforge.types import Candidate, Measurement, RoundContext, Status

log = logging.getLogger(__name__)


def _yield_to_the_oracle() -> None:
    """Lower this thread's CPU priority (Linux: nice is per thread): the background threads'
    work overlaps the oracle and should use the cores the MLIP workers leave idle, not slow the
    relaxations down."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


def _timed(timings: dict[str, float]) -> dict[str, float]:
    return {f"time_{k}_s": v for k, v in timings.items()}


@dataclass
class RoundStats:
    round: int
    metrics: dict[str, float] = field(default_factory=dict)


class Campaign:
    """One discovery campaign in one run folder (config.yaml, store.db, cifs/, report files)."""

    def __init__(self, config: CampaignConfig, run_dir: Path, progress: bool = True,
                 echo: Callable[[str], None] = print, allow_config_change: Sequence[str] = ()):
        cfg = self.cfg = config
        self.run_dir = Path(run_dir)
        self.allow_config_change = list(allow_config_change)  # settings a resume may change
        self.progress = progress
        self.echo = echo
        self.lock = RunLock(self.run_dir)
        self.store = CampaignStore(f"sqlite:///{(self.run_dir / 'store.db').resolve()}")
        self.synth = None
        if cfg.synthesis.model and cfg.synthesis.use != "off":
            from xtalforge.synthesis.registry import load_model

            self.synth = load_model(cfg.synthesis.model)
        self.proposer = Proposer(cfg, self.store, self.synth)
        # rebuilt from the store by load(): a second process may have written to it meanwhile
        self.results: CampaignResults | None = None
        self.selector: Selector | None = None
        self.oracles: list[Oracle] = []  # started by run(), in config order
        self.tracker: Tracker | None = None
        self._owns_ray = False
        self._pending_states: dict[str, dict] = {}
        self._ahead_wait_s = 0.0  # seconds the last round waited for the next one's lookahead
        self.writer = report.RecordWriter(progress)  # each round's files, during the next oracle
        # the lookahead generation, the record writer and the surrogate warm-up; opened by run()
        self._background: ThreadPoolExecutor | None = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def create(cls, config: CampaignConfig, **kw) -> Campaign:
        """A new run folder under config.output_dir, never reusing an existing one. Nothing is
        written for a config the campaign could not run."""
        problems = element_data_problems(list(config.chemical_system), bool(config.hull.references))
        if problems:
            raise ConfigError(problems)
        base = config.run_dir()
        run_dir = base
        if run_dir.exists():
            run_dir = base.with_name(f"{base.name}-{datetime.now():%Y%m%d-%H%M%S}")
        run_dir.mkdir(parents=True, exist_ok=False)
        data = config.model_dump(mode="json")
        data["tracking"]["uri"] = resolve_uri(data["tracking"]["uri"])
        if data["references"]["sources"]:  # files among them, from wherever the campaign resumes
            data["references"]["sources"] = [s if s in ("snapshot", "mp-api") else str(Path(s).resolve())
                                             for s in data["references"]["sources"]]
        # files inside the runs/ folder are named relative to the run folder: it stays movable
        data = portable_config(data, run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        return cls(parse_config(resolved_config(data, run_dir)), run_dir, **kw)

    @classmethod
    def open(cls, run_dir: str | Path, **kw) -> Campaign:
        """The campaign in `run_dir`, refused at once while another process runs it."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "store.db").is_file():
            raise FileNotFoundError(f"{run_dir} is not a campaign folder (no config.yaml and store.db)")
        holder = lock_holder(run_dir)
        if holder:
            raise CampaignLocked(f"campaign {run_dir} is already running (pid {holder}); wait for it or stop it first")
        return cls(load_config(run_dir / "config.yaml", relative_to=run_dir), run_dir, **kw)

    def load(self) -> CampaignResults:
        """Results, generator states and the deduplicator, as the store has them now."""
        self.proposer.load()
        self.results = CampaignResults.load(self.cfg, self.store, self.run_dir)
        self.selector = Selector(self.cfg, self.store, self.results, self.synth, self.echo)
        return self.results

    def _start_services(self) -> None:
        from xtalforge.loop.executor import start_ray

        cfg = self.cfg
        if any(get_arm(k).needs_model for k in cfg.acquisition.portfolio or [cfg.acquisition.kind]):
            from xtalforge.model.surrogate import warm_up

            self._background.submit(warm_up)
        self._owns_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus, runtime_env=cfg.ray.runtime_env)
        self.proposer.ray_ready.set()
        ctx = OracleContext(config=cfg, run_dir=self.run_dir, store=self.store)
        self.oracles = [kind.build(spec, ctx) for kind, spec in cfg.oracle_kinds()]
        self.tracker = self.writer.tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment,
                                                     artifact_root=self.run_dir.parent / "mlartifacts")
        run_id = self.store.get("mlflow_run_id")
        new_id = self.tracker.start(
            run_name=self.run_dir.name,
            params=cfg.tracking_params(),
            tags={"chemical_system": cfg.chemsys, "config_hash": cfg.config_hash(),
                  "git_commit": git_commit(), "run_dir": self.run_dir.name},
            run_id=run_id,
        )
        if run_id is None and new_id:  # None while MLflow is unreachable: the next start retries
            self.store.put("mlflow_run_id", new_id)

    @property
    def screen(self) -> Oracle:
        """The oracle that evaluates the acquisition's picks."""
        return next(o for o in self.oracles if o.role == "screen")

    def close(self, status: str = "FINISHED") -> None:
        try:
            self.writer.flush(wait=True)  # the last round's files, even when stopping early
        except Exception as err:
            log.warning("could not write the last round's files: %s", err)
        if self._background is not None:  # a lookahead still running after a failure just ends
            self._background.shutdown(wait=False, cancel_futures=True)
            self._background = None
        if self.tracker is not None:
            try:
                self.tracker.finish(status)
            except Exception:
                pass
        for o in self.oracles:
            o.shutdown()
        self.oracles = []
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False
        self.store.close()
        self.lock.release()

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> list[RoundStats]:
        """Run (or resume) until the round budget is spent, or `stop_after` rounds are done."""
        self.lock.acquire()
        self._background = self.writer.background = ThreadPoolExecutor(
            max_workers=3, thread_name_prefix="xtalforge-background", initializer=_yield_to_the_oracle)
        status = "FAILED"
        done: list[RoundStats] = []
        try:
            # an edited config.yaml that alters results is refused unless allowed by name
            guard_resume(self.store, portable_config(self.cfg.model_dump(mode="json"), self.run_dir),
                         sum(1 for s in self.store.stages().values() if s == "done"), self.allow_config_change)
            for line in self.load().describe():
                self.echo(f"  {line}")
            stages = self.store.stages()
            todo = [r for r in range(self.cfg.rounds) if stages.get(r) != "done"]
            # the first round's candidates, while Ray starts and the MLIP workers load their model
            startup = self._generate_ahead(todo[0], known_before=None, embed=False) if todo else None
            self._start_services()
            for r in range(self.cfg.rounds):
                if stages.get(r) == "done":
                    continue
                if stop_after is not None and sum(1 for s in self.store.stages().values() if s == "done") >= stop_after:
                    status = "KILLED"
                    self.echo(f"stopped after round {r}; continue with: xtalforge resume {self.run_dir}")
                    return done
                # read afresh: the previous round may have generated this one ahead
                done.append(self._round(r, self.store.stages().get(r), startup if todo and r == todo[0] else None))
            self._final_report()
            status = "FINISHED"
            return done
        finally:
            self.close(status)

    def _ctx(self, r: int, known_before: int | None = None) -> RoundContext:
        """What round `r`'s generators see: the relaxed structures measured so far, best first;
        with `known_before`, only those from earlier rounds (generation ahead of the oracle)."""
        return RoundContext(round=r, elements=self.cfg.elements, max_atoms=self.cfg.max_atoms,
                            rng=np.random.default_rng([self.cfg.seed, r]),
                            history=self.results.history(known_before))

    def _round(self, r: int, stage: str | None, pregenerated: Future | None = None) -> RoundStats:
        """One round, resumable at each stage boundary.

        Stages: (none) -> generated -> selected -> updated -> done. Each boundary is one store
        transaction, so a kill between two boundaries repeats at most the work since the last
        one, and never an oracle result that was already committed."""
        cfg, metrics = self.cfg, {}
        # the wait at the end of the round before for this round's lookahead belongs to this one
        timings, self._ahead_wait_s = {"ahead_wait": self._ahead_wait_s}, 0.0
        t_round = time.perf_counter() - timings["ahead_wait"]
        self.results.load_predictions()
        self.echo(f"── round {r + 1}/{cfg.rounds} ──")
        metrics.update(self._collect_slow(r))  # results of slower oracles, before the surrogate fit
        if stage is None and pregenerated is not None and self._finish_ahead(r, pregenerated, "while the campaign started"):
            stage = "generated"
        if stage is None:
            t = time.perf_counter()
            with report.stage(f"generating {cfg.proposals_per_round} structures", self.progress):
                fresh, gen_metrics, lines = self.proposer.generate(r, self._ctx(r), self.proposer.plan(r))
            timings["generate"] = time.perf_counter() - t
            for line in lines:
                self.echo(line)
            self.store.add_generated(r, fresh, {**metrics, **gen_metrics, **_timed(timings), "generated_ahead": 0.0})
            stage = "generated"
        if stage == "generated":
            metrics.update(self.store.round_metrics().get(r, {}))
            # the embeddings need the oracle's workers: a first round waits here for their model
            wait_ready = getattr(self.screen, "wait_ready", None)
            timings["oracle_startup"] = wait_ready() if wait_ready else 0.0
            t = time.perf_counter()
            with report.stage("featurizing new candidates", self.progress):
                self._featurize()
            timings["featurize"] = time.perf_counter() - t
            t = time.perf_counter()
            with report.stage("fitting the surrogate and picking", self.progress):
                metrics.update(self.selector.select(r, self.oracles))
            timings["acquire"] = time.perf_counter() - t
            self.results.save_predictions(r)  # before the stage mark: parity plots survive a resume
            self.store.set_stage(r, "selected", {**metrics, **_timed(timings)})
            stage = "selected"
        else:
            metrics.update(self.store.round_metrics().get(r, {}))
        ahead = None
        if stage == "selected":
            # both run while the oracle evaluates this round's picks
            ahead = self._generate_ahead(r + 1, known_before=r)
            self.writer.flush()
            t = time.perf_counter()
            results = self._evaluate(r)
            timings["oracle"] = time.perf_counter() - t
            if hasattr(self.screen, "busy_s"):  # seconds its workers spent busy
                busy, workers = self.screen.busy_s, getattr(self.screen, "workers", 1)
                if timings["oracle"] > 0:
                    metrics["oracle_utilization"] = min(1.0, busy / (timings["oracle"] * workers))
                self.screen.busy_s = 0.0
            t = time.perf_counter()
            if self.cfg.update_generators:
                learned, self._pending_states = self.proposer.update(r, self.results.current(results))
                metrics.update(learned)
            timings["update"] = time.perf_counter() - t
            # generator states and the stage move together: a resumed round never applies
            # the same rewards twice
            self.store.set_stage(r, "updated", {**metrics, **_timed(timings)}, states=self._pending_states)
            self._pending_states = {}
        else:
            results = self.results.round_results(r)
        metrics.update(self._confirm(r))  # slower oracles' requests (idempotent); waits only if configured
        metrics = {**self.store.round_metrics().get(r, {}), **metrics}
        metrics.update(self.results.round_metrics(r, results, self.proposer.names))
        self.results.save_current(r)
        metrics.update(_timed(timings))
        t = time.perf_counter()
        rows = report.ranked(self.results)
        self.writer.record(report.snapshot_round(self.results, r, metrics, rows), later=self.cfg.overlap)
        metrics["time_record_s"] = time.perf_counter() - t
        metrics["time_round_s"] = time.perf_counter() - t_round
        # MLflow before the 'done' mark, skipping a step it already holds: a kill between the
        # two repeats this block but never logs a step twice
        if self.tracker and r not in self.tracker.logged_steps("best_e_above_hull"):
            self.tracker.log_metrics(metrics, step=r)
        self.store.set_stage(r, "done", metrics)
        report.print_round(self.results, self.proposer.names, r, metrics, rows, echo=self.echo)
        if ahead is not None:
            t = time.perf_counter()
            self._finish_ahead(r + 1, ahead)
            waited = self._ahead_wait_s = time.perf_counter() - t
            if waited > 0.5:  # the lookahead outlasted the oracle: the round paid for the rest
                self.echo(f"  waited {waited:.1f} s for round {r + 2}'s candidates")
        return RoundStats(r, metrics)

    # -- stages ----------------------------------------------------------------------------
    def _generate_ahead(self, r: int, known_before: int | None, embed: bool = True) -> Future | None:
        """Start generating round `r` in a thread, from the results of rounds before
        `known_before` (None: all), so that what it proposes does not depend on how many of the
        current round's results came in before a resume. With `embed`, the oracle's workers
        embed the candidates too. None when there is no round `r`, it was already generated, or
        overlap is off."""
        if not self.cfg.overlap or r >= self.cfg.rounds or self.store.stages().get(r) is not None:
            return None
        ctx, plan = self._ctx(r, known_before=known_before), self.proposer.plan(r)

        def work() -> tuple[list[Candidate], dict[str, float], list[str], float, dict[str, np.ndarray]]:
            t = time.perf_counter()
            fresh, metrics, lines = self.proposer.generate(r, ctx, plan)
            seconds = time.perf_counter() - t
            self.results.repeats_of_evaluated(fresh, refresh=False)  # matched here, not at the pick
            # queued on the oracle's workers behind this round's relaxations: one that finishes
            # early embeds them while the other still relaxes
            return fresh, metrics, lines, seconds, self._features(fresh) if fresh and embed else ({}, {})

        return self._background.submit(work)

    def _finish_ahead(self, r: int, fut: Future, during: str = "while the oracle ran") -> bool:
        """Commit round `r`'s candidates generated ahead of it; False if that failed."""
        try:
            fresh, metrics, lines, seconds, feats = fut.result()
        except Exception as err:  # generating again at the round's start costs time, not results
            log.warning("generating round %d ahead failed (%s: %s); it will generate when it starts",
                        r + 1, type(err).__name__, err)
            self.proposer.forget_unstored()
            return False
        self.echo(f"  round {r + 1}, generated {during}:")
        for line in lines:
            self.echo(line)
        self.store.add_generated(r, fresh, {**metrics, "time_generate_s": seconds, "generated_ahead": 1.0})
        self.store.set_features(*feats)  # a kill before this only means featurizing them again
        return True

    def _featurize(self) -> None:
        """Features of every stored candidate that has none yet."""
        cands = self.store.candidates()
        have = self.store.features([c.id for c in cands])
        todo = [c for c in cands if c.id not in have]
        if todo:
            self.store.set_features(*self._features(todo))

    def _features(self, cands: list[Candidate]) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """Feature rows and, from the same MLIP pass, single-point energies for candidate meta."""
        from xtalforge.loop import single_point

        # the default "chgnet+composition" embeds on the oracle's workers (one model load each)
        acfg, m = self.cfg.acquisition, self.cfg.mlip
        return single_point.featurize(cands, acfg.featurizer, self.cfg.elements, self.screen, acfg.single_point,
                                      self.cfg.hull.mp2020_for(m.model) if m is not None else False)

    def _evaluate(self, r: int) -> list[tuple[Candidate, Measurement]]:
        """Submit round r's picks to the screening oracle and store each result as it lands."""
        oracle = self.screen
        todo_ids = [i for i in self.store.selected(oracle.name, round=r) if i not in self.results.measured]
        cands = {c.id: c for c in self.store.candidates(ids=todo_ids)}
        todo = [cands[i] for i in todo_ids if i in cands]
        if todo:
            self.store.log_event("submit", [c.id for c in todo], r, oracle.name)
            oracle.submit(todo, round=r)
            workers = getattr(oracle, "workers", None)
            bar = report.progress(len(todo), f"{oracle.name}" + (f" ({workers} workers)" if workers else ""),
                                  self.progress)
            # once a worker is idle for the last relaxations: the next round's hyperparameters,
            # this round's proposals matched against known phases (its novelty metrics) and the
            # pool against what was evaluated
            prefit = self.cfg.overlap and r + 1 < self.cfg.rounds
            # the first fit has nothing earlier to fall back on, so the next pick would wait for
            # it: it starts once half the round is back instead
            first_fit = prefit and not self.selector.has_hyperparameters()
            n_workers = workers if isinstance(workers, int) else 1
            idle = getattr(oracle, "idle_workers", lambda: int(len(oracle.pending()) < n_workers))
            done = 0
            while oracle.pending():
                for m in oracle.collect(timeout_s=5.0):
                    self.results.record(m)  # committed before anything else looks at it
                    bar.update(1)
                    done += 1
                    if m.status != Status.ok:
                        bar.write(f"  {m.candidate_id} failed: {m.error}")
                if prefit and oracle.pending() and idle() > 0:
                    prefit = first_fit = False
                    stored = {c.id: c for c in self.store.candidates()}
                    self.selector.prefit(self._background, self.oracles, stored)
                    self.selector.check_pool_ahead(r, stored)
                elif first_fit and oracle.pending() and 2 * done >= len(todo):
                    first_fit = False
                    self.selector.prefit(self._background, self.oracles)
            if prefit:  # no worker was idle (the batches ended together): fit during the round's tail
                self.selector.prefit(self._background, self.oracles)
            bar.close()
        return self.results.round_results(r)

    # -- slower oracles: requests out, results in; never block unless configured -----------
    def _slow(self) -> list[Oracle]:
        return [o for o in self.oracles if o.role != "screen"]

    def _collect_slow(self, r: int) -> dict[str, float]:
        """Take in what slower oracles returned since the last look (a lab's inbox files are
        read here; its HTTP API and `xtalforge lab submit` have already committed theirs)."""
        metrics: dict[str, float] = {}
        previous = self.store.round_metrics().get(r - 1, {})
        for o in self._slow():
            new = o.collect(0.0)
            for m in new:  # a lab's intake has committed them already: then this only counts them
                self.results.record(m)
            for line in getattr(o, "notes", list)():
                self.echo(line)
            if new:
                self.echo(f"  {o.name}: {len(new)} result(s) taken in, {len(self.results.by_oracle[o.name])} in all")
            if hasattr(o, "metrics_after_collect"):
                metrics.update(o.metrics_after_collect(previous))
        return metrics

    def _confirm(self, r: int) -> dict[str, float]:
        """Round r's requests to each slower oracle: the most promising screened results it was
        not asked about. Idempotent (a resumed round re-sends its stored picks). With
        `wait_timeout_s` set, holds the round until they are answered or that time passes."""
        metrics: dict[str, float] = {}
        slow = self._slow()
        routes = (report.synthesis_routes(self.results, self.tracker) or {}) if slow else {}
        for o in slow:
            cands = self.selector.confirm_picks(o, r)
            for c in cands:  # the route travels with the request
                if routes.get(c.id):
                    c.meta.setdefault("synthesis_route", routes[c.id][0])
            before = set(o.pending())
            o.submit(cands, round=r)
            sent = len(set(o.pending()) - before)
            if sent:
                self.echo(f"  {o.name}: {sent} request(s) sent")
            wait_s = getattr(o, "wait_timeout_s", None)
            if wait_s and cands:
                for m in o.wait_for([c.id for c in cands], wait_s):
                    self.results.record(m)
            if hasattr(o, "metrics_after_submit"):
                metrics.update(o.metrics_after_submit())
        return metrics

    # -- the end ---------------------------------------------------------------------------
    def _final_report(self) -> None:
        self.writer.flush()  # the last round's files, beside the final report
        self.results.load_predictions()
        paths = report.write_final(self.results, self.tracker, routes=report.synthesis_routes(self.results, self.tracker))
        report.print_final(self.results, paths, self.tracker, echo=self.echo)
