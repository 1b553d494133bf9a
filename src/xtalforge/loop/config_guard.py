"""A resumed campaign runs the config it started with, unless a change is asked for by name.

The store keeps the config a campaign started with (`STORE_KEY`, JSON) and every change let
through on a resume (`CHANGES_KEY`, a JSON list). On resume, the edited config.yaml is compared
with it, setting by setting (dotted paths such as `mlip.fmax`):

- settings that only say how or where the campaign runs (`NEUTRAL`: workers, Ray, tracking,
  the round budget, ...) may change freely; a change is still recorded;
- the chemical system may never change: its candidates, hull and references belong to it;
- any other change alters results (fmax, the acquisition, the generators, ...), and is refused
  unless `allow` names it (or a section above it, e.g. `acquisition`), so settings never mix
  across rounds silently.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

STORE_KEY = "config"
CHANGES_KEY = "config_changes"

# How or where a campaign runs, not what it finds.
NEUTRAL: tuple[str, ...] = (
    "name", "output_dir", "rounds", "overlap", "ray", "tracking",
    "mlip.workers", "mlip.timeout_s", "mlip.device", "mlip.batched", "mlip.max_batch",
    "lab.wait", "lab.wait_timeout_s", "lab.export_dir",
)
NEVER: tuple[str, ...] = ("chemical_system",)


class KeyValueStore(Protocol):
    def get(self, key: str, default: str | None = None) -> str | None: ...
    def put(self, key: str, value: str) -> None: ...


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested mappings as {dotted path: value}; lists are leaves (compared whole),
    except a list of mappings with a `kind` or `name` (oracles, generators), keyed by it."""
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and d and all(isinstance(x, Mapping) and ("kind" in x or "name" in x) for x in d):
        keys = [str(x.get("kind", x.get("name"))) for x in d]
        if len(set(keys)) == len(keys):
            out = {}
            for key, x in zip(keys, d):
                out.update(_flat(x, f"{prefix}{key}."))
            return out
    return {prefix.rstrip("."): d}


def _aliases(path: str) -> set[str]:
    # an oracle entry `oracles.mlip.fmax` is also named as the shorthand `mlip.fmax`
    parts = path.split(".")
    out = {path}
    if parts[0] == "oracles" and len(parts) > 1:
        out.add(".".join(parts[1:]))
    return out


def _matches(path: str, names: Iterable[str]) -> bool:
    return any(a == n or a.startswith(n + ".") for a in _aliases(path) for n in names)


def config_changes(stored: Mapping[str, Any], edited: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted path: (stored value, edited value)} for every setting that differs."""
    a, b = _flat(stored), _flat(edited)
    missing = object()
    out = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            out[k] = (None if va is missing else va, None if vb is missing else vb)
    return out


def check_resume(stored: Mapping[str, Any] | None, edited: Mapping[str, Any],
                 allow: Iterable[str] = ()) -> list[str]:
    """One line per change of `edited` (the config.yaml about to run, as `model_dump(mode="json")`)
    against `stored` (the config the campaign ran so far) that is not allowed; [] to go on.
    `stored` None (a campaign from before configs were stored) allows everything."""
    if stored is None:
        return []
    allow = [a.strip() for a in allow if a.strip()]
    problems = []
    for path, (old, new) in config_changes(stored, edited).items():
        if _matches(path, NEVER):
            problems.append(f"{path} changed from {old!r} to {new!r}; a campaign keeps its chemical "
                            "system (start a new campaign instead)")
        elif not _matches(path, NEUTRAL) and not _matches(path, allow):
            problems.append(f"{path} changed from {old!r} to {new!r}, which alters results; resume "
                            f"with --allow-config-change {path} to run the rest with it, or undo the edit")
    return problems


def stored_config(store: KeyValueStore) -> dict | None:
    """The config the campaign last ran with, or None when the store has none."""
    raw = store.get(STORE_KEY)
    return None if raw is None else json.loads(raw)


def record_config(store: KeyValueStore, config: Mapping[str, Any], round: int | None = None) -> dict:
    """Store `config` as the one the campaign runs with from now on; the changes against the
    previous one (if any) are appended to CHANGES_KEY with the time and the first round they
    apply to. Returns those changes."""
    before = stored_config(store)
    changes = {} if before is None else config_changes(before, config)
    if changes:
        log = json.loads(store.get(CHANGES_KEY) or "[]")
        log.append({"at": time.time(), "from_round": round,
                    "changes": {k: [old, new] for k, (old, new) in changes.items()}})
        store.put(CHANGES_KEY, json.dumps(log, default=str))
    if before is None or changes:
        store.put(STORE_KEY, json.dumps(config, sort_keys=True, default=str))
    return changes


def guard_resume(store, config_dump: Mapping[str, Any], rounds_done: int,
                 allow: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Refuse an edited config whose changes alter results (unless `allow` names them; raises
    ConfigError, one line per change), and record what changed from which round on; returns
    the changes recorded now (setting -> (old, new))."""
    from xtalforge.config import ConfigError

    problems = check_resume(stored_config(store), config_dump, allow)
    if problems:
        raise ConfigError(problems)
    return record_config(store, config_dump, round=rounds_done)
