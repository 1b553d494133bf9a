"""Backtesting: the whole loop on a labelled data set, to choose settings before a real campaign.

The pool generator puts every structure of a CSV into the pool (or, for a table of features
without structures, every row), the table oracle answers from the same table, and the loop runs
as a campaign does: the first batch by farthest point, then each round fit the surrogate, let
the acquirer update its portfolio and pick a batch (pending results count as pending points),
submit, collect. The figure of merit is Rohr et al.'s acceleration factor: how many queries
random selection needs (in expectation) to find half of the top 1 % of the pool, divided by
how many the loop needed.

Held-out splits: `split_labels` halves a table by a seeded permutation, so settings can be
tuned on one half and the figure reported on the other, which the tuning never saw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xtalforge.acquisition import Acquirer, AcquisitionError, Target, farthest_point
from xtalforge.generators.pool import PoolGenerator
from xtalforge.model.surrogate import OutcomeData, Surrogate
from xtalforge.oracles.table import TableOracle
from xtalforge.types import Candidate, Status

SPLITS = ("all", "tune", "report")


@dataclass
class BacktestResult:
    seed: int
    queries: int  # oracle queries until half of the top set was found (budget + 1 if never)
    found: int
    top_size: int
    n_pool: int
    rounds: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)  # GP-Hedge's arm weights at the end


def expected_random_queries(n: int, n_top: int, k: int) -> float:
    """Expected number of uniform draws without replacement from n items until k of the n_top
    marked ones are drawn: k (n + 1) / (n_top + 1)."""
    return k * (n + 1) / (n_top + 1)


def split_labels(labels: Sequence, part: str, seed: int = 0) -> list:
    """The rows of one half of a table: a seeded permutation cut in two, 'tune' the first half
    and 'report' the second ('all' keeps every row). Same seed, same halves, in any process."""
    if part not in SPLITS:
        raise ValueError(f"split {part!r}: use one of {', '.join(SPLITS)}")
    labels = list(labels)
    if part == "all":
        return labels
    order = np.random.default_rng(seed).permutation(len(labels))
    half = len(labels) // 2
    keep = np.sort(order[:half] if part == "tune" else order[half:])
    return [labels[i] for i in keep]


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


def table_pool(df: pd.DataFrame) -> list[Candidate]:
    """Every row of a table without structures as a candidate (id `row:<label>`), for data sets
    that come as features only (CAMD's OQMD table)."""
    out = []
    for lab in df.index:
        lab = lab.item() if hasattr(lab, "item") else lab
        out.append(Candidate(structure=None, source="table", round=0, id=f"row:{lab}",  # type: ignore[arg-type]
                             meta={"row": lab}))
    return out


def top_set(df: pd.DataFrame, rows: Sequence, target: str, minimize: bool, fraction: float = 0.01) -> set:
    """Row labels of the best `fraction` of the rows (by `target`), at least one."""
    v = pd.to_numeric(df.loc[list(rows), target], errors="coerce")
    v = v[np.isfinite(v)]
    k = max(1, int(math.ceil(fraction * len(v))))
    order = v.sort_values(ascending=minimize, kind="stable")
    return set(order.index[:k])


def calibration(mu: np.ndarray, sd: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Share of errors within 1 and 2 predicted standard deviations, and the mean absolute error
    (the target's units), for predictions made before the values were seen."""
    err = np.abs(mu - y)
    z = err / np.maximum(sd, 1e-12)
    return {"within_1sigma": float(np.mean(z <= 1)), "within_2sigma": float(np.mean(z <= 2)),
            "mae": float(np.mean(err))}


def run_backtest(df: pd.DataFrame, cands: Sequence[Candidate], X: np.ndarray, target: str, minimize: bool,
                 seed: int = 0, q: int = 6, n_init: int | None = None, budget: int = 300,
                 kinds: Sequence[str] = ("qlognei",), delay: int = 0, fraction: float = 0.01,
                 surrogate_kw: dict | None = None, acquirer_kw: dict | None = None,
                 known: OutcomeData | None = None, heldout: int = 64, context: bool = False,
                 log: Callable[[str], None] | None = None) -> BacktestResult:
    """One backtest run; X holds the features of `cands` (row i of X is cands[i]).

    The defaults are a campaign's: batch q = 6, the first batch (n_init, default q) by farthest
    point, qLogNEI, the campaign's Surrogate. `known` is low-fidelity data known before the first
    round (e.g. DFT band gaps when the oracle is the experiment): it joins every fit at fidelity 1
    while the oracle's values count as fidelity 2, so the surrogate is the multi-fidelity GP.
    `context` passes the pool's features to the fit (input scaling over the pool, see
    Surrogate.fit). Each round also scores the surrogate on `heldout` random pool rows not yet measured (their
    values are read from the table, never trained on): heldout_within_1sigma / 2sigma / mae."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    check = np.random.default_rng([seed, 7])  # the held-out sample does not move the picks
    n_init = q if n_init is None else n_init
    rows = [c.meta["row"] for c in cands]
    top = top_set(df, rows, target, minimize, fraction)
    need = int(math.ceil(len(top) / 2))
    truth = pd.to_numeric(df.loc[rows, target], errors="coerce").to_numpy(dtype=float)
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
        n_pick = min(q if (measured or r > 0) else n_init, budget - len(submitted))
        if len(measured) < 2:
            seen = X[good] if good else None
            picks = farthest_point(X[pool], n_pick, rng, exclude=seen).indices
        else:
            t = time.perf_counter()
            data = OutcomeData(X[good], np.array([measured[cands[i].id] for i in good]))
            if known is not None:
                data = OutcomeData(np.concatenate([known.X, data.X]), np.concatenate([known.y, data.y]),
                                   fidelity=np.concatenate([np.ones(len(known.y), dtype=int),
                                                            np.full(len(data.y), 2)]))
            rep = sur.fit({target: data}, X_context=X[pool] if context else None)[target]
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
            for arm in acq.kinds:
                metrics[f"acq_picks_{arm}"] = float(sum(a == arm for a in sel.arms))
            mu, sd = sur.predict(X[[pool[i] for i in picks]], observation_noise=True)
            for k, i in enumerate(picks):
                predicted[cands[pool[i]].id] = (float(mu[k, 0]), float(sd[k, 0]))
            probe = [pool[i] for i in check.choice(len(pool), size=min(heldout, len(pool)), replace=False)]
            probe = [i for i in probe if np.isfinite(truth[i])]
            if probe:
                mu_h, sd_h = sur.predict(X[probe], observation_noise=True)
                cal = calibration(mu_h[:, 0], sd_h[:, 0], truth[probe])
                metrics.update({f"heldout_{k}": v for k, v in cal.items()})
        batch = [cands[pool[i]] for i in picks]
        oracle.submit(batch, round=r)
        submitted.update(c.id for c in batch)
        new = oracle.collect()
        mu_p, sd_p, y_p = [], [], []
        for m in new:
            if m.status != Status.ok:
                failed.add(m.candidate_id)
                continue
            v = m.values[target]
            measured[m.candidate_id] = v
            if m.candidate_id in predicted:
                mu_, sd_ = predicted[m.candidate_id]
                mu_p.append(mu_), sd_p.append(sd_), y_p.append(v)
            if cands[by_id[m.candidate_id]].meta["row"] in top:
                hits += 1
                if hits >= need and queries_at_half is None:
                    queries_at_half = len(submitted)
        if y_p:
            cal = calibration(np.array(mu_p), np.array(sd_p), np.array(y_p))
            metrics.update(surrogate_mae_last_round=cal["mae"], surrogate_within_1sigma=cal["within_1sigma"],
                           surrogate_within_2sigma=cal["within_2sigma"])
        metrics.update(queries=float(len(submitted)), hits=float(hits), failed=float(len(failed)))
        rounds.append(metrics)
        if log:
            log(f"  seed {seed} round {r}: {len(submitted)} queries, {hits}/{len(top)} top found")
        r += 1
        if queries_at_half is not None:
            break
        if not oracle.pending() and not new and len(submitted) >= budget:
            break
    return BacktestResult(seed=seed, queries=queries_at_half if queries_at_half is not None else budget + 1,
                          found=hits, top_size=len(top), n_pool=len(cands), rounds=rounds,
                          seconds=time.perf_counter() - t0, weights=acq.probabilities())
