"""Backtesting: the whole loop on a labelled data set, to choose settings before a real campaign.

The pool generator puts every structure of a CSV into the pool, the table oracle answers from
the same CSV, and the loop runs as a campaign would: fit the surrogate, let the acquirer update
its portfolio and pick a batch (pending results count as pending points), submit, collect.
The figure of merit is Rohr et al.'s acceleration factor: how many queries random selection needs
(in expectation) to find half of the top 1 % of the table, divided by how many the loop needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xtalforge.generators.pool import PoolGenerator
from xtalforge.acquisition import Acquirer, AcquisitionError, Target, farthest_point
from xtalforge.model.surrogate import OutcomeData, Surrogate
from xtalforge.oracles.table import TableOracle
from xtalforge.types import Candidate, Status


@dataclass
class BacktestResult:
    seed: int
    queries: int  # oracle queries until half of the top set was found (budget + 1 if never)
    found: int
    top_size: int
    n_pool: int
    rounds: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def expected_random_queries(n: int, n_top: int, k: int) -> float:
    """Expected number of uniform draws without replacement from n items until k of the n_top
    marked ones are drawn: k (n + 1) / (n_top + 1)."""
    return k * (n + 1) / (n_top + 1)


def load_pool(df: pd.DataFrame) -> tuple[list[Candidate], list]:
    """Every parseable structure of the table as a candidate, first occurrence per id."""
    gen = PoolGenerator(table=df)
    cands = gen.propose(len(gen))
    seen, out = set(), []
    for c in cands:
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return out, [c.meta["row"] for c in out]


def top_set(df: pd.DataFrame, rows: Sequence, target: str, minimize: bool, fraction: float = 0.01) -> set:
    """Row labels of the best `fraction` of the rows (by `target`), at least one."""
    v = pd.to_numeric(df.loc[list(rows), target], errors="coerce")
    v = v[np.isfinite(v)]
    k = max(1, int(math.ceil(fraction * len(v))))
    order = v.sort_values(ascending=minimize)
    return set(order.index[:k])


def run_backtest(df: pd.DataFrame, cands: Sequence[Candidate], X: np.ndarray, target: str, minimize: bool,
                 seed: int = 0, q: int = 8, n_init: int = 16, budget: int = 600,
                 kinds: Sequence[str] = ("qlognei",), delay: int = 0, fraction: float = 0.01,
                 surrogate_kw: dict | None = None, acquirer_kw: dict | None = None,
                 log=None) -> BacktestResult:
    """One backtest run; X holds the features of `cands` (row i of X is cands[i])."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows = [c.meta["row"] for c in cands]
    top = top_set(df, rows, target, minimize, fraction)
    need = int(math.ceil(len(top) / 2))
    oracle = TableOracle(df, columns=[target], delay=delay)
    sur = Surrogate(seed=seed, **(surrogate_kw or {}))
    acq = Acquirer([Target(target, minimize=minimize)], kinds=list(kinds), seed=seed, **(acquirer_kw or {}))
    by_id = {c.id: i for i, c in enumerate(cands)}
    ok_feat = np.isfinite(X).all(axis=1)
    measured: dict[str, float] = {}
    failed: set[str] = set()
    submitted: set[str] = set()
    predicted: dict[str, tuple[float, float]] = {}
    hits, queries_at_half, rounds = 0, None, []
    r = 0
    while len(submitted) < budget:
        pool = [i for i, c in enumerate(cands) if c.id not in submitted and ok_feat[i]]
        if not pool:
            break
        pend = [by_id[cid] for cid in oracle.pending()]
        metrics: dict[str, float] = {"round": float(r)}
        good = [by_id[k] for k in measured]
        n_pick = min(q if measured else n_init, budget - len(submitted))
        if len(measured) < 2:
            picks = farthest_point(X[pool], n_pick, rng).indices if r == 0 else \
                rng.choice(len(pool), size=min(n_pick, len(pool)), replace=False).tolist()
        else:
            t = time.perf_counter()
            rep = sur.fit({target: OutcomeData(X[good], np.array([measured[cands[i].id] for i in good]))})[target]
            metrics.update(surrogate_nll=rep.nll, surrogate_n_train=float(rep.n_train),
                           time_surrogate_fit_s=time.perf_counter() - t)
            feats = {cands[i].id: X[i] for i in range(len(cands))}
            metrics.update(acq.update(sur, feats, {k: {target: v} for k, v in measured.items()}))
            t = time.perf_counter()
            try:
                sel = acq.select(sur, X[pool], n_pick, rng, X_pending=X[pend] if pend else None,
                                 ids=[cands[i].id for i in pool])
            except AcquisitionError as err:
                if log:
                    log(f"  round {r}: {err}")
                break
            metrics["time_acquire_s"] = time.perf_counter() - t
            picks = sel.indices
            mu, sd = sur.predict(X[[pool[i] for i in picks]], observation_noise=True)
            for k, i in enumerate(picks):
                predicted[cands[pool[i]].id] = (float(mu[k, 0]), float(sd[k, 0]))
        batch = [cands[pool[i]] for i in picks]
        oracle.submit(batch, round=r)
        submitted.update(c.id for c in batch)
        new = oracle.collect()
        if not oracle.pending() and not new and len(submitted) >= budget:
            break
        errs, z = [], []
        for m in new:
            if m.status != Status.ok:
                failed.add(m.candidate_id)
                continue
            v = m.values[target]
            measured[m.candidate_id] = v
            if m.candidate_id in predicted:
                mu_, sd_ = predicted[m.candidate_id]
                errs.append(abs(mu_ - v))
                z.append(abs(mu_ - v) / max(sd_, 1e-12))
            if cands[by_id[m.candidate_id]].meta["row"] in top:
                hits += 1
                if hits >= need and queries_at_half is None:
                    queries_at_half = len(submitted)
        if errs:
            metrics.update(surrogate_mae_last_round=float(np.mean(errs)),
                           surrogate_within_1sigma=float(np.mean(np.array(z) <= 1)),
                           surrogate_within_2sigma=float(np.mean(np.array(z) <= 2)))
        metrics.update(queries=float(len(submitted)), hits=float(hits), failed=float(len(failed)))
        rounds.append(metrics)
        if log:
            log(f"  seed {seed} round {r}: {len(submitted)} queries, {hits}/{len(top)} top found")
        r += 1
        if queries_at_half is not None:
            break
    return BacktestResult(seed=seed, queries=queries_at_half if queries_at_half is not None else budget + 1,
                          found=hits, top_size=len(top), n_pool=len(cands), rounds=rounds,
                          seconds=time.perf_counter() - t0)
