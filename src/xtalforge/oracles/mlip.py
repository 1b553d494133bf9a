"""CHGNet as an oracle: relaxation (FIRE with a cell filter) and crystal embeddings.

The functions here run inside a Ray actor (one model load per actor); `MLIPOracle` in
`mlip_oracle.py` schedules them and turns results into Measurements.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure

from xtalforge.synthesis.validity import min_distance

# An MLIP energy outside this window (eV/atom) means the model left its training domain.
ENERGY_WINDOW = (-15.0, 5.0)
FUSED_DISTANCE = 0.6  # Å


@dataclass
class RelaxResult:
    ok: bool
    error: str = ""
    structure: Structure | None = None
    energy: float = math.nan  # eV per cell, raw CHGNet (MP raw GGA/GGA+U scale)
    energy_per_atom: float = math.nan
    max_force: float = math.nan  # eV/Å
    steps: int = 0
    converged: bool = False
    magmoms: list[float] = field(default_factory=list)
    seconds: float = 0.0


def load_chgnet(threads: int | None = 1):
    """Load the bundled CHGNet weights (no download). One torch thread by default: Ray runs
    one actor per core, and oversubscribed BLAS threads slow every actor down."""
    import torch
    from chgnet.model import CHGNet

    if threads:
        torch.set_num_threads(threads)
    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.load(verbose=False)


def _explosion(structure: Structure, e_per_atom: float) -> str:
    if not math.isfinite(e_per_atom):
        return "energy is NaN or infinite"
    if not ENERGY_WINDOW[0] <= e_per_atom <= ENERGY_WINDOW[1]:
        return f"energy {e_per_atom:.2f} eV/atom off the scale {ENERGY_WINDOW}"
    d = min_distance(structure)
    if d < FUSED_DISTANCE:
        return f"atoms fused ({d:.2f} Å apart)"
    if structure.volume / len(structure) > 150:
        return "cell exploded (volume > 150 Å^3/atom)"
    return ""


def relax(model, structure: Structure, fmax: float = 0.1, max_steps: int = 300, relax_cell: bool = True) -> RelaxResult:
    """Relax with FIRE (+ FrechetCellFilter when relax_cell). Never raises: a failure comes
    back as ok=False with the reason."""
    from chgnet.model import StructOptimizer

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            opt = StructOptimizer(model=model, optimizer_class="FIRE", use_device="cpu", on_isolated_atoms="ignore")
            out = opt.relax(structure, fmax=fmax, steps=max_steps, relax_cell=relax_cell, verbose=False)
        final: Structure = out["final_structure"]
        traj = out["trajectory"]
        e = float(traj.energies[-1])
        n = len(final)
        forces = np.asarray(traj.forces[-1])
        fmax_final = float(np.linalg.norm(forces, axis=1).max()) if forces.size else 0.0
        steps = len(traj.energies)
        problem = _explosion(final, e / n)
        if not problem and not np.isfinite(forces).all():
            problem = "forces are NaN"
        mag = final.site_properties.get("magmom")
        res = RelaxResult(
            ok=not problem,
            error=problem,
            structure=final,
            energy=e,
            energy_per_atom=e / n,
            max_force=fmax_final,
            steps=steps,
            converged=fmax_final <= fmax * 1.0001,
            magmoms=[float(m) for m in mag] if mag is not None else [],
        )
    except Exception as err:  # an MLIP blow-up must never take the actor down
        res = RelaxResult(ok=False, error=f"{type(err).__name__}: {err}")
    res.seconds = time.perf_counter() - t0
    return res


def embed(model, structures: list[Structure], batch_size: int = 16) -> np.ndarray:
    """CHGNet crystal embeddings (64 floats each) of unrelaxed structures; NaN rows where
    CHGNet cannot build a graph (e.g. isolated atoms)."""
    import torch

    out = np.full((len(structures), 64), np.nan)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(0, len(structures), batch_size):
            chunk = structures[i : i + batch_size]
            try:
                preds = model.predict_structure(chunk, task="e", return_crystal_feas=True, batch_size=batch_size)
                if isinstance(preds, dict):
                    preds = [preds]
                for j, p in enumerate(preds):
                    out[i + j] = np.asarray(p["crystal_fea"], dtype=float).ravel()[:64]
            except Exception:
                for j, s in enumerate(chunk):
                    try:
                        p = model.predict_structure(s, task="e", return_crystal_feas=True)
                        out[i + j] = np.asarray(p["crystal_fea"], dtype=float).ravel()[:64]
                    except Exception:
                        pass
    return out
