"""The round driver: propose -> filter -> featurize -> acquire -> evaluate -> update -> record.

A campaign is an object built from its config and its run folder; everything it knows after a
crash comes back from the store, so `Campaign.open(run_dir).run()` resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from xtalforge.config import CampaignConfig, load_config
from xtalforge.generators.base import Generator
from xtalforge.generators.registry import build_generator
from xtalforge.loop import report
from xtalforge.loop.acquisition import acquire, farthest_point, pool_matrix
from xtalforge.loop.dedup import Deduplicator
from xtalforge.loop.lock import RunLock
from xtalforge.loop.store import CampaignStore
from xtalforge.loop.tracking import Tracker, git_commit, resolve_uri
from xtalforge.oracles.features import composition_features
from xtalforge.oracles.hull import Hull, load_reference_entries, mp2020_entry
from xtalforge.synthesis.validity import ValidityLimits, filter_valid
from xtalforge.types import Candidate, Measurement, RoundContext, Status

log = logging.getLogger(__name__)
ORACLE = "mlip"


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
        refs = []
        for path in cfg.hull.references:
            refs.extend(load_reference_entries(path))
        self.hull = Hull(cfg.elements, refs)
        self.measured: dict[str, Measurement] = {}
        for m in self.store.measurements(oracle=ORACLE):
            self.measured[m.candidate_id] = m
            if m.status == Status.ok and m.relaxed is not None:
                e = m.values["energy_per_atom"] * len(m.relaxed)
                self.hull.add(m.candidate_id, mp2020_entry(m.relaxed, e, m.candidate_id, cfg.hull.apply_mp2020))
        self.dedup = Deduplicator(self.store.candidates())

    def _start_services(self) -> None:
        from xtalforge.loop.executor import start_ray
        from xtalforge.oracles.mlip_oracle import MLIPOracle

        cfg = self.cfg
        self._owns_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus)
        m = cfg.mlip
        self.oracle = MLIPOracle(self.hull, workers=m.workers, fmax=m.fmax, max_steps=m.max_steps,
                                 relax_cell=m.relax_cell, timeout_s=m.timeout_s,
                                 apply_mp2020=cfg.hull.apply_mp2020)
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
        status = "FAILED"
        done: list[RoundStats] = []
        try:
            self._build()
            self._start_services()
            stages = self.store.stages()
            for r in range(self.cfg.rounds):
                if stages.get(r) == "done":
                    continue
                if stop_after is not None and sum(1 for s in self.store.stages().values() if s == "done") >= stop_after:
                    status = "KILLED"
                    self.echo(f"stopped after round {r}; continue with: xtalforge resume {self.run_dir}")
                    return done
                done.append(self._round(r, stages.get(r)))
            self._final_report()
            status = "FINISHED"
            return done
        finally:
            self.close(status)

    def _ctx(self, r: int) -> RoundContext:
        hist = []
        cands = {c.id: c for c in self.store.candidates(ids=[k for k, m in self.measured.items() if m.status == Status.ok])}
        e_hull = self.hull.all_e_above_hull()
        for cid, m in self.measured.items():
            if m.status == Status.ok and cid in cands:
                m.values["e_above_hull"] = e_hull.get(cid, m.values["e_above_hull"])
                hist.append((cands[cid], m))
        hist.sort(key=lambda t: t[1].values["e_above_hull"])
        return RoundContext(round=r, elements=self.cfg.elements, max_atoms=self.cfg.max_atoms,
                            rng=np.random.default_rng([self.cfg.seed, r]), history=hist)

    def _round(self, r: int, stage: str | None) -> RoundStats:
        """One round, resumable at each stage boundary.

        Stages: (none) -> generated -> selected -> updated -> done. Each boundary is one store
        transaction, so a kill between two boundaries repeats at most the work since the last
        one, and never an oracle result that was already committed."""
        cfg, timings, metrics = self.cfg, {}, {}
        t_round = time.perf_counter()
        self._load_predictions()
        self.echo(f"── round {r + 1}/{cfg.rounds} ──")
        ctx = self._ctx(r)
        metrics.update(self._lab_collect())  # lab: results that came in, before the surrogate fit
        if stage is None:
            t = time.perf_counter()
            metrics.update(self._generate(r, ctx))
            timings["generate"] = time.perf_counter() - t
            t = time.perf_counter()
            self._featurize()
            timings["featurize"] = time.perf_counter() - t
            self.store.set_stage(r, "generated", {**metrics, **_timed(timings)})
            stage = "generated"
        if stage == "generated":
            metrics.update(self.store.round_metrics().get(r, {}))
            t = time.perf_counter()
            metrics.update(self._select(r))
            timings["acquire"] = time.perf_counter() - t
            self._save_predictions(r)  # before the stage mark: parity plots survive a resume
            self.store.set_stage(r, "selected", {**metrics, **_timed(timings)})
            stage = "selected"
        else:
            metrics.update(self.store.round_metrics().get(r, {}))
        if stage == "selected":
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
        report.write_round(self, r, metrics)
        metrics["time_record_s"] = time.perf_counter() - t
        metrics["time_round_s"] = time.perf_counter() - t_round
        # MLflow before the 'done' mark, skipping a step it already holds: a kill between the
        # two repeats this block but never logs a step twice
        if self.tracker and r not in self.tracker.logged_steps("best_e_above_hull"):
            self.tracker.log_metrics(metrics, step=r)
        self.store.set_stage(r, "done", metrics)
        report.print_round(self, r, metrics)
        return RoundStats(r, metrics)

    # -- stages ----------------------------------------------------------------------------
    def _generate(self, r: int, ctx: RoundContext) -> dict[str, float]:
        from xtalforge.loop.executor import propose_parallel

        total_w = sum(g.weight for g in self.cfg.generators)
        metrics: dict[str, float] = {}
        fresh: list[Candidate] = []
        for gcfg, gen in zip(self.cfg.generators, self.generators):
            n = max(1, round(self.cfg.proposals_per_round * gcfg.weight / total_w))
            t = time.perf_counter()
            props = propose_parallel(gen, n, ctx, chunks=max(2, self.cfg.mlip.workers))
            for c in props:
                c.round = r
            valid, _why = filter_valid(props, self.limits, self.cfg.elements)
            unique = self.dedup.unique(valid)
            fresh.extend(unique)
            metrics[f"proposals_{gen.name}"] = len(props)
            metrics[f"valid_{gen.name}"] = len(valid)
            metrics[f"unique_{gen.name}"] = len(unique)
            metrics[f"time_generate_{gen.name}_s"] = time.perf_counter() - t
            self.echo(f"  {gen.name}: {len(props)} proposed, {len(valid)} valid, {len(unique)} new")
        self.store.add_candidates(fresh)
        metrics["proposals"] = sum(metrics[f"proposals_{g.name}"] for g in self.generators)
        metrics["valid"] = sum(metrics[f"valid_{g.name}"] for g in self.generators)
        metrics["unique"] = len(fresh)
        return metrics

    def _featurize(self) -> None:
        todo = [c for c in self.store.candidates() if c.id not in self.store.features([c.id])]
        if not todo:
            return
        emb = self.oracle.embed([c.structure for c in todo])
        feats = {
            c.id: np.concatenate([emb[i], composition_features(c.structure.composition, self.cfg.elements)])
            for i, c in enumerate(todo)
        }
        self.store.set_features(feats)

    def _training_data(self, feats: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
        e_hull = self._lab_targets(self.hull.all_e_above_hull())  # lab: fidelity-2 values win
        ids = [cid for cid, m in self.measured.items() if m.status == Status.ok and cid in feats and cid in e_hull]
        if not ids:
            return [], np.zeros((0, 0)), np.zeros(0)
        X = np.stack([feats[i] for i in ids])
        y = -np.array([e_hull[i] for i in ids])  # BoTorch maximizes; we minimize e_above_hull
        return ids, X, y

    def _select(self, r: int) -> dict[str, float]:
        from xtalforge.oracles.surrogate import fit_gp, gp_state, gp_state_from_json, predict

        cfg = self.cfg
        all_ids = [c.id for c in self.store.candidates()]
        feats = self.store.features(all_ids)
        chosen = set(self.store.selected(ORACLE))
        pool_ids, X_pool = pool_matrix([i for i in all_ids if i not in chosen and i not in self.measured], feats)
        metrics: dict[str, float] = {"pool_size": float(len(pool_ids))}
        if not pool_ids:
            self.echo("  pool is empty: every candidate is evaluated; nothing to pick this round")
            return metrics
        rng = np.random.default_rng([cfg.seed, r, 1])
        train_ids, X_train, y = self._training_data(feats)
        pending_ids = [i for i in chosen if i not in self.measured and i in feats]
        pending_ids += self._lab_pending(feats, pending_ids)  # lab: requests out at the lab are pending too
        X_pending = np.stack([feats[i] for i in pending_ids]) if pending_ids else None
        q = cfg.acquisition.batch_size
        if cfg.acquisition.kind == "random":
            picks = acquire("random", None, X_pool, X_train, q, rng)
        elif len(train_ids) < 2:
            picks = farthest_point(X_pool, q, rng, exclude=X_train if len(train_ids) else None)
        else:
            state = self.store.load_state("surrogate")
            model, fit = fit_gp(X_train, y, gp_state_from_json(state) if state else None)
            self.store.save_state("surrogate", r, gp_state(model))
            metrics.update({"surrogate_nll": fit.nll, "surrogate_n_train": fit.n_train,
                            "time_surrogate_fit_s": fit.seconds})
            picks = acquire(cfg.acquisition.kind, model, X_pool, X_train, q, rng, X_pending=X_pending)
            mean, std = predict(model, X_pool[picks.indices])
            for k, i in enumerate(picks.indices):
                self._predicted[pool_ids[i]] = (-float(mean[k]), float(std[k]))
        self.store.add_selection(r, ORACLE, [(pool_ids[i], v) for i, v in zip(picks.indices, picks.values)])
        metrics["acquisition_method_is_model"] = float(picks.method not in ("farthest_point", "random"))
        self.echo(f"  picked {len(picks.indices)} of {len(pool_ids)} by {picks.method}")
        return metrics

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
        return metrics

    def _round_metrics(self, r: int, results: list[tuple[Candidate, Measurement]]) -> dict[str, float]:
        """Hits, evaluations per oracle, novelty per generator, surrogate calibration and the
        hypervolume; names, units and meanings are in tracking.ROUND_METRICS."""
        from xtalforge.loop.metrics import e_hull_p_synth_hypervolume

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
        pairs = self._p_synth(e_hull)
        if pairs:
            out["hypervolume"] = e_hull_p_synth_hypervolume(*zip(*pairs))
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

    def _p_synth(self, e_hull: dict[str, float]) -> list[tuple[float, float]]:
        """(e_above_hull, p_synth) of evaluated candidates that carry a synthesizability score,
        in a measurement's values or the candidate's meta; empty when none does."""
        ids = [k for k in e_hull if k in self.measured]
        out = []
        for c in self.store.candidates(ids=ids):
            v = self.measured[c.id].values.get("p_synth", (c.meta or {}).get("p_synth"))
            if isinstance(v, (int, float)) and np.isfinite(v):
                out.append((e_hull[c.id], float(v)))
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

    def _synthesis_routes(self) -> dict[str, list[dict]] | None:
        """Hook for the synthesis planner: candidate id -> suggested routes (dicts such as
        precursors, temperature_C, score), best first. None: no planner ran."""
        return None

    def _final_report(self) -> None:
        self._load_predictions()
        paths = report.write_final(self, routes=self._synthesis_routes())
        report.print_final(self, paths)

    # -- lab oracle (issue #8): requests out, results in; never blocks unless configured ---
    def _lab(self):
        """The LabOracle when the config has a `lab:` section, built on first use."""
        if self.cfg.lab is None:
            return None
        if self.lab_oracle is None:
            from xtalforge.oracles.lab import LabOracle

            self.lab_oracle = LabOracle(self.cfg.lab, self.store, self.run_dir)
        return self.lab_oracle

    def _lab_collect(self) -> dict[str, float]:
        """Take in lab results that arrived since the last look: inbox files are checked here;
        the HTTP API and `xtalforge lab submit` have already committed theirs to the store."""
        lab = self._lab()
        if lab is None:
            return {}
        new = lab.collect(0.0)
        for path, out in lab.last_inbox:
            self.echo(f"  lab inbox: {path.name}: {out.summary()}")
        if new:
            self.echo(f"  lab '{lab.name}': {len(new)} new result(s), {len(lab.results)} in all")
        return {"lab_results_new": float(len(new))}

    def _lab_request(self, r: int) -> dict[str, float]:
        """Round r's lab requests: the most promising MLIP results not yet sent. Idempotent: a
        resumed round re-sends its stored picks and the store keeps one request per candidate.
        With `lab.wait`, holds the round until they are answered or lab.wait_timeout_s passes."""
        from xtalforge.oracles.lab import choose_for_lab

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
