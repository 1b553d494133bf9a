"""Ray: start or join a cluster, and run generator proposals as tasks."""

from __future__ import annotations

import logging
import copy
import os

import numpy as np
import ray
from pymatgen.core import Structure

from xtalforge.generators.base import Generator
from xtalforge.types import Candidate, RoundContext

log = logging.getLogger(__name__)


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join `address` or start a local instance. Returns True when this call started Ray
    (and so should shut it down)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kw = dict(include_dashboard=False, ignore_reinit_error=True, logging_level=logging.WARNING,
              log_to_driver=False, configure_logging=True)
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), **kw)
    return True


# Generation runs while the MLIP actors sit idle between relaxations, so its tasks borrow
# the cores the actors reserve instead of waiting for cores that never free up.
@ray.remote(num_cpus=0)
def _propose(gen: Generator, n: int, ctx: RoundContext) -> list[Candidate]:
    return gen.propose(n, ctx)


def propose_parallel(gen: Generator, n: int, ctx: RoundContext, chunks: int) -> list[Candidate]:
    """Split `n` proposals over `chunks` Ray tasks, each with its own random stream. One chunk
    runs here, in this process, on a copy of `gen`: the same result as one task, without the
    seconds a fresh Ray worker spends starting up."""
    chunks = max(1, min(chunks, n))
    sizes = [n // chunks + (1 if i < n % chunks else 0) for i in range(chunks)]
    seeds = ctx.rng.integers(2**31, size=chunks)
    subs = [RoundContext(round=ctx.round, elements=ctx.elements, max_atoms=ctx.max_atoms,
                         rng=np.random.default_rng(int(seed)), history=ctx.history) for seed in seeds]
    if chunks == 1:
        try:  # on a copy, as a task would get: proposing must not change the campaign's generator
            return copy.deepcopy(gen).propose(sizes[0], subs[0])
        except Exception as err:  # as a failed task: it costs its proposals, not the round
            log.warning("%s: proposing failed: %s: %s", gen.name, type(err).__name__, err)
            return []
    refs = [_propose.remote(gen, size, sub) for size, sub in zip(sizes, subs)]
    out: list[Candidate] = []
    for ref in refs:
        try:
            got = ray.get(ref)
        except Exception as err:  # one failed chunk costs its proposals, not the round
            log.warning("%s: a proposal task failed: %s", gen.name, err)
            continue
        for c in got:
            # Ray hands numpy arrays back read-only, and pymatgen caches lattice arrays that
            # it later writes into (distance_matrix); a fresh copy owns writable arrays
            c.structure = Structure.from_dict(c.structure.as_dict())
        out.extend(got)
    return out

