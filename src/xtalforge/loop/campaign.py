"""The round driver: propose -> filter -> featurize -> acquire -> evaluate -> update -> record.

A campaign is an object built from its config and its run folder; everything it knows after a
crash comes back from the store, so `Campaign.open(run_dir).run()` resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from xtalforge.config import CampaignConfig, load_config
from xtalforge.generators.base import Generator
from xtalforge.generators.registry import build_generator
from xtalforge.loop import report
from xtalforge.acquisition.core import Picks, farthest_point, pool_matrix
from xtalforge.loop.dedup import Deduplicator
from xtalforge.loop.lock import RunLock
from xtalforge.loop.store import CampaignStore
from xtalforge.loop.tracking import Tracker, git_commit, resolve_uri
from xtalforge.references.hull import Hull, gather_references, mp2020_entry
from xtalforge.structure import ValidityLimits, filter_valid
from xtalforge.types import Candidate, Measurement, RoundContext, Status

log = logging.getLogger(__name__)
ORACLE = "mlip"


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
                 echo: Callable[[str], None] = print):
        self.cfg = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.echo = echo
        self.lock = RunLock(self.run_dir)
        self.store = CampaignStore(f"sqlite:///{(self.run_dir / 'store.db').resolve()}")
        self.tracker: Tracker | None = None
        self.oracle = None
        self._owns_ray = False
        # surrogate's (mean, stdev) of e_above_hull at pick time, to score its calibration
        self._predicted: dict[str, tuple[float, float]] = {}
        self._pending_states: dict[str, dict] = {}
        self._pending_record: report.RoundRecord | None = None  # written during the next oracle
        self._writer: Future | None = None
        # the lookahead generation, the record writer and the surrogate warm-up; opened by run()
        self._background: ThreadPoolExecutor | None = None
        self._ray_ready = threading.Event()  # generation started before Ray waits on it for tasks
        self.lab_oracle = None  # lab: the LabOracle, built on first use (issue #8)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def create(cls, config: CampaignConfig, **kw) -> Campaign:
        """A new run folder under config.output_dir, never reusing an existing one."""
        base = config.run_dir()
        run_dir = base
        if run_dir.exists():
            run_dir = base.with_name(f"{base.name}-{datetime.now():%Y%m%d-%H%M%S}")
        run_dir.mkdir(parents=True, exist_ok=False)
        cfg = config.model_copy(deep=True)
        cfg.tracking.uri = resolve_uri(cfg.tracking.uri)
        # a resumed campaign may start from another folder: files the config names are absolute
        cfg.hull.references = [str(Path(p).resolve()) for p in cfg.hull.references]
        cfg.reference_structures = [str(Path(p).resolve()) for p in cfg.reference_structures]
        for attr in ("model", "precursors"):
            v = getattr(cfg.synthesis, attr)
            if v:
                setattr(cfg.synthesis, attr, str(Path(v).resolve()))
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        return cls(cfg, run_dir, **kw)

    @classmethod
    def open(cls, run_dir: str | Path, **kw) -> Campaign:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "store.db").is_file():
            raise FileNotFoundError(f"{run_dir} is not a campaign folder (no config.yaml and store.db)")
        return cls(load_config(run_dir / "config.yaml"), run_dir, **kw)

    # -- state rebuilt from the store -----------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        self.limits = ValidityLimits(max_atoms=cfg.max_atoms)
        self.generators: list[Generator] = []
        for g in cfg.generators:
            gen = build_generator(g.name, cfg.elements, cfg.max_atoms, g.options)
            state = self.store.load_state(f"generator:{gen.name}")
            if state:
                gen.load_state_dict(state)
            self.generators.append(gen)
        # user files + (only with MP_API_KEY set, or a cache from an earlier fetch) the system's
        # Materials Project entries, fetched once and cached beside the run folders
        refs = gather_references(cfg.elements, cfg.hull.references, mp_api=None,
                                 cache_dir=self.run_dir.parent / "mp_cache")
        if not cfg.mlip.model.startswith("chgnet") and not refs:
            log.warning("mlip.model %s is not on the Materials Project energy scale, but the hull only has MP "
                        "elemental references: name references on the model's scale in hull.references",
                        cfg.mlip.model)
        self.hull = Hull(cfg.elements, refs)
        self.synth = None
        if cfg.synthesis.model and cfg.synthesis.use != "off":
            from xtalforge.synthesis.registry import load_model

            self.synth = load_model(cfg.synthesis.model)
        self.measured: dict[str, Measurement] = {}
        for m in self.store.measurements(oracle=ORACLE):
            self.measured[m.candidate_id] = m
            if m.status == Status.ok and m.relaxed is not None:
                e = m.values["energy_per_atom"] * len(m.relaxed)
                self.hull.add(m.candidate_id, mp2020_entry(m.relaxed, e, m.candidate_id, cfg.hull.mp2020_for(cfg.mlip.model)))
        self.dedup = Deduplicator(self.store.candidates())

    def _start_services(self) -> None:
        from xtalforge.loop.executor import start_ray
        from xtalforge.oracles.mlip.oracle import MLIPOracle

        cfg = self.cfg
        if cfg.acquisition.kind != "random":
            from xtalforge.model.surrogate import warm_up

            self._background.submit(warm_up)
        self._owns_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus)
        self._ray_ready.set()
        m = cfg.mlip
        self.oracle = MLIPOracle(self.hull, workers=m.workers, fmax=m.fmax, max_steps=m.max_steps,
                                 relax_cell=m.relax_cell, timeout_s=m.timeout_s,
                                 apply_mp2020=cfg.hull.mp2020_for(m.model), model=m.model,
                                 model_options=m.model_options, batched=m.batched, max_batch=m.max_batch,
                                 device=m.device, properties=m.properties)
        self.tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment,
                               artifact_root=self.run_dir.parent / "mlartifacts")
        run_id = self.store.get("mlflow_run_id")
        new_id = self.tracker.start(
            run_name=self.run_dir.name,
            params=cfg.model_dump(),
            tags={"chemical_system": cfg.chemsys, "config_hash": cfg.config_hash(),
                  "git_commit": git_commit(), "run_dir": str(self.run_dir.resolve())},
            run_id=run_id,
        )
        if run_id is None:
            self.store.put("mlflow_run_id", new_id)

    def close(self, status: str = "FINISHED") -> None:
        try:
            self._write_pending_record(wait=True)  # the last round's files, even when stopping early
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
        if self.oracle is not None:
            self.oracle.shutdown()
            self.oracle = None
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
        self._background = ThreadPoolExecutor(max_workers=3, thread_name_prefix="xtalforge-background",
                                              initializer=_yield_to_the_oracle)
        status = "FAILED"
        done: list[RoundStats] = []
        try:
            self._build()
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
        hist = []
        cands = {c.id: c for c in self.store.candidates(ids=[k for k, m in self.measured.items() if m.status == Status.ok])}
        e_hull = self.hull.all_e_above_hull()
        for cid, m in self.measured.items():
            if known_before is not None and m.round >= known_before:
                continue
            if m.status == Status.ok and cid in cands:
                m.values["e_above_hull"] = e_hull.get(cid, m.values["e_above_hull"])
                hist.append((cands[cid], m))
        hist.sort(key=lambda t: t[1].values["e_above_hull"])
        return RoundContext(round=r, elements=self.cfg.elements, max_atoms=self.cfg.max_atoms,
                            rng=np.random.default_rng([self.cfg.seed, r]), history=hist)

    def _round(self, r: int, stage: str | None, pregenerated: Future | None = None) -> RoundStats:
        """One round, resumable at each stage boundary.

        Stages: (none) -> generated -> selected -> updated -> done. Each boundary is one store
        transaction, so a kill between two boundaries repeats at most the work since the last
        one, and never an oracle result that was already committed."""
        cfg, timings, metrics = self.cfg, {}, {}
        t_round = time.perf_counter()
        self._load_predictions()
        self.echo(f"── round {r + 1}/{cfg.rounds} ──")
        metrics.update(self._lab_collect(r))  # lab: results that came in, before the surrogate fit
        if stage is None and pregenerated is not None and self._finish_ahead(r, pregenerated, "while the campaign started"):
            stage = "generated"
        if stage is None:
            t = time.perf_counter()
            with report.stage(f"generating {cfg.proposals_per_round} structures", self.progress):
                fresh, gen_metrics, lines = self._generate(r, self._ctx(r), self._plan(r))
            timings["generate"] = time.perf_counter() - t
            for line in lines:
                self.echo(line)
            self.store.add_generated(r, fresh, {**metrics, **gen_metrics, **_timed(timings), "generated_ahead": 0.0})
            stage = "generated"
        if stage == "generated":
            metrics.update(self.store.round_metrics().get(r, {}))
            # the embeddings need the MLIP workers: a first round waits here for their model
            timings["oracle_startup"] = self.oracle.wait_ready()
            t = time.perf_counter()
            with report.stage("featurizing new candidates", self.progress):
                self._featurize()
            timings["featurize"] = time.perf_counter() - t
            t = time.perf_counter()
            with report.stage("fitting the surrogate and picking", self.progress):
                metrics.update(self._select(r))
            timings["acquire"] = time.perf_counter() - t
            self._save_predictions(r)  # before the stage mark: parity plots survive a resume
            self.store.set_stage(r, "selected", {**metrics, **_timed(timings)})
            stage = "selected"
        else:
            metrics.update(self.store.round_metrics().get(r, {}))
        ahead = None
        if stage == "selected":
            # both run while the oracle relaxes this round's picks
            ahead = self._generate_ahead(r + 1, known_before=r)
            self._write_pending_record()
            t = time.perf_counter()
            results = self._evaluate(r)
            timings["oracle"] = time.perf_counter() - t
            busy = self.oracle.busy_s if self.oracle else 0.0
            if timings["oracle"] > 0:
                metrics["oracle_utilization"] = min(1.0, busy / (timings["oracle"] * self.cfg.mlip.workers))
            self.oracle.busy_s = 0.0
            t = time.perf_counter()
            metrics.update(self._update(r, results))
            timings["update"] = time.perf_counter() - t
            # generator states and the stage move together: a resumed round never applies
            # the same rewards twice
            self.store.set_stage(r, "updated", {**metrics, **_timed(timings)},
                                 states=self._pending_states)
            self._pending_states = {}
        else:
            results = self._results(r)
        metrics.update(self._lab_request(r))  # lab: this round's requests (idempotent); waits only if configured
        metrics = {**self.store.round_metrics().get(r, {}), **metrics}
        metrics.update(self._round_metrics(r, results))
        metrics.update(_timed(timings))
        t = time.perf_counter()
        rows = report.ranked(self)
        self._record(report.snapshot_round(self, r, metrics, rows), later=self.cfg.overlap)
        metrics["time_record_s"] = time.perf_counter() - t
        metrics["time_round_s"] = time.perf_counter() - t_round
        # MLflow before the 'done' mark, skipping a step it already holds: a kill between the
        # two repeats this block but never logs a step twice
        if self.tracker and r not in self.tracker.logged_steps("best_e_above_hull"):
            self.tracker.log_metrics(metrics, step=r)
        self.store.set_stage(r, "done", metrics)
        report.print_round(self, r, metrics, rows)
        if ahead is not None:
            t = time.perf_counter()
            self._finish_ahead(r + 1, ahead)
            waited = time.perf_counter() - t
            if waited > 0.5:  # the lookahead outlasted the oracle: the round paid for the rest
                self.echo(f"  waited {waited:.1f} s for round {r + 2}'s candidates")
        return RoundStats(r, metrics)

    # -- the record: files and artifacts of each round ---------------------------------------
    def _record(self, rec: report.RoundRecord, later: bool) -> None:
        """Write a round's files now, or (`later`) during the next round's oracle."""
        self._write_pending_record(wait=True)
        if later:
            self._pending_record = rec
            return
        with report.stage("writing tables, CIFs and plots", self.progress):
            self._write(rec)

    def _write_pending_record(self, wait: bool = False) -> None:
        """Start writing the held-back record in a thread (or, with `wait`, write it and wait)."""
        rec, self._pending_record = self._pending_record, None
        if self._writer is not None:
            self._writer.result()  # _write never raises
            self._writer = None
        if rec is None:
            return
        if wait:
            self._write(rec)
            return
        self._writer = self._background.submit(self._write, rec)

    def _write(self, rec: report.RoundRecord) -> None:
        try:
            report.write_record(rec, self.tracker)
        except Exception as err:  # files are derived from the store: never worth a campaign
            log.warning("writing round %d's files failed: %s: %s", rec.round + 1, type(err).__name__, err)

    # -- stages ----------------------------------------------------------------------------
    def _plan(self, r: int) -> tuple[dict[str, int], dict[str, float]]:
        """Proposals per generator for round `r`, split by each generator's recent yield
        (Thompson sampling, floored shares), with the shares as metrics."""
        from xtalforge.loop.budget import load_bandit

        bandit = load_bandit(self.store, [g.name for g in self.generators],
                             {g.name: g.weight for g in self.cfg.generators}, self.cfg.hull.stable_threshold)
        # its own random stream keeps the proposals' streams what they were without it
        shares = bandit.shares(np.random.default_rng([self.cfg.seed, r, 2]))
        return bandit.split(self.cfg.proposals_per_round, shares), bandit.share_metrics(shares)

    def _generate(self, r: int, ctx: RoundContext,
                  plan: tuple[dict[str, int], dict[str, float]]) -> tuple[list[Candidate], dict[str, float], list[str]]:
        """Propose, filter and deduplicate round `r`'s candidates; returns them, their metrics
        and a line per generator to show. Touches neither the store nor the campaign's
        measurements, nor prints, so it may run in a thread beside the oracle's collection."""
        from xtalforge.loop.executor import propose_parallel

        counts, share_metrics = plan
        metrics: dict[str, float] = dict(share_metrics)
        fresh: list[Candidate] = []
        lines: list[str] = []
        for gen in self.generators:
            n = counts[gen.name]
            t = time.perf_counter()
            prepare = getattr(gen, "prepare", None)
            if prepare is not None:  # driver-side work (pre-training) before Ray tasks copy it
                metrics.update({f"gen_{gen.name}_{k}": v for k, v in prepare(ctx).items()})
            chunks = min(max(2, self.cfg.mlip.workers), n // self.cfg.ray.proposals_per_task)
            if chunks > 1 and not self._ray_ready.wait(timeout=300):
                raise RuntimeError("Ray did not start within 300 s")
            props = propose_parallel(gen, n, ctx, chunks=chunks)
            for c in props:
                c.round = r
            valid, _why = filter_valid(props, self.limits, self.cfg.elements)
            unique = self.dedup.unique(valid)
            fresh.extend(unique)
            metrics[f"proposals_{gen.name}"] = len(props)
            metrics[f"valid_{gen.name}"] = len(valid)
            metrics[f"unique_{gen.name}"] = len(unique)
            metrics[f"time_generate_{gen.name}_s"] = time.perf_counter() - t
            lines.append(f"  {gen.name}: {len(props)} proposed, {len(valid)} valid, {len(unique)} new")
        if self.synth is not None and fresh:
            from xtalforge.synthesis.metrics import synth_metrics

            # scored once, before they are stored: the score rides in meta into the store, the
            # acquisition's constraint and the generators' rewards
            p = np.asarray(self.synth.score(fresh), dtype=float)
            for c, v in zip(fresh, p):
                c.meta["p_synth"] = float(v)
            metrics.update(synth_metrics(p, self.cfg.synthesis.min_p_synth))
        metrics["proposals"] = sum(metrics[f"proposals_{g.name}"] for g in self.generators)
        metrics["valid"] = sum(metrics[f"valid_{g.name}"] for g in self.generators)
        metrics["unique"] = len(fresh)
        return fresh, metrics, lines

    def _generate_ahead(self, r: int, known_before: int | None, embed: bool = True) -> Future | None:
        """Start generating round `r` in a thread, from the results of rounds before
        `known_before` (None: all), so that what it proposes does not depend on how many of the
        current round's results came in before a resume. With `embed`, the MLIP workers embed the
        candidates too. None when there is no round `r`, it was already generated, or overlap is off."""
        if not self.cfg.overlap or r >= self.cfg.rounds or self.store.stages().get(r) is not None:
            return None
        ctx, plan = self._ctx(r, known_before=known_before), self._plan(r)

        def work() -> tuple[list[Candidate], dict[str, float], list[str], float, dict[str, np.ndarray]]:
            t = time.perf_counter()
            fresh, metrics, lines = self._generate(r, ctx, plan)
            seconds = time.perf_counter() - t
            # queued on the MLIP actors behind this round's relaxations: one that finishes
            # early embeds them while the other still relaxes
            return fresh, metrics, lines, seconds, self._features(fresh) if fresh and embed else {}

        return self._background.submit(work)

    def _finish_ahead(self, r: int, fut: Future, during: str = "while the oracle ran") -> bool:
        """Commit round `r`'s candidates generated ahead of it; False if that failed."""
        try:
            fresh, metrics, lines, seconds, feats = fut.result()
        except Exception as err:  # generating again at the round's start costs time, not results
            log.warning("generating round %d ahead failed (%s: %s); it will generate when it starts",
                        r + 1, type(err).__name__, err)
            self.dedup = Deduplicator(self.store.candidates())  # forget what was never stored
            return False
        self.echo(f"  round {r + 1}, generated {during}:")
        for line in lines:
            self.echo(line)
        self.store.add_generated(r, fresh, {**metrics, "time_generate_s": seconds, "generated_ahead": 1.0})
        self.store.set_features(feats)  # a kill before this only means featurizing them again
        return True

    def _featurize(self) -> None:
        """Features of every stored candidate that has none yet."""
        cands = self.store.candidates()
        have = self.store.features([c.id for c in cands])
        todo = [c for c in cands if c.id not in have]
        if todo:
            self.store.set_features(self._features(todo))

    def _features(self, cands: list[Candidate]) -> dict[str, np.ndarray]:
        from xtalforge.model.descriptors import featurize

        # the default "chgnet+composition" embeds on the MLIP actors (one model load each)
        X = featurize(self.cfg.acquisition.featurizer, [c.structure for c in cands], self.cfg.elements,
                      embed=self.oracle.embed)
        return {c.id: X[i] for i, c in enumerate(cands)}

    def _training_data(self, feats: dict[str, np.ndarray]) -> dict:
        """{quantity: OutcomeData} for every objective and constraint an oracle has measured:
        MLIP values at fidelity 1 (e_above_hull from the current hull), lab values at fidelity 2
        (a lab quantity that `trains` e_above_hull counts as e_above_hull). Where one quantity
        has both, the surrogate models them jointly (multi-fidelity)."""
        from xtalforge.model.surrogate import OutcomeData

        acfg = self.cfg.acquisition
        names = list(dict.fromkeys([o.name for o in acfg.objectives] + [c.name for c in acfg.constraints]))
        e_hull = self.hull.all_e_above_hull()
        lab = self._lab()
        data = {}
        for name in names:
            rows: list[tuple[str, float, int]] = []
            for cid, m in self.measured.items():
                if m.status != Status.ok or cid not in feats:
                    continue
                v = e_hull.get(cid) if name == "e_above_hull" else m.values.get(name)
                if v is not None:
                    rows.append((cid, float(v), int(m.fidelity)))
            if lab is not None:
                src = self.cfg.lab.trains if name == "e_above_hull" and self.cfg.lab.trains else name
                if src in {qq.name for qq in self.cfg.lab.quantities}:
                    rows += [(cid, float(v), int(lab.fidelity)) for cid, v in lab.values(src).items() if cid in feats]
            if rows:
                fid = np.array([f for _, _, f in rows])
                data[name] = OutcomeData(X=np.stack([feats[c] for c, _, _ in rows]), y=np.array([v for _, v, _ in rows]),
                                         fidelity=fid if len(set(fid.tolist())) > 1 else None,
                                         ids=[c for c, _, _ in rows])
        return data

    def _select(self, r: int) -> dict[str, float]:
        from xtalforge.acquisition.core import Acquirer, AcquisitionError, Constraint, Target
        from xtalforge.model.surrogate import Surrogate

        cfg, acfg = self.cfg, self.cfg.acquisition
        all_ids = [c.id for c in self.store.candidates()]
        feats = self.store.features(all_ids)
        chosen = set(self.store.selected(ORACLE))
        pool_ids, X_pool = pool_matrix([i for i in all_ids if i not in chosen and i not in self.measured], feats)
        metrics: dict[str, float] = {"pool_size": float(len(pool_ids))}
        if self.synth is not None and pool_ids:
            pool_ids, X_pool = self._synth_filter(pool_ids, X_pool, metrics)
        if not pool_ids:
            self.echo("  pool is empty: every candidate is evaluated; nothing to pick this round")
            return metrics
        rng = np.random.default_rng([cfg.seed, r, 1])
        data = self._training_data(feats)
        pending_ids = [i for i in chosen if i not in self.measured and i in feats]
        pending_ids += self._lab_pending(feats, pending_ids)  # lab: requests out at the lab are pending too
        X_pending = np.stack([feats[i] for i in pending_ids]) if pending_ids else None
        q = acfg.batch_size
        kinds = list(acfg.portfolio or [acfg.kind])
        objectives = [Target(o.name, o.minimize) for o in acfg.objectives]
        unmeasured = [t.name for t in objectives if t.name not in data]
        if unmeasured and self.measured:
            have = sorted({k for m in self.measured.values() for k in m.values} | {"e_above_hull"})
            raise AcquisitionError(f"objective(s) {', '.join(unmeasured)}: no oracle measures them "
                                   f"(measured quantities: {', '.join(have)})")
        n_primary = len(data[objectives[0].name].y) if objectives[0].name in data else 0
        if kinds == ["random"]:
            idx = rng.choice(len(pool_ids), size=min(q, len(pool_ids)), replace=False).tolist()
            picks = Picks(idx, [0.0] * len(idx), "random")
        elif n_primary < 2 or unmeasured:
            X_seen = data[objectives[0].name].X if n_primary else None
            picks = farthest_point(X_pool, q, rng, exclude=X_seen)
        else:
            sur = Surrogate(max_exact=acfg.max_exact_gp, hyper_subset=acfg.hyper_subset, seed=cfg.seed)
            sur.load_state_dict(self.store.load_state("surrogate"))
            reports = sur.fit(data)
            self.store.save_state("surrogate", r, sur.state_dict())
            first = reports[objectives[0].name]
            metrics.update({"surrogate_nll": first.nll, "surrogate_n_train": float(first.n_train),
                            "time_surrogate_fit_s": float(sum(rep.seconds for rep in reports.values())),
                            "surrogate_exact": float(first.kind in ("exact", "multi_fidelity")),
                            "surrogate_multi_fidelity": float(first.kind.startswith("multi_fidelity"))})
            for name, rep in reports.items():
                metrics[f"surrogate_nll_{name}"] = rep.nll
            known = self._known_values(pool_ids, [c.name for c in acfg.constraints if c.name not in data])
            # a constraint nothing has measured yet (a lab quantity, say) waits for its first value
            active = [Constraint(c.name, c.op, c.threshold) for c in acfg.constraints
                      if c.name in data or (known and c.name in known)]
            for c in acfg.constraints:
                if c.name not in data and not (known and c.name in known):
                    self.echo(f"  constraint {c.name} {c.op} {c.threshold:g}: no value measured or known yet; not applied")
            acq = Acquirer(objectives, active,
                           kinds=kinds, shortlist=acfg.shortlist, mc_samples=acfg.mc_samples,
                           ucb_beta=acfg.ucb_beta, hedge_eta=acfg.hedge_eta, seed=cfg.seed)
            acq.load_state_dict(self.store.load_state("acquisition"))
            observed = {}
            for name, d in data.items():
                for cid, v in zip(d.ids, d.y):
                    observed.setdefault(cid, {})[name] = float(v)
            metrics.update(acq.update(sur, feats, observed))  # GP-Hedge: reward last round's arms
            picks = acq.select(sur, X_pool, q, rng, X_pending=X_pending, known=known, ids=pool_ids)
            self.store.save_state("acquisition", r, acq.state_dict())
            metrics.update({f"acq_screen_{k}": v for k, v in acq.last_screen.items()})
            for arm in acq.kinds:
                metrics[f"acq_picks_{arm}"] = float(sum(a == arm for a in picks.arms))
            if "e_above_hull" in sur.outcomes and picks.indices:
                j = sur.index("e_above_hull")
                # with the fitted noise: the spread a fresh measurement shows, for calibration
                mean, std = sur.predict(X_pool[picks.indices], observation_noise=True)
                for k, i in enumerate(picks.indices):
                    self._predicted[pool_ids[i]] = (float(mean[k, j]), float(std[k, j]))
        self.store.add_selection(r, ORACLE, [(pool_ids[i], v) for i, v in zip(picks.indices, picks.values)])
        metrics["acquisition_method_is_model"] = float(picks.method not in ("farthest_point", "random"))
        self.echo(f"  picked {len(picks.indices)} of {len(pool_ids)} by {picks.method}")
        return metrics

    def _known_values(self, ids: list[str], names: list[str]) -> dict[str, np.ndarray] | None:
        """Per-candidate values (candidate.meta) of constrained quantities no oracle measures,
        e.g. a synthesizability score; NaN where a candidate lacks one (it is then filtered)."""
        if not names:
            return None
        meta = {c.id: c.meta or {} for c in self.store.candidates(ids=ids)}
        out = {n: np.array([float(meta.get(i, {}).get(n, np.nan)) for i in ids]) for n in names}
        return {n: v for n, v in out.items() if np.isfinite(v).any()} or None

    def _evaluate(self, r: int) -> list[tuple[Candidate, Measurement]]:
        todo_ids = [i for i in self.store.selected(ORACLE, round=r) if i not in self.measured]
        cands = {c.id: c for c in self.store.candidates(ids=todo_ids)}
        todo = [cands[i] for i in todo_ids if i in cands]
        if todo:
            self.store.log_event("submit", [c.id for c in todo], r, ORACLE)
            self.oracle.submit(todo, round=r)
            bar = report.progress(len(todo), f"relax ({self.cfg.mlip.workers} workers)", self.progress)

            def keep(m: Measurement) -> None:
                # committed before anything else looks at it: a crash now loses nothing
                self.store.add_measurement(m)
                self.measured[m.candidate_id] = m
                bar.update(1)
                if m.status != Status.ok:
                    bar.write(f"  {m.candidate_id} failed: {m.error}")

            self.oracle.drain(keep)
            bar.close()
        return self._results(r)

    def _results(self, r: int) -> list[tuple[Candidate, Measurement]]:
        """This round's picks with their stored results (current e_above_hull filled in)."""
        ids = self.store.selected(ORACLE, round=r)
        cands = {c.id: c for c in self.store.candidates(ids=ids)}
        e_hull = self.hull.all_e_above_hull()
        out = []
        for i in ids:
            if i in self.measured and i in cands:
                m = self.measured[i]
                if i in e_hull:
                    m.values["e_above_hull"] = e_hull[i]
                out.append((cands[i], m))
        return out

    def _update(self, r: int, results: list[tuple[Candidate, Measurement]]) -> dict[str, float]:
        from xtalforge.loop.budget import STATE_KEY, load_bandit

        if not self.cfg.update_generators:
            return {}
        e_hull = self.hull.all_e_above_hull()
        ok = []
        for c, m in results:
            if m.status == Status.ok:
                m.values["e_above_hull"] = e_hull.get(c.id, m.values["e_above_hull"])
                ok.append((c, m))
        metrics: dict[str, float] = {}
        for gen in self.generators:
            own = [(c, m) for c, m in ok if c.source == gen.name]
            for k, v in gen.update(own).items():
                metrics[f"gen_{gen.name}_{k}"] = v
            self._pending_states[f"generator:{gen.name}"] = gen.state_dict()
        # the bandit's state moves with the generators' and the stage mark (one transaction)
        bandit = load_bandit(self.store, [g.name for g in self.generators],
                             {g.name: g.weight for g in self.cfg.generators}, self.cfg.hull.stable_threshold)
        gen_counts = self.store.round_metrics().get(r, {})  # saved when the round was generated
        bandit.update(r, ok, {g.name: (int(gen_counts.get(f"proposals_{g.name}", 0)),
                                       int(gen_counts.get(f"unique_{g.name}", 0))) for g in self.generators})
        self._pending_states[STATE_KEY] = bandit.state_dict()
        metrics.update(bandit.posterior_metrics())
        return metrics

    def _round_metrics(self, r: int, results: list[tuple[Candidate, Measurement]]) -> dict[str, float]:
        """Hits, evaluations per oracle, novelty per generator, surrogate calibration and the
        hypervolume; names, units and meanings are in tracking.ROUND_METRICS."""
        from xtalforge.loop.metrics import hypervolume, reference_point

        e_hull = self.hull.all_e_above_hull()
        ok = [m for m in self.measured.values() if m.status == Status.ok]
        evals = len(self.measured)
        hits = self._hits(e_hull)
        this = [m for _, m in results]
        out = {
            "evaluations_mlip": float(len(this)),
            "failed_mlip": float(sum(m.status != Status.ok for m in this)),
            "evaluations_total": float(evals),
            "evaluations_total_mlip": float(evals),
            "failed_total_mlip": float(sum(m.status != Status.ok for m in self.measured.values())),
            "sun_count": float(len(hits)),
            "sun_rate": float(len(hits) / evals) if evals else 0.0,
            "best_e_above_hull": float(min(e_hull.values())) if e_hull else float("nan"),
            "ok_total": float(len(ok)),
        }
        # the store keeps only unique candidates, so this round's stored ones are its unique ones
        fresh = self.store.candidates(round=r)
        novel = self._novel(fresh)
        for gen in self.generators:
            out[f"novel_{gen.name}"] = float(sum(c.id in novel for c in fresh if c.source == gen.name))
        out["novel"] = float(sum(out[f"novel_{g.name}"] for g in self.generators))
        out.update(self._other_oracle_counts(r))
        errs = [abs(self._predicted[c.id][0] - e_hull[c.id]) for c, m in results
                if c.id in self._predicted and c.id in e_hull]
        if errs:
            out["surrogate_mae_last_round"] = float(np.mean(errs))
            z = [abs(self._predicted[c.id][0] - e_hull[c.id]) / max(self._predicted[c.id][1], 1e-9)
                 for c, m in results if c.id in self._predicted and c.id in e_hull]
            out["surrogate_within_1sigma"] = float(np.mean([v <= 1 for v in z]))
            out["surrogate_within_2sigma"] = float(np.mean([v <= 2 for v in z]))
        names, minimize = self._objectives()
        table = self._objective_values(names, e_hull)
        if table:
            Y = np.array(list(table.values()))
            out["hypervolume"] = hypervolume(np.where(minimize, Y, -Y), reference_point(names, minimize, Y))
        return out

    # -- monitoring helpers (tracking, plots, report) ---------------------------------------
    def _reference_structures(self) -> list:
        """Known structures for the novelty check: CIFs the config names (`reference_structures`,
        files or folders) plus the structures of hull reference entries that carry one."""
        if getattr(self, "_refs", None) is None:
            from xtalforge.loop.metrics import load_reference_structures

            paths = getattr(self.cfg, "reference_structures", None) or []
            refs = load_reference_structures(paths)
            refs += [e.structure for e in self.hull.references if getattr(e, "structure", None) is not None]
            self._refs = refs
        return self._refs

    def _novel(self, cands: list[Candidate]) -> set[str]:
        """Ids among `cands` that match no reference structure (cached: a verdict never changes)."""
        from xtalforge.loop.metrics import novel_ids

        if getattr(self, "_novelty", None) is None:
            self._novelty: dict[str, bool] = {}
        todo = [c for c in cands if c.id not in self._novelty]
        if todo:
            new = novel_ids(todo, self._reference_structures())
            self._novelty.update({c.id: c.id in new for c in todo})
        return {c.id for c in cands if self._novelty[c.id]}

    def _hits(self, e_hull: dict[str, float] | None = None) -> set[str]:
        """Evaluated candidates that are stable within hull.stable_threshold, unique and novel."""
        from xtalforge.loop.metrics import hit_ids

        e_hull = self.hull.all_e_above_hull() if e_hull is None else e_hull
        thr = self.cfg.hull.stable_threshold
        stable = [k for k, v in e_hull.items() if v <= thr + 1e-9]
        novel = self._novel(self.store.candidates(ids=stable)) if stable else set()
        return set(hit_ids(e_hull, novel, thr))

    def _objectives(self) -> tuple[list[str], list[bool]]:
        """(names, minimize flags) of the objectives behind the hypervolume and the Pareto
        plot: the configured acquisition objectives when there are several, else e_above_hull
        against p_synth (used only where candidates carry a synthesizability score)."""
        objs = getattr(self.cfg.acquisition, "objectives", None) or []
        if len(objs) >= 2:
            return [o.name for o in objs], [bool(o.minimize) for o in objs]
        return ["e_above_hull", "p_synth"], [True, False]

    def _objective_values(self, names: list[str], e_hull: dict[str, float]) -> dict[str, list[float]]:
        """candidate id -> its values of `names` (e_above_hull from the current hull, others from
        the MLIP measurement or candidate.meta), for evaluated candidates that have them all."""
        ids = [k for k, m in self.measured.items() if m.status == Status.ok]
        out = {}
        for c in self.store.candidates(ids=ids):
            m, row = self.measured[c.id], []
            for n in names:
                v = e_hull.get(c.id) if n == "e_above_hull" else m.values.get(n, (c.meta or {}).get(n))
                row.append(float(v) if isinstance(v, (int, float)) else float("nan"))
            if np.all(np.isfinite(row)):
                out[c.id] = row
        return out

    def _other_oracle_counts(self, r: int) -> dict[str, float]:
        """evaluations_/failed_ for each oracle besides the MLIP (a lab answers days later, so
        its count is what arrived since the previous round was recorded)."""
        lab = getattr(self.cfg, "lab", None)
        if lab is None:
            return {}
        prev = self.store.round_metrics().get(r - 1, {})
        ms = self.store.measurements(oracle=lab.name)
        total, failed = len(ms), sum(m.status != Status.ok for m in ms)
        return {f"evaluations_{lab.name}": float(total - prev.get(f"evaluations_total_{lab.name}", 0)),
                f"failed_{lab.name}": float(failed - prev.get(f"failed_total_{lab.name}", 0)),
                f"evaluations_total_{lab.name}": float(total), f"failed_total_{lab.name}": float(failed)}

    def _prediction_rounds(self) -> dict[str, int]:
        if getattr(self, "_predicted_round", None) is None:
            self._predicted_round: dict[str, int] = {}
        return self._predicted_round

    def _load_predictions(self) -> None:
        """The surrogate's pick-time predictions, back from the store after a resume."""
        rounds = self._prediction_rounds()
        for cid, (mean, std, rr) in (self.store.load_state("surrogate_predictions") or {}).items():
            self._predicted.setdefault(cid, (float(mean), float(std)))
            rounds.setdefault(cid, int(rr))

    def _save_predictions(self, r: int) -> None:
        rounds = self._prediction_rounds()
        state = {}
        for cid, (mean, std) in self._predicted.items():
            state[cid] = [mean, std, rounds.setdefault(cid, r)]
        if state:
            self.store.save_state("surrogate_predictions", r, state)

    def _predictions(self) -> dict[str, tuple[float, float, int]]:
        """candidate id -> (predicted e_above_hull, its stdev, both eV/atom; round picked)."""
        rounds = self._prediction_rounds()
        return {cid: (m, s, rounds.get(cid, -1)) for cid, (m, s) in self._predicted.items()}

    def _synth_filter(self, pool_ids: list[str], X_pool: np.ndarray,
                      metrics: dict[str, float]) -> tuple[list[str], np.ndarray]:
        """Keep the pool candidates whose P(synthesizable) reaches the configured minimum
        (the whole pool, with a message, when none does)."""
        from xtalforge.synthesis.metrics import feasible_mask, synth_metrics

        thr = self.cfg.synthesis.min_p_synth
        meta = {c.id: c.meta for c in self.store.candidates(ids=pool_ids)}
        p = np.array([float(meta.get(i, {}).get("p_synth", np.nan)) for i in pool_ids])
        missing = ~np.isfinite(p)
        if missing.any():  # candidates stored before a model was configured
            cands = {c.id: c for c in self.store.candidates(ids=[i for i, m in zip(pool_ids, missing) if m])}
            p[missing] = np.asarray(self.synth.score([cands[i] for i, m in zip(pool_ids, missing) if m]))
        metrics.update(synth_metrics(p, thr, prefix="p_synth_pool"))
        if self.cfg.synthesis.use != "constraint":
            return pool_ids, X_pool
        keep = feasible_mask(p, thr)
        if not keep.any():
            self.echo(f"  no pool candidate reaches p_synth >= {thr:g}; picking from the whole pool")
            return pool_ids, X_pool
        metrics["pool_size_synthesizable"] = float(keep.sum())
        return [i for i, k in zip(pool_ids, keep) if k], X_pool[keep]

    def _synthesis_routes(self) -> dict[str, list[dict]] | None:
        """Solid-state routes for the best candidates: candidate id -> rows (reaction,
        precursors, by-products, reaction energy per atom), best first. Also written to
        synthesis_routes.csv/.md in the run folder and to MLflow."""
        scfg = self.cfg.synthesis
        if scfg.routes_per_target == 0 or getattr(self, "hull", None) is None:
            return None  # no routes asked for, or nothing relaxed into a hull yet
        from xtalforge.synthesis.routes import routes_table, targets_from_hull, write_routes_csv, write_routes_markdown

        e_hull = self.hull.all_e_above_hull()
        top = sorted(e_hull, key=e_hull.get)[: max(self.cfg.tracking.top_k, 1)]
        try:
            rows = routes_table(targets_from_hull(self.hull, top), hull=self.hull, references=self.hull.references,
                                precursors=scfg.precursors, per_target=scfg.routes_per_target)
        except Exception as err:  # a route planner problem must not lose the campaign's report
            log.warning("synthesis routes failed: %s", err)
            return None
        for writer, name in ((write_routes_csv, "synthesis_routes.csv"), (write_routes_markdown, "synthesis_routes.md")):
            path = writer(rows, self.run_dir / name)
            if self.tracker is not None:
                self.tracker.log_artifact(path)
        out: dict[str, list[dict]] = {}
        for row in rows:
            out.setdefault(row["candidate_id"], []).append(row)
        return out

    def _final_report(self) -> None:
        self._write_pending_record()  # the last round's files, beside the final report
        self._load_predictions()
        paths = report.write_final(self, routes=self._synthesis_routes())
        report.print_final(self, paths)

    # -- lab oracle (issue #8): requests out, results in; never blocks unless configured ---
    def _lab(self):
        """The LabOracle when the config has a `lab:` section, built on first use."""
        if self.cfg.lab is None:
            return None
        if self.lab_oracle is None:
            from xtalforge.oracles.lab.oracle import LabOracle

            self.lab_oracle = LabOracle(self.cfg.lab, self.store, self.run_dir)
        return self.lab_oracle

    def _lab_collect(self, r: int) -> dict[str, float]:
        """Take in lab results that arrived since the last look: inbox files are checked here;
        the HTTP API and `xtalforge lab submit` have already committed theirs to the store."""
        lab = self._lab()
        if lab is None:
            return {}
        lab.collect(0.0)
        for path, out in lab.last_inbox:
            self.echo(f"  lab inbox: {path.name}: {out.summary()}")
        # counted against the last round's total, not this process's view: the same after a resume
        before = self.store.round_metrics().get(r - 1, {}).get("lab_results_total", 0.0)
        new = max(0.0, len(lab.results) - before)
        if new:
            self.echo(f"  lab '{lab.name}': {new:.0f} new result(s), {len(lab.results)} in all")
        return {"lab_results_new": new}

    def _lab_request(self, r: int) -> dict[str, float]:
        """Round r's lab requests: the most promising MLIP results not yet sent. Idempotent: a
        resumed round re-sends its stored picks and the store keeps one request per candidate.
        With `lab.wait`, holds the round until they are answered or lab.wait_timeout_s passes."""
        from xtalforge.oracles.lab.oracle import choose_for_lab

        lab, lcfg = self._lab(), self.cfg.lab
        if lab is None:
            return {}
        picked = self.store.selected(lab.name, round=r)
        if not picked and lcfg.requests_per_round > 0:
            sent = {q["candidate_id"] for q in self.store.lab_requests(lab.name)} | set(self.store.selected(lab.name))
            picks = choose_for_lab(self.measured, self.hull.all_e_above_hull(), sent, lcfg.requests_per_round)
            self.store.add_selection(r, lab.name, picks)
            picked = [cid for cid, _ in picks]
        cands = self.store.candidates(ids=picked)
        routes = self._synthesis_routes() or {}
        for c in cands:
            if routes.get(c.id):
                c.meta.setdefault("synthesis_route", routes[c.id][0])
        new = lab.submit(cands, round=r)
        if new:
            self.echo(f"  lab '{lab.name}': {new} request(s) sent to {lab.export_dir}")
        out = {"lab_requests_new": float(new)}
        if lcfg.wait and picked:
            t = time.perf_counter()
            got = lab.wait_for(picked, lcfg.wait_timeout_s)
            out["time_lab_wait_s"] = time.perf_counter() - t
            out["lab_results_waited"] = float(len(got))
        out["lab_requests_open"] = float(len(lab.pending()))
        out["lab_results_total"] = float(len(lab.results))
        return out

    def _lab_pending(self, feats: dict[str, np.ndarray], already: list[str]) -> list[str]:
        """Candidates out at the lab, as pending points for the acquisition."""
        lab = self._lab()
        if lab is None:
            return []
        return [i for i in lab.pending() if i in feats and i not in already]

    def _lab_targets(self, e_hull: dict[str, float]) -> dict[str, float]:
        """e_above_hull (eV/atom) with lab values of `lab.trains` put over the MLIP values:
        where the lab measured the surrogate's target, the higher fidelity wins."""
        lab = self._lab()
        if lab is None or self.cfg.lab.trains is None:
            return e_hull
        return {**e_hull, **lab.values(self.cfg.lab.trains)}
