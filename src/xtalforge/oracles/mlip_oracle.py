"""The MLIP oracle on Ray: a pool of actors, one CHGNet each, that relax and embed.

`submit` queues candidates; `collect` returns what finished. A relaxation that explodes comes
back `failed` with its reason; an actor that dies or hangs past the timeout is replaced and its
candidate retried once, then marked failed. Nothing here can fail a round.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import ray
from pymatgen.core import Structure

from xtalforge.oracles.hull import Hull, mp2020_entry
from xtalforge.oracles.mlip import RelaxResult
from xtalforge.types import Candidate, Fidelity, Measurement, Status

log = logging.getLogger(__name__)


@ray.remote(num_cpus=1, max_restarts=0)
class MLIPWorker:
    """One model load per actor; relaxations and embeddings run one at a time."""

    def __init__(self, threads: int = 1):
        from xtalforge.oracles.mlip import load_chgnet

        self.model = load_chgnet(threads)

    def relax(self, structure: Structure, fmax: float, max_steps: int, relax_cell: bool) -> RelaxResult:
        from xtalforge.oracles.mlip import relax

        return relax(self.model, structure, fmax=fmax, max_steps=max_steps, relax_cell=relax_cell)

    def embed(self, structures: list[Structure]) -> np.ndarray:
        from xtalforge.oracles.mlip import embed

        return embed(self.model, structures)

    def pid(self) -> int:
        import os

        return os.getpid()


@dataclass
class _Job:
    cand: Candidate
    round: int
    tries: int = 0
    started: float = 0.0
    actor: int = -1


class MLIPOracle:
    """Oracle role over a Ray actor pool. Energies become e_above_hull against `hull`."""

    name = "mlip"
    fidelity = int(Fidelity.mlip)

    def __init__(self, hull: Hull, workers: int = 2, fmax: float = 0.1, max_steps: int = 300,
                 relax_cell: bool = True, timeout_s: float = 600.0, apply_mp2020: bool = True,
                 on_result: Callable[[Measurement], None] | None = None):
        self.hull = hull
        self.n_workers = workers
        self.fmax, self.max_steps, self.relax_cell = fmax, max_steps, relax_cell
        self.timeout_s = timeout_s
        self.apply_mp2020 = apply_mp2020
        self.actors: list = [MLIPWorker.remote() for _ in range(workers)]
        self.busy: dict = {}  # ObjectRef -> (_Job, actor index)
        self.queue: deque[_Job] = deque()
        self.busy_s = 0.0

    # -- pool management -------------------------------------------------------------------
    def _idle(self) -> list[int]:
        taken = {a for _, a in self.busy.values()}
        return [i for i in range(len(self.actors)) if i not in taken]

    def _dispatch(self) -> None:
        for i in self._idle():
            if not self.queue:
                return
            job = self.queue.popleft()
            job.started, job.actor = time.time(), i
            ref = self.actors[i].relax.remote(job.cand.structure, self.fmax, self.max_steps, self.relax_cell)
            self.busy[ref] = (job, i)

    def _replace(self, i: int) -> None:
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:
            pass
        self.actors[i] = MLIPWorker.remote()

    def _retry_or_fail(self, job: _Job, reason: str) -> Measurement | None:
        job.tries += 1
        if job.tries <= 1:
            log.warning("retrying %s once: %s", job.cand.id, reason)
            self.queue.append(job)
            return None
        return self._failed(job, reason)

    def _failed(self, job: _Job, reason: str) -> Measurement:
        return Measurement(candidate_id=job.cand.id, oracle=self.name, fidelity=self.fidelity,
                           status=Status.failed, error=reason, round=job.round,
                           cost_s=time.time() - job.started)

    # -- Oracle role -----------------------------------------------------------------------
    def submit(self, candidates: Sequence[Candidate], round: int = -1) -> None:
        for c in candidates:
            self.queue.append(_Job(cand=c, round=round if round >= 0 else c.round))
        self._dispatch()

    def pending(self) -> list[str]:
        return [j.cand.id for j in self.queue] + [j.cand.id for j, _ in self.busy.values()]

    def collect(self, timeout_s: float = 0.0) -> list[Measurement]:
        """Results that finished within `timeout_s` seconds (0: only those already done)."""
        out: list[Measurement] = []
        deadline = time.time() + timeout_s
        while self.busy:
            wait = max(0.0, min(deadline - time.time(), 1.0))
            ready, _ = ray.wait(list(self.busy), num_returns=1, timeout=wait)
            for ref in ready:
                job, i = self.busy.pop(ref)
                self.busy_s += time.time() - job.started
                try:
                    res: RelaxResult = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    self._replace(i)
                    m = self._retry_or_fail(job, f"worker died: {type(err).__name__}")
                except Exception as err:
                    m = self._retry_or_fail(job, f"{type(err).__name__}: {err}")
                else:
                    m = self._measure(job, res)
                if m is not None:
                    out.append(m)
            now = time.time()
            for ref, (job, i) in list(self.busy.items()):
                if now - job.started > self.timeout_s:
                    self.busy.pop(ref)
                    self.busy_s += now - job.started
                    self._replace(i)
                    m = self._retry_or_fail(job, f"timed out after {self.timeout_s:.0f} s")
                    if m is not None:
                        out.append(m)
            self._dispatch()
            if out and not ready:
                break
            if time.time() >= deadline and (timeout_s == 0 or not ready):
                break
        return out

    def drain(self, on_result: Callable[[Measurement], None], progress: Callable[[int], None] | None = None) -> None:
        """Collect until nothing is queued or running, handing each result over as it lands."""
        while self.queue or self.busy:
            for m in self.collect(timeout_s=5.0):
                on_result(m)
                if progress:
                    progress(1)

    def embed(self, structures: list[Structure], chunk: int = 32) -> np.ndarray:
        """Embeddings spread over the actor pool."""
        if not structures:
            return np.zeros((0, 64))
        refs = []
        for k, i in enumerate(range(0, len(structures), chunk)):
            actor = self.actors[k % len(self.actors)]
            refs.append(actor.embed.remote(structures[i : i + chunk]))
        return np.concatenate(ray.get(refs), axis=0)

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []

    # -- energies to measurements ----------------------------------------------------------
    def _measure(self, job: _Job, res: RelaxResult) -> Measurement:
        if not res.ok:
            return self._failed(job, f"relaxation failed: {res.error}")
        entry = mp2020_entry(res.structure, res.energy, entry_id=job.cand.id, apply=self.apply_mp2020)
        self.hull.add(job.cand.id, entry)
        e_hull = self.hull.e_above_hull(entry)
        values = {
            "energy_per_atom": res.energy_per_atom,
            "corrected_energy_per_atom": entry.energy_per_atom,
            "e_form_per_atom": self.hull.e_form_per_atom(entry),
            "e_above_hull": e_hull,
            "max_force": res.max_force,
            "steps": float(res.steps),
            "converged": float(res.converged),
            "density": float(res.structure.density),
            "volume_per_atom": float(res.structure.volume / len(res.structure)),
        }
        if res.magmoms:
            values["total_magmom"] = float(np.sum(res.magmoms))
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            return self._failed(job, f"non-finite {', '.join(bad)}")
        return Measurement(candidate_id=job.cand.id, oracle=self.name, fidelity=self.fidelity,
                           values=values, status=Status.ok, relaxed=res.structure,
                           cost_s=res.seconds, round=job.round)
