"""The MLIP oracle on Ray: a pool of actors, one model load each, that relax and embed.

`submit` queues candidates; `collect` returns what finished. Each idle actor takes a chunk of
the queue: one structure when relaxing one at a time, up to `max_batch` when batched (the
actor then relaxes them together, see batched.py). Failure handling, none of which can fail a
round:

- a relaxation that explodes (NaN, fused atoms, energy off the scale) comes back `failed` with
  its reason, at once: running it again would explode again;
- a relaxation past its time budget (`timeout_s` wall-clock seconds per relaxation; checked
  inside the actor between steps), or one where the model raised (it may be transient: a
  CUDA hiccup, memory), is retried once, then `failed` with the reason;
- an actor that dies, or hangs inside one model call past the budget plus a grace period, is
  killed and replaced, and its structures retried once. A replacement gets no work until its
  model has loaded, so loading never eats into a retried relaxation's budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import ray
from pymatgen.core import Structure

from xtalforge.references.hull import Hull, mp2020_entry
from xtalforge.oracles.mlip.relax import RelaxResult
from xtalforge.oracles.mlip.properties import density
from xtalforge.types import Candidate, Fidelity, Measurement, Status

log = logging.getLogger(__name__)
MAX_INIT_FAILURES = 3  # actors in a row that cannot load their model before the queue is failed


@ray.remote(num_cpus=1, max_restarts=0)
class MLIPWorker:
    """One model load per actor; one call (a structure or a batch of them) at a time."""

    def __init__(self, model: str = "chgnet", batched: bool = False, device: str = "cpu", threads: int = 1,
                 model_options: dict | None = None, max_batch: int = 16):
        from xtalforge.oracles.mlip.relax import Relaxer

        self.relaxer = Relaxer(model, batched=batched, device=device, threads=threads,
                               model_options=model_options, max_batch=max_batch)

    def ready(self) -> int:
        import os

        return os.getpid()

    pid = ready

    def relax_many(self, structures: list[Structure], fmax: float, max_steps: int, relax_cell: bool,
                   timeout_s: float | None, properties: tuple[str, ...] = ()) -> list[RelaxResult]:
        return self.relaxer.relax_many(structures, fmax, max_steps, relax_cell, timeout_s, properties)

    def embed(self, structures: list[Structure], energy: bool = False) -> np.ndarray:
        return self.relaxer.embed(structures, energy=energy)


def cluster_device(device: str = "auto") -> str:
    """'auto': CUDA when the Ray cluster has a GPU, else CPU."""
    if device != "auto":
        return device
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def cluster_cpus() -> int:
    """CPUs the Ray cluster this process is connected to offers (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def resolve_workers(workers: int | str) -> int:
    """MLIP actors to start: `workers` as given, or for "auto" one per CPU of the cluster
    (each actor reserves one CPU), so a bigger cluster gets more actors."""
    if workers == "auto":
        return cluster_cpus()
    return int(workers)


def resolve_batched(batched: bool | str, model: str, device: str) -> bool:
    """Whether to relax in batches. Only CHGNet has the batched engine. 'auto' takes it on every
    device: on CPU it measured faster than one-at-a-time FIRE (BENCHMARKS.md, mlip_relax), and
    on a GPU one call for many structures is what the device is for."""
    if model != "chgnet":
        return False
    if batched == "auto":
        return True
    return bool(batched)


@dataclass
class _Job:
    cand: Candidate
    round: int
    tries: int = 0


@dataclass
class _Chunk:
    jobs: list[_Job]
    actor: int
    started: float = field(default_factory=time.time)
    deadline: float = math.inf


class MLIPOracle:
    """Oracle role (screen) over a Ray actor pool. Measurements carry the relaxed structure and
    its energy per atom on the hull's scale (`corrected_energy_per_atom`); with a `hull`, the
    oracle also adds e_form_per_atom and e_above_hull itself (benchmarks and tests; a campaign
    passes None and updates its hull where it stores results)."""

    fidelity = int(Fidelity.mlip)
    role = "screen"

    def __init__(self, hull: Hull | None, workers: int = 2, fmax: float = 0.1, max_steps: int = 300,
                 relax_cell: bool = True, timeout_s: float = 600.0, apply_mp2020: bool = True,
                 on_result: Callable[[Measurement], None] | None = None, model: str = "chgnet",
                 model_options: dict | None = None, batched: bool | str = "auto", max_batch: int = 16,
                 device: str = "auto", properties: Sequence[str] = (), hang_grace_s: float | None = None,
                 name: str = "mlip"):
        from xtalforge.oracles.mlip.relax import is_ase_model, load_ase_calculator

        if is_ase_model(model):  # a typo should fail here, once, not in every actor
            load_ase_calculator(model, model_options)
        elif model != "chgnet":
            raise ValueError(f"unknown MLIP model {model!r}: use 'chgnet' or 'ase:package.module.Class'")
        self.name = name
        self.hull = hull
        self.n_workers = self.workers = workers
        self.fmax, self.max_steps, self.relax_cell = fmax, max_steps, relax_cell
        self.timeout_s = timeout_s
        self.hang_grace_s = hang_grace_s if hang_grace_s is not None else max(10.0, 0.25 * timeout_s)
        self.apply_mp2020 = apply_mp2020
        self.model, self.model_options = model, dict(model_options or {})
        self.device = cluster_device(device)
        self.batched = resolve_batched(batched, model, self.device)
        self.max_batch = max_batch if self.batched else 1
        self.properties = tuple(properties)
        self.actors: list = [self._new_actor() for _ in range(workers)]
        self.loading: dict[int, ray.ObjectRef] = {i: a.ready.remote() for i, a in enumerate(self.actors)}
        self.init_failures = 0
        self.busy: dict[ray.ObjectRef, _Chunk] = {}
        self.queue: deque[_Job] = deque()
        self.busy_s = 0.0

    def wait_ready(self, timeout_s: float = 600.0) -> float:
        """Block until every worker still loading its model is done (or has failed: `collect`
        deals with that); returns the seconds waited. Lets a caller tell the oracle's start-up
        apart from its own work."""
        t = time.time()
        refs = list(self.loading.values())
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return time.time() - t

    # -- pool management -------------------------------------------------------------------
    def _new_actor(self):
        gpus = ray.cluster_resources().get("GPU", 0) if self.device == "cuda" else 0
        opts = {"num_gpus": min(1.0, gpus / self.n_workers)} if gpus else {}
        return MLIPWorker.options(**opts).remote(self.model, self.batched, self.device, 1, self.model_options,
                                                 self.max_batch)

    def _check_loading(self, out: list[Measurement]) -> None:
        for i, ref in list(self.loading.items()):
            done, _ = ray.wait([ref], timeout=0)
            if not done:
                continue
            del self.loading[i]
            try:
                ray.get(ref)
                self.init_failures = 0
            except Exception as err:
                self.init_failures += 1
                reason = f"worker could not load {self.model}: {type(err).__name__}: {err}"
                log.warning(reason)
                if self.init_failures >= MAX_INIT_FAILURES:  # nothing will ever run: say why, once
                    while self.queue:
                        out.append(self._failed(self.queue.popleft(), reason, 0.0))
                self._replace(i)

    def _idle(self) -> list[int]:
        taken = {c.actor for c in self.busy.values()}
        return [i for i in range(len(self.actors)) if i not in taken and i not in self.loading]

    def idle_workers(self) -> int:
        """Workers with no relaxation to run while others still relax (nothing left queued):
        the time the loop can use for its own work without slowing the oracle."""
        return 0 if self.queue or not self.busy else len(self._idle())

    def _dispatch(self) -> None:
        idle = self._idle()
        for n, i in enumerate(idle):
            if not self.queue:
                return
            share = math.ceil(len(self.queue) / (len(idle) - n))  # spread the queue over idle actors
            k = max(1, min(self.max_batch, share))
            jobs = [self.queue.popleft() for _ in range(min(k, len(self.queue)))]
            # the budget is per relaxation; a batch of k shares one core, so it gets k budgets
            soft = self.timeout_s * len(jobs)
            chunk = _Chunk(jobs=jobs, actor=i)
            chunk.deadline = chunk.started + soft + self.hang_grace_s
            ref = self.actors[i].relax_many.remote([j.cand.structure for j in jobs], self.fmax, self.max_steps,
                                                    self.relax_cell, self.timeout_s * (len(jobs) if self.batched else 1),
                                                    self.properties)
            self.busy[ref] = chunk

    def _replace(self, i: int) -> None:
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:
            pass
        self.actors[i] = self._new_actor()
        self.loading[i] = self.actors[i].ready.remote()

    def _retry_or_fail(self, job: _Job, reason: str, cost_s: float) -> Measurement | None:
        job.tries += 1
        if job.tries <= 1:
            log.warning("retrying %s once: %s", job.cand.id, reason)
            self.queue.append(job)
            return None
        return self._failed(job, reason, cost_s)

    def _failed(self, job: _Job, reason: str, cost_s: float) -> Measurement:
        return Measurement(candidate_id=job.cand.id, oracle=self.name, fidelity=self.fidelity,
                           status=Status.failed, error=reason, round=job.round, cost_s=cost_s)

    def _finish(self, chunk: _Chunk, results: list[RelaxResult]) -> list[Measurement]:
        out = []
        for job, res in zip(chunk.jobs, results):
            if res.timed_out or res.raised:
                m = self._retry_or_fail(job, res.error, res.seconds)
            else:
                m = self._measure(job, res)
            if m is not None:
                out.append(m)
        return out

    def _give_up_on(self, chunk: _Chunk, reason: str) -> list[Measurement]:
        cost = time.time() - chunk.started
        return [m for j in chunk.jobs if (m := self._retry_or_fail(j, reason, cost)) is not None]

    # -- Oracle role -----------------------------------------------------------------------
    def submit(self, candidates: Sequence[Candidate], round: int = -1) -> None:
        for c in candidates:
            self.queue.append(_Job(cand=c, round=round if round >= 0 else c.round))
        self._dispatch()

    def pending(self) -> list[str]:
        return [j.cand.id for j in self.queue] + [j.cand.id for c in self.busy.values() for j in c.jobs]

    def collect(self, timeout_s: float = 0.0) -> list[Measurement]:
        """Results that finished within `timeout_s` seconds (0: only those already done)."""
        out: list[Measurement] = []
        deadline = time.time() + timeout_s
        while True:
            self._check_loading(out)
            self._dispatch()
            if not self.busy and not (self.queue and self.loading):
                break
            wait = max(0.0, min(deadline - time.time(), 0.5))
            refs = list(self.busy) + list(self.loading.values())
            ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
            for ref in ready:
                if ref not in self.busy:
                    continue  # an actor finished loading: picked up at the top of the loop
                chunk = self.busy.pop(ref)
                self.busy_s += time.time() - chunk.started
                try:
                    results: list[RelaxResult] = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    self._replace(chunk.actor)
                    out.extend(self._give_up_on(chunk, f"worker died: {type(err).__name__}"))
                except Exception as err:
                    out.extend(self._give_up_on(chunk, f"{type(err).__name__}: {err}"))
                else:
                    out.extend(self._finish(chunk, results))
            now = time.time()
            for ref, chunk in list(self.busy.items()):
                if now > chunk.deadline:  # stuck inside one model call: only a new actor helps
                    self.busy.pop(ref)
                    self.busy_s += now - chunk.started
                    self._replace(chunk.actor)
                    out.extend(self._give_up_on(chunk, f"timed out after {self.timeout_s:g} s (worker hung)"))
            if (out and not ready) or time.time() >= deadline:
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
        """Embeddings (N, 64) spread over the actor pool."""
        return self._embed(structures, chunk, energy=False)

    def single_point(self, structures: list[Structure], chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (N, 64) and single-point energies (N,) in eV/atom, uncorrected, of the
        unrelaxed structures, from one forward pass each on the actor pool: the campaign's cheap
        fidelity, at the price of the embedding it computes anyway."""
        out = self._embed(structures, chunk, energy=True)
        return out[:, :64], out[:, 64]

    def _embed(self, structures: list[Structure], chunk: int, energy: bool) -> np.ndarray:
        if not structures:
            return np.zeros((0, 65 if energy else 64))
        refs = []
        for k, i in enumerate(range(0, len(structures), chunk)):
            actor = self.actors[k % len(self.actors)]
            refs.append(actor.embed.remote(structures[i : i + chunk], energy))
        return np.concatenate(ray.get(refs), axis=0)

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []
        self.loading = {}

    # -- energies to measurements ----------------------------------------------------------
    def _measure(self, job: _Job, res: RelaxResult) -> Measurement:
        if not res.ok:
            return self._failed(job, f"relaxation failed: {res.error}", res.seconds)
        entry = mp2020_entry(res.structure, res.energy, entry_id=job.cand.id, apply=self.apply_mp2020)
        values = {
            "energy_per_atom": res.energy_per_atom,
            "corrected_energy_per_atom": entry.energy_per_atom,
        }
        if self.hull is not None:  # without a hull the oracle only relaxes (benchmarks, properties)
            self.hull.add(job.cand.id, entry)
            values["e_form_per_atom"] = self.hull.e_form_per_atom(entry)
            values["e_above_hull"] = self.hull.e_above_hull(entry)
        values |= {
            "max_force": res.max_force,
            "steps": float(res.steps),
            "converged": float(res.converged),
            "density": density(res.structure),  # g/cm^3
            "volume_per_atom": float(res.structure.volume / len(res.structure)),
        }
        if res.magmoms:
            values["total_magmom"] = float(np.sum(res.magmoms))
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            return self._failed(job, f"non-finite {', '.join(bad)}", res.seconds)
        # optional property oracles: one that failed is left out, never fails the relaxation
        values.update({k: float(v) for k, v in res.properties.items() if math.isfinite(v)})
        for name, why in res.property_errors.items():
            log.info("%s: %s not computed: %s", job.cand.id, name, why)
        return Measurement(candidate_id=job.cand.id, oracle=self.name, fidelity=self.fidelity,
                           values=values, status=Status.ok, relaxed=res.structure,
                           cost_s=res.seconds, round=job.round)
