"""The propose and update stages: generators split the round's budget (a Thompson-sampling
bandit over their recent yield), propose on Ray, their proposals are checked for validity,
deduplicated against everything the campaign has seen, thinned where their composition is
settled (loop.compositions) and scored for synthesizability; after the oracle, generators,
bandit and composition ledger learn from the results.

Nothing here writes to the store: `generate` may run in a thread beside the oracle, and the
states `update` returns are committed by the campaign together with the round's stage mark.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import numpy as np

from xtalforge.config import CampaignConfig
from xtalforge.generators.base import Generator
from xtalforge.generators.registry import build_generator
from xtalforge.loop.compositions import STATE_KEY as LEDGER_KEY
from xtalforge.loop.compositions import CompositionLedger
from xtalforge.loop.dedup import Deduplicator
from xtalforge.loop.store import CampaignStore
from xtalforge.structure import ValidityLimits, filter_valid
from xtalforge.types import Candidate, Measurement, RoundContext, Status

Plan = tuple[dict[str, int], dict[str, float]]


def generator_options(cfg: CampaignConfig, g) -> dict:
    """A generator's options, with the systems the campaign hides (`references.exclude_chemsys`)
    passed to the one that draws prototypes from known materials: a hidden system must not
    leak into its library."""
    opts = dict(g.options)
    if g.name == "substitution" and cfg.references.exclude_chemsys:
        opts.setdefault("exclude_chemsys", list(cfg.references.exclude_chemsys))
    return opts


class Proposer:
    """The campaign's generators with their budget bandit, validity filter and deduplicator."""

    def __init__(self, cfg: CampaignConfig, store: CampaignStore, synth=None):
        self.cfg, self.store, self.synth = cfg, store, synth
        self.limits = ValidityLimits(max_atoms=cfg.max_atoms)
        self.generators: list[Generator] = [build_generator(g.name, cfg.elements, cfg.max_atoms, generator_options(cfg, g))
                                            for g in cfg.generators]
        self.dedup = Deduplicator([])
        self.ledger = CompositionLedger()
        self.ray_ready = threading.Event()  # proposals split over Ray tasks wait for it

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.generators]

    def load(self) -> None:
        """Generator states and everything already proposed, as the store has them."""
        for gen in self.generators:
            state = self.store.load_state(f"generator:{gen.name}")
            if state:
                gen.load_state_dict(state)
        self.ledger = CompositionLedger.from_state(self.store.load_state(LEDGER_KEY))
        self.forget_unstored()

    def forget_unstored(self) -> None:
        """Deduplicate against the stored candidates only (after a generation that was dropped)."""
        self.dedup = Deduplicator(self.store.candidates())

    def _bandit(self):
        from xtalforge.loop.budget import load_bandit

        return load_bandit(self.store, self.names, {g.name: g.weight for g in self.cfg.generators},
                           self.cfg.hull.stable_threshold)

    def plan(self, r: int) -> Plan:
        """Proposals per generator for round `r`, split by each generator's recent yield
        (Thompson sampling, floored shares), with the shares as metrics."""
        bandit = self._bandit()
        # its own random stream keeps the proposals' streams what they were without it
        shares = bandit.shares(np.random.default_rng([self.cfg.seed, r, 2]))
        return bandit.split(self.cfg.proposals_per_round, shares), bandit.share_metrics(shares)

    def generate(self, r: int, ctx: RoundContext, plan: Plan) -> tuple[list[Candidate], dict[str, float], list[str]]:
        """Propose, filter and deduplicate round `r`'s candidates; returns them, their metrics
        and a line per generator to show."""
        from xtalforge.loop.executor import propose_parallel

        counts, share_metrics = plan
        metrics: dict[str, float] = dict(share_metrics)
        fresh: list[Candidate] = []
        lines: list[str] = []
        # a copy: the update of the round before may land while this runs ahead of the oracle
        ledger = CompositionLedger.from_state(self.ledger.state_dict(), self.ledger.settle_after)
        thin_rng = np.random.default_rng([self.cfg.seed, r, 3])
        workers = getattr(self.cfg.screen_oracle(), "workers", 1)
        if not isinstance(workers, int):  # "auto": as many as there are cores (Ray may not be up yet)
            workers = os.cpu_count() or 2
        for gen in self.generators:
            n = counts[gen.name]
            t = time.perf_counter()
            prepare = getattr(gen, "prepare", None)
            if prepare is not None:  # driver-side work (pre-training) before Ray tasks copy it
                metrics.update({f"gen_{gen.name}_{k}": v for k, v in prepare(ctx).items()})
            chunks = min(max(2, workers), n // self.cfg.ray.proposals_per_task)
            if chunks > 1 and not self.ray_ready.wait(timeout=300):
                raise RuntimeError("Ray did not start within 300 s")
            props = propose_parallel(gen, n, ctx, chunks=chunks)
            for c in props:
                c.round = r
            valid, _why = filter_valid(props, self.limits, self.cfg.elements)
            unique = self.dedup.unique(valid)
            kept = ledger.thin(unique, thin_rng)
            fresh.extend(kept)
            metrics[f"proposals_{gen.name}"] = len(props)
            metrics[f"valid_{gen.name}"] = len(valid)
            metrics[f"unique_{gen.name}"] = len(unique)
            metrics[f"settled_dropped_{gen.name}"] = len(unique) - len(kept)
            metrics[f"time_generate_{gen.name}_s"] = time.perf_counter() - t
            lines.append(f"  {gen.name}: {len(props)} proposed, {len(valid)} valid, {len(unique)} new"
                         + (f", {len(unique) - len(kept)} of settled compositions left out" if len(kept) < len(unique) else ""))
        if self.synth is not None and fresh:
            from xtalforge.synthesis.metrics import synth_metrics

            # scored once, before they are stored: the score rides in meta into the store, the
            # acquisition's constraint and the generators' rewards
            p = np.asarray(self.synth.score(fresh), dtype=float)
            for c, v in zip(fresh, p):
                c.meta["p_synth"] = float(v)
            metrics.update(synth_metrics(p, self.cfg.synthesis.min_p_synth))
        metrics["proposals"] = sum(metrics[f"proposals_{g}"] for g in self.names)
        metrics["valid"] = sum(metrics[f"valid_{g}"] for g in self.names)
        metrics["unique"] = len(fresh)
        return fresh, metrics, lines

    def update(self, r: int, ok: Sequence[tuple[Candidate, Measurement]]) -> tuple[dict[str, float], dict[str, dict]]:
        """Generators and the bandit learn from round r's successful results (e_above_hull
        current); returns metrics and the states to commit with the round's `updated` mark."""
        from xtalforge.loop.budget import STATE_KEY

        ok = [(c, m) for c, m in ok if m.status == Status.ok]
        metrics: dict[str, float] = {}
        states: dict[str, dict] = {}
        for gen in self.generators:
            own = [(c, m) for c, m in ok if c.source == gen.name]
            for k, v in gen.update(own).items():
                metrics[f"gen_{gen.name}_{k}"] = v
            states[f"generator:{gen.name}"] = gen.state_dict()
        bandit = self._bandit()
        gen_counts = self.store.round_metrics().get(r, {})  # saved when the round was generated
        bandit.update(r, ok, {g: (int(gen_counts.get(f"proposals_{g}", 0)), int(gen_counts.get(f"unique_{g}", 0)))
                              for g in self.names})
        states[STATE_KEY] = bandit.state_dict()
        metrics.update(bandit.posterior_metrics())
        self.ledger.update(r, ok)
        states[LEDGER_KEY] = self.ledger.state_dict()
        metrics.update(self.ledger.metrics())
        return metrics, states
