"""Which candidates the oracles evaluate next: training data from every oracle, the surrogate
fit, the acquisition over the pool (pending points included), the synthesizability filter, and
the picks of confirming oracles (a lab) from what was screened.

The selector writes its picks and its models' states to the store and its pick-time
predictions to the results; it never runs an oracle.

Hyperparameters ahead of the picks. Fitting the surrogate's hyperparameters is most of a
pick's cost (1-4 s for a multi-fidelity GP over a few hundred points on 2 cores), and it is
spent while the oracle's workers sit idle. `prefit` starts it in a background thread while the
round's last relaxations finish (on every result but those); `select` then only conditions the
GP on all the data with the newest hyperparameters a background fit has finished (one
Cholesky), so the picks still see every result. A fit still running is waited for only when
there are no earlier ones; otherwise the picks use the previous ones (a round or two older)
and the running fit serves the next round.

Repeats of evaluated structures. A candidate StructureMatcher matches to the start or the
result of anything already evaluated never gets an oracle call. The pool is matched while a
worker idles (`check_pool_ahead`) and new proposals in the lookahead; the pick itself only
matches its own picks against what came in since, and picks again without the ones that match.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future

import numpy as np

from xtalforge.acquisition import (Acquirer, AcquisitionError, Constraint, Picks, Target, farthest_point,
                                   pool_matrix)
from xtalforge.acquisition.registry import get_arm
from xtalforge.config import CampaignConfig
from xtalforge.loop import single_point
from xtalforge.loop.results import CampaignResults
from xtalforge.loop.store import CampaignStore
from xtalforge.oracles.base import Oracle
from xtalforge.types import Candidate, Fidelity, Measurement, Status


def most_promising(measured: Mapping[str, Measurement], e_above_hull: Mapping[str, float],
                   exclude: set[str], n: int) -> list[tuple[str, float]]:
    """The `n` screened candidates with the lowest e_above_hull (eV/atom) not in `exclude`, as
    (id, -e_above_hull): what a confirming oracle is asked about, since the cheap oracle
    already screened them."""
    ranked = sorted((e_above_hull[cid], cid) for cid, m in measured.items()
                    if m.status == Status.ok and cid in e_above_hull and cid not in exclude)
    return [(cid, -e) for e, cid in ranked[: max(0, n)]]


class Selector:
    """Surrogate + acquisition policy of one campaign (see the module docstring)."""

    def __init__(self, cfg: CampaignConfig, store: CampaignStore, results: CampaignResults,
                 synth=None, echo: Callable[[str], None] = print):
        self.cfg, self.store, self.results, self.synth, self.echo = cfg, store, results, synth, echo
        self._prefit: Future | None = None  # hyperparameters fitting in the background
        self._prefit_state: dict | None = None  # the newest ones a background fit finished

    def _surrogate(self):
        from xtalforge.model.surrogate import Surrogate

        acfg = self.cfg.acquisition
        sur = Surrogate(max_exact=acfg.max_exact_gp, hyper_subset=acfg.hyper_subset, seed=self.cfg.seed)
        sur.load_state_dict(self.store.load_state("surrogate"))
        return sur

    def prefit(self, executor: Executor, oracles: Sequence[Oracle] = (),
               stored: Mapping[str, Candidate] | None = None) -> Future | None:
        """Start fitting the surrogate's hyperparameters on the data measured so far in
        `executor`; the first `select` after it finished uses them and skips its own
        optimization. `stored`: the candidates, read from the store when not given. None when
        the acquisition needs no model, there is too little data to fit, or the last one is
        still running."""
        kinds = list(self.cfg.acquisition.portfolio or [self.cfg.acquisition.kind])
        if not any(get_arm(k).needs_model for k in kinds) or (self._prefit is not None and not self._prefit.done()):
            return None
        stored = stored if stored is not None else {c.id: c for c in self.store.candidates()}
        data = self.training_data(self.store.features(list(stored)), oracles, stored)
        first = self.cfg.acquisition.objectives[0].name
        if first not in data or len(data[first].y) < 2:
            return None
        sur = self._surrogate()  # here: the background thread touches no store

        def fit() -> dict:
            sur.fit(data)
            return sur.state_dict()

        self._prefit = executor.submit(fit)
        return self._prefit

    def has_hyperparameters(self) -> bool:
        """Whether a background fit has finished or is running (a pick will not fit from scratch)."""
        return self._prefit is not None or self._prefit_state is not None

    def check_pool_ahead(self, r: int, stored: Mapping[str, Candidate]) -> None:
        """While a worker idles for round `r`'s last relaxations: match the pool against what
        was evaluated so far and round r's proposals against the known phases. Both matches
        are kept (`repeats_of_evaluated`, `known_match`), so the next pick and the round's
        novelty metrics only check what came in since; at 300 candidates this was most of a
        pick. `stored`: the candidates in the store."""
        chosen = set(self.store.selected(self.results.screen))
        self.results.repeats_of_evaluated([stored[i] for i in self._unpicked(stored, chosen)])
        self.results.novel([c for c in stored.values() if c.round == r])

    def _unpicked(self, ids, chosen: set[str]) -> list[str]:
        """The pool: of `ids`, those neither picked for the screening oracle (`chosen`) nor
        measured by it."""
        return [i for i in ids if i not in chosen and i not in self.results.measured]

    # -- training data ---------------------------------------------------------------------
    def training_data(self, feats: Mapping[str, np.ndarray], oracles: Sequence[Oracle] = (),
                      stored: Mapping[str, Candidate] | None = None) -> dict:
        """{quantity: OutcomeData} for every objective and constraint an oracle has measured:
        screening values at their fidelity (e_above_hull from the current hull), confirming
        oracles' values at theirs (a quantity that `trains` an objective counts as it), and,
        with `acquisition.single_point`, the single-point e_above_hull of every candidate that
        has one (`stored`: the candidates, read from the store when not given) at
        Fidelity.single_point. Where one quantity has several fidelities, the surrogate models
        them jointly."""
        from xtalforge.model.surrogate import OutcomeData

        acfg = self.cfg.acquisition
        names = list(dict.fromkeys([o.name for o in acfg.objectives] + [c.name for c in acfg.constraints]))
        e_hull = self.results.e_above_hull()
        screen = self.results.screen
        trains = {o.name: getattr(o, "trains", {}) for o in oracles}
        data = {}
        for name in names:
            rows: list[tuple[str, float, int]] = []
            for oracle, table in self.results.by_oracle.items():
                src = trains.get(oracle, {}).get(name, name)
                for cid, m in table.items():
                    if m.status != Status.ok or cid not in feats:
                        continue
                    v = e_hull.get(cid) if (oracle == screen and name == "e_above_hull") else m.values.get(src)
                    if v is not None:
                        rows.append((cid, float(v), int(m.fidelity)))
            if name == "e_above_hull" and acfg.single_point and rows:
                cands = stored if stored is not None else {c.id: c for c in self.store.candidates()}
                low = single_point.e_above_hull({i: c for i, c in cands.items() if i in feats}, self.results.hull)
                rows += [(cid, v, int(Fidelity.single_point)) for cid, v in low.items()]
            if rows:
                fid = np.array([f for _, _, f in rows])
                data[name] = OutcomeData(X=np.stack([feats[c] for c, _, _ in rows]), y=np.array([v for _, v, _ in rows]),
                                         fidelity=fid if len(set(fid.tolist())) > 1 else None,
                                         ids=[c for c, _, _ in rows])
        return data

    # -- the screening oracle's picks ------------------------------------------------------
    def select(self, r: int, oracles: Sequence[Oracle]) -> dict[str, float]:
        """Pick round r's batch for the screening oracle from the pool and store it; returns
        the round's acquisition and surrogate metrics."""
        cfg, acfg = self.cfg, self.cfg.acquisition
        screen = self.results.screen
        measured = self.results.measured
        # read once a round: the pool's structures and meta serve every step below
        stored = {c.id: c for c in self.store.candidates()}
        all_ids = list(stored)
        feats = self.store.features(all_ids)
        chosen = set(self.store.selected(screen))
        pool_ids, X_pool = pool_matrix(self._unpicked(all_ids, chosen), feats)
        metrics: dict[str, float] = {"pool_size": float(len(pool_ids))}
        # never spend an oracle call on a structure already evaluated, as start or result: the
        # repeats matched ahead (while a worker idled, in the lookahead) leave the pool here,
        # and the picks are matched before they are stored, so the pool never waits on
        # StructureMatcher for the round's last results
        repeats = self.results.repeats_of_evaluated([stored[i] for i in pool_ids], match=False)
        pool_ids, X_pool = _without(pool_ids, X_pool, repeats)
        if self.synth is not None and pool_ids:
            pool_ids, X_pool = self._synth_filter(pool_ids, X_pool, metrics, stored)
        if not pool_ids:
            self.echo("  pool is empty: every candidate is evaluated; nothing to pick this round")
            return metrics
        data = self.training_data(feats, oracles, stored)
        pending_ids = [i for i in chosen if i not in measured and i in feats]
        for o in oracles:  # out at a slower oracle: pending points too
            if o.name != screen:
                pending_ids += [i for i in o.pending() if i in feats and i not in pending_ids]
        X_pending = np.stack([feats[i] for i in pending_ids]) if pending_ids else None
        q = acfg.batch_size
        kinds = list(acfg.portfolio or [acfg.kind])
        objectives = [Target(o.name, o.minimize) for o in acfg.objectives]
        unmeasured = [t.name for t in objectives if t.name not in data]
        if unmeasured and measured:
            have = sorted({k for m in measured.values() for k in m.values} | {"e_above_hull"})
            raise AcquisitionError(f"objective(s) {', '.join(unmeasured)}: no oracle measures them "
                                   f"(measured quantities: {', '.join(have)})")
        n_primary = len(data[objectives[0].name].y) if objectives[0].name in data else 0
        model_free = not any(get_arm(k).needs_model for k in kinds)
        sur = None
        if model_free:  # no surrogate to fit, from the first round on
            def pick(rows: np.ndarray, rng: np.random.Generator) -> Picks:
                return Acquirer(objectives, kinds=kinds, seed=cfg.seed).select(None, X_pool[rows], q, rng)
        elif n_primary < 2 or unmeasured:
            X_seen = data[objectives[0].name].X if n_primary else None

            def pick(rows: np.ndarray, rng: np.random.Generator) -> Picks:
                return farthest_point(X_pool[rows], q, rng, exclude=X_seen)
        else:
            sur, acq, known = self._model(r, data, feats, pool_ids, objectives, kinds, metrics, stored)
            after_update = copy.deepcopy(acq.state_dict())

            def pick(rows: np.ndarray, rng: np.random.Generator) -> Picks:
                acq.load_state_dict(copy.deepcopy(after_update))  # a repeated pick starts where the first did
                sub = {n: v[rows] for n, v in known.items()} if known else None
                return acq.select(sur, X_pool[rows], q=q, rng=rng, X_pending=X_pending, known=sub,
                                  ids=[pool_ids[j] for j in rows])
        rows = np.arange(len(pool_ids))
        while True:
            picks = pick(rows, np.random.default_rng([cfg.seed, r, 1]))
            late = self.results.repeats_of_evaluated([stored[pool_ids[rows[i]]] for i in picks.indices])
            if not late:
                break
            repeats.update(late)
            rows = np.array([j for j in rows if pool_ids[j] not in late], dtype=int)
            if not len(rows):
                self.echo("  pool is empty: every candidate is evaluated; nothing to pick this round")
                return metrics
        if repeats:
            metrics["pool_repeats_of_evaluated"] = float(len(repeats))
        picked = [int(rows[i]) for i in picks.indices]
        if sur is not None:
            self.store.save_state("acquisition", r, acq.state_dict())
            self._record_predictions(sur, X_pool[picked], [pool_ids[j] for j in picked])
            metrics.update({f"acq_screen_{k}": v for k, v in acq.last_screen.items()})
            for arm in acq.kinds:
                metrics[f"acq_picks_{arm}"] = float(sum(a == arm for a in picks.arms))
        self.store.add_selection(r, screen, [(pool_ids[j], v) for j, v in zip(picked, picks.values)])
        metrics["acquisition_method_is_model"] = float(not model_free and picks.method != "farthest_point")
        self.echo(f"  picked {len(picked)} of {len(rows)} by {picks.method}")
        return metrics

    def _model(self, r: int, data: dict, feats: Mapping[str, np.ndarray], pool_ids: list[str],
               objectives: list[Target], kinds: list[str], metrics: dict[str, float],
               stored: Mapping[str, Candidate]) -> tuple:
        """Fit the surrogate on `data` (conditioning only, on hyperparameters fitted in the
        background, when there are any) and build the acquisition, its GP-Hedge arms rewarded
        for last round's nominees. Returns (surrogate, acquirer, per-pool-candidate values of
        constrained quantities no oracle measures, or None)."""
        cfg, acfg = self.cfg, self.cfg.acquisition
        sur = self._surrogate()
        ahead = self._background_hyperparameters()
        if ahead is not None:
            sur.load_state_dict(ahead)
        reports = sur.fit(data, optimize=ahead is None)
        self.store.save_state("surrogate", r, sur.state_dict())
        first = reports[objectives[0].name]
        metrics["surrogate_prefit"] = float(ahead is not None)
        metrics.update({"surrogate_nll": first.nll, "surrogate_n_train": float(first.n_train),
                        "time_surrogate_fit_s": float(sum(rep.seconds for rep in reports.values())),
                        "surrogate_exact": float(first.kind in ("exact", "multi_fidelity")),
                        "surrogate_multi_fidelity": float(first.kind.startswith("multi_fidelity"))})
        for name, rep in reports.items():
            metrics[f"surrogate_nll_{name}"] = rep.nll
        known = self._known_values(pool_ids, [c.name for c in acfg.constraints if c.name not in data], stored)
        # a constraint nothing has measured yet (a lab quantity, say) waits for its first value
        active = [Constraint(c.name, c.op, c.threshold) for c in acfg.constraints
                  if c.name in data or (known and c.name in known)]
        for c in acfg.constraints:
            if c.name not in data and not (known and c.name in known):
                self.echo(f"  constraint {c.name} {c.op} {c.threshold:g}: no value measured or known yet; not applied")
        acq = Acquirer(objectives, active, kinds=kinds, shortlist=acfg.shortlist, mc_samples=acfg.mc_samples,
                       ucb_beta=acfg.ucb_beta, hedge_eta=acfg.hedge_eta, seed=cfg.seed)
        acq.load_state_dict(self.store.load_state("acquisition"))
        observed: dict[str, dict[str, float]] = {}
        for name, d in data.items():
            for cid, v in zip(d.ids, d.y):
                observed.setdefault(cid, {})[name] = float(v)
        metrics.update(acq.update(sur, feats, observed))  # GP-Hedge: reward last round's arms
        return sur, acq, known

    def _record_predictions(self, sur, X_picked: np.ndarray, ids: list[str]) -> None:
        """The pick-time predictions of e_above_hull, for the calibration metrics: with the
        fitted noise, the spread a fresh measurement shows."""
        if "e_above_hull" not in sur.outcomes or not ids:
            return
        j = sur.index("e_above_hull")
        mean, std = sur.predict(X_picked, observation_noise=True)
        for k, cid in enumerate(ids):
            self.results.predicted[cid] = (float(mean[k, j]), float(std[k, j]))

    def _background_hyperparameters(self) -> dict | None:
        """The newest surrogate state a background fit finished; waits only for the first one
        (a fit from scratch here would take longer than the rest of it)."""
        fut = self._prefit
        if fut is not None and (fut.done() or self._prefit_state is None):
            self._prefit = None
            try:
                self._prefit_state = fut.result()
            except Exception as err:  # the picks fit their own instead: time, not picks, is lost
                self.echo(f"  hyperparameters fitted ahead failed ({type(err).__name__}: {err})")
        return self._prefit_state

    @staticmethod
    def _known_values(ids: list[str], names: list[str], stored: Mapping[str, Candidate]) -> dict[str, np.ndarray] | None:
        """Per-candidate values (candidate.meta) of constrained quantities no oracle measures,
        e.g. a synthesizability score; NaN where a candidate lacks one (it is then filtered)."""
        if not names:
            return None
        out = {n: np.array([float((stored[i].meta or {}).get(n, np.nan)) for i in ids]) for n in names}
        return {n: v for n, v in out.items() if np.isfinite(v).any()} or None

    def _synth_filter(self, pool_ids: list[str], X_pool: np.ndarray, metrics: dict[str, float],
                      stored: Mapping[str, Candidate]) -> tuple[list[str], np.ndarray]:
        """Keep the pool candidates whose P(synthesizable) reaches the configured minimum
        (the whole pool, with a message, when none does)."""
        from xtalforge.synthesis.metrics import feasible_mask, synth_metrics

        thr = self.cfg.synthesis.min_p_synth
        p = np.array([float((stored[i].meta or {}).get("p_synth", np.nan)) for i in pool_ids])
        missing = ~np.isfinite(p)
        if missing.any():  # candidates stored before a model was configured
            p[missing] = np.asarray(self.synth.score([stored[i] for i, m in zip(pool_ids, missing) if m]))
        metrics.update(synth_metrics(p, thr, prefix="p_synth_pool"))
        if self.cfg.synthesis.use != "constraint":
            return pool_ids, X_pool
        keep = feasible_mask(p, thr)
        if not keep.any():
            self.echo(f"  no pool candidate reaches p_synth >= {thr:g}; picking from the whole pool")
            return pool_ids, X_pool
        metrics["pool_size_synthesizable"] = float(keep.sum())
        return [i for i, k in zip(pool_ids, keep) if k], X_pool[keep]

    # -- a confirming oracle's picks -------------------------------------------------------
    def confirm_picks(self, oracle: Oracle, r: int) -> list[Candidate]:
        """Round r's candidates for a confirming oracle: its stored picks when the round already
        chose them (a resumed round re-sends the same ones), else the `per_round` most promising
        screened candidates it was never asked about, stored now."""
        picked = self.store.selected(oracle.name, round=r)
        n = int(getattr(oracle, "per_round", 0))
        if not picked and n > 0:
            asked = set(self.store.selected(oracle.name)) | set(oracle.pending()) | self.store.measured_ids(oracle.name)
            picks = most_promising(self.results.measured, self.results.e_above_hull(), asked, n)
            self.store.add_selection(r, oracle.name, picks)
            picked = [cid for cid, _ in picks]
        by_id = {c.id: c for c in self.store.candidates(ids=picked)}
        return [by_id[i] for i in picked if i in by_id]


def _without(ids: list[str], X: np.ndarray, drop: Mapping[str, str] | set[str]) -> tuple[list[str], np.ndarray]:
    """`ids` and their rows of `X` without the ids in `drop`."""
    if not drop:
        return ids, X
    keep = np.array([i not in drop for i in ids], dtype=bool)
    return [i for i, k in zip(ids, keep) if k], X[keep]
