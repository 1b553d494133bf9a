"""Ray: start or join a cluster, and run generator proposals as tasks.

Without an address the campaign starts its own Ray on this machine (`address="local"`), so a
Ray head that happens to run here (another user's, another campaign's) is never joined by
accident. With an address it joins that cluster as Ray documents it:

- `HOST:PORT` (or `auto`): the head node's GCS address (`ray start --head --port PORT`); this
  process becomes a driver on the cluster;
- `ray://HOST:PORT`: through the Ray Client server on the head (port 10001 by default), from a
  machine that is not part of the cluster.

A cluster with token authentication (Ray's default for clusters started by Ray 2.5x+) is joined
with the token Ray finds the usual way: `RAY_AUTH_TOKEN`, the file `RAY_AUTH_TOKEN_PATH` names,
or `~/.ray/auth_token` (`ray get-auth-token`). A cluster that cannot be joined fails in one line
(`RayConnectError`), after a quick reachability check instead of Ray's long retries. Workers on
other nodes need the package: `ray.runtime_env` (e.g. `{pip: [xtalforge]}` or
`{working_dir: ., py_modules: [...]}`) is passed to `ray.init`.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
from urllib.parse import urlparse

import numpy as np
import ray
from pymatgen.core import Structure

from xtalforge.generators.base import Generator
from xtalforge.types import Candidate, RoundContext

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # a head that does not accept a TCP connection in this long is down


class RayConnectError(RuntimeError):
    """Ray could not be started or joined; the message is one line for the user."""


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a `HOST:PORT` or `ray://HOST:PORT` address; None for `auto`."""
    if address == "auto":
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise RayConnectError(f"ray address {address!r}: use HOST:PORT (the head's GCS port, "
                              "default 6379) or ray://HOST:PORT (Ray Client, default 10001)")
    return parsed.hostname, port


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise RayConnectError when nothing accepts a TCP connection at `address`."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as err:
        raise RayConnectError(f"cannot join the Ray cluster at {address}: nothing answers at "
                              f"{hp[0]}:{hp[1]} ({err.strerror or err}); is the head running "
                              "(`ray start --head`), and is the port open?") from None


def _use_token_if_available() -> None:
    """Turn on Ray's token authentication for this process when a token is available and the
    mode is not set: Ray does this itself for `address="auto"` only, so an explicit address to
    a cluster with tokens would otherwise fail authentication."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def start_ray(address: str | None = None, num_cpus: int | None = None,
              runtime_env: dict | None = None) -> bool:
    """Join `address` or start a local instance. Returns True when this call started Ray
    (and so should shut it down). Raises RayConnectError, one line, when it cannot."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kw: dict = dict(include_dashboard=False, ignore_reinit_error=True, logging_level=logging.WARNING,
                    log_to_driver=False, configure_logging=True)
    if runtime_env:
        kw["runtime_env"] = runtime_env
    try:
        if not address:
            # "local": a new instance even when a Ray head runs on this machine
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kw)
            _watch_local_ray()
            return True
        check_reachable(address)
        _use_token_if_available()
        if address.startswith("ray://"):
            # the Ray Client takes the runtime_env; other options belong to the cluster
            ray.init(address=address, **({"runtime_env": runtime_env} if runtime_env else {}))
        else:
            ray.init(address=address, **kw)
    except RayConnectError:
        raise
    except Exception as err:  # ConnectionError, AuthenticationError, TimeoutError, ...
        where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        hint = ""
        if "token" in reason.lower() or "auth" in reason.lower():
            hint = ("; the cluster uses token authentication: set RAY_AUTH_TOKEN (or put the token in "
                    "~/.ray/auth_token; `ray get-auth-token` on the head prints it)")
        raise RayConnectError(f"cannot {where}: {type(err).__name__}: {reason}{hint}") from None
    return True


def _watch_local_ray() -> None:
    """Ray's per-node agents outlive a driver killed with SIGKILL: a watcher stops them then."""
    from xtalforge.loop.ray_reaper import start_reaper

    try:
        start_reaper()
    except OSError as err:  # no watcher costs leftover processes after a kill -9, not the campaign
        log.warning("could not start the watcher for Ray's processes: %s", err)




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

