"""Known phases relaxed by the campaign's own MLIP, cached on disk.

The oracle-consistent hull puts candidates and known phases on one energy scale: both relaxed and
evaluated by the same model with the same settings, so the model's systematic errors (CHGNet's
Ca, Ti and O2 sit 36, 78 and 128 meV/atom above MP's elemental references) largely cancel. Each
relaxation is cached under (material id, model, settings hash), so a second campaign on the
same system pays nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from xtalforge.references.hull import mp2020_entry
from xtalforge.references.known import KnownPhase

log = logging.getLogger(__name__)

MAX_SITES = 20  # known phases relaxed into the oracle-consistent hull: MP-20's size limit
MAX_SITES_ON_HULL = 60  # the DFT hull's own vertices are relaxed up to this size: they shape the hull
MAX_E_ABOVE_HULL_DFT = 0.1  # eV/atom; phases further above the DFT hull cannot shape the MLIP hull in practice


class Relaxed(Protocol):
    """What a relax callable returns per structure (`oracles.mlip.relax.RelaxResult` fits)."""

    ok: bool
    error: str
    structure: Structure | None
    energy: float  # eV per cell, the model's raw energy


RelaxFn = Callable[[Sequence[Structure]], Sequence[Relaxed]]


@dataclass
class RelaxedKnown:
    """Known phases on the MLIP's scale: `entries` (entry_id = material id, energies eV per cell,
    MP2020-corrected only if asked), which came from the cache, and why others are missing."""

    entries: list[ComputedStructureEntry]
    relaxed_ids: list[str] = field(default_factory=list)  # relaxed by this call
    cached_ids: list[str] = field(default_factory=list)  # read from the cache
    failed: dict[str, str] = field(default_factory=dict)  # material id -> the relaxation's error
    seconds: float = 0.0


def model_key(model: str) -> str:
    """A cache name for an MLIP that changes when its weights can: 'chgnet' -> 'chgnet-0.3.0'
    (the installed chgnet version, which pins its bundled weights); other specs as given."""
    if model == "chgnet":
        from importlib.metadata import version

        return f"chgnet-{version('chgnet')}"
    return model


def relax_settings(fmax: float, max_steps: int, relax_cell: bool = True, model_options: Mapping | None = None) -> dict:
    """The relaxation settings that change a result, as the cache key wants them: fmax (eV/Å),
    max_steps, relax_cell, and an ASE calculator's options. The campaign and `xtalforge hull`
    build them the same way, so one relaxes a known phase and the other reads it."""
    out: dict[str, object] = {"fmax": float(fmax), "max_steps": int(max_steps), "relax_cell": bool(relax_cell)}
    if model_options:
        out["model_options"] = dict(model_options)
    return out


def default_cache_dir() -> Path:
    """The `known_relaxed` folder of `paths.cache_root()`, shared by every campaign of this user."""
    from xtalforge.paths import cache_root

    return cache_root() / "known_relaxed"


def settings_hash(settings: Mapping[str, object]) -> str:
    """12 hex digits of SHA-256 over the settings as sorted JSON (fmax, max_steps, ...)."""
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_folder(cache_dir: str | Path, model: str, settings: Mapping[str, object]) -> Path:
    """Where relaxations of known phases with this model and these settings are kept."""
    slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", model)
    return Path(cache_dir) / slug / settings_hash(settings)


def _structure_sha(s: Structure) -> str:
    return hashlib.sha256(json.dumps(s.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_file(folder: Path, material_id: str) -> Path:
    return folder / (re.sub(r"[^A-Za-z0-9_.+-]", "_", material_id) + ".json.gz")


def _read_cached(path: Path, start_sha: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        d = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError):
        log.warning("unreadable cache file %s: relaxing again", path)
        return None
    # the same id with another starting structure (a rebuilt snapshot, an edited user file)
    return d if d.get("start_sha") == start_sha else None


def _write_cached(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress(json.dumps(record).encode()))
    tmp.replace(path)  # two campaigns writing the same entry both leave a whole file


def relax_known(phases: Sequence[KnownPhase], relax: RelaxFn, model: str, settings: Mapping[str, object],
                cache_dir: str | Path, *, apply_mp2020: bool = False, chunk: int = 8) -> RelaxedKnown:
    """Relax the structures of `phases` with `relax`, reading and filling the cache.

    `model` should name the weights (see `model_key`); `settings` everything else that changes
    the result (fmax in eV/Å, max_steps, relax_cell, ...). Failures are cached too: a structure
    the model cannot relax is not retried by the next campaign. Phases without a structure are
    skipped. `apply_mp2020` as for the campaign's candidates (False for CHGNet). Relaxations run
    `chunk` at a time, and each chunk is cached as soon as it is done."""
    t0 = time.perf_counter()
    folder = cache_folder(cache_dir, model, settings)
    out = RelaxedKnown([])
    records: dict[str, dict] = {}
    todo: list[tuple[KnownPhase, str]] = []
    for p in phases:
        if p.structure is None:
            continue
        sha = _structure_sha(p.structure)
        rec = _read_cached(_cache_file(folder, p.material_id), sha)
        if rec is None:
            todo.append((p, sha))
        else:
            records[p.material_id] = rec
            out.cached_ids.append(p.material_id)
    for i in range(0, len(todo), chunk):
        part = todo[i:i + chunk]
        results = relax([p.structure for p, _ in part])
        for (p, sha), r in zip(part, results):
            ok = bool(r.ok) and r.structure is not None and math.isfinite(r.energy)
            rec = {"material_id": p.material_id, "model": model, "settings": dict(settings), "start_sha": sha,
                   "ok": ok, "error": "" if ok else (r.error or "no energy"), "energy": float(r.energy) if ok else None,
                   "structure": r.structure.as_dict() if ok else None}
            _write_cached(_cache_file(folder, p.material_id), rec)
            records[p.material_id] = rec
            out.relaxed_ids.append(p.material_id)
    for p in phases:
        rec = records.get(p.material_id)
        if rec is None:
            continue
        if not rec["ok"]:
            out.failed[p.material_id] = rec["error"]
            continue
        s = Structure.from_dict(rec["structure"])
        out.entries.append(mp2020_entry(s, rec["energy"], entry_id=p.material_id, apply=apply_mp2020))
    out.seconds = time.perf_counter() - t0
    return out
