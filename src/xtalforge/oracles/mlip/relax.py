"""MLIP relaxations: CHGNet (bundled weights) or any ASE calculator, and CHGNet embeddings.

The functions here run inside a Ray actor (one model load per actor); `MLIPOracle` in
`mlip_oracle.py` schedules them and turns results into Measurements. Two relaxation engines:

- one at a time: ASE FIRE + FrechetCellFilter on an ASE calculator (for CHGNet this is exactly
  what `chgnet.model.StructOptimizer` does);
- batched (CHGNet only): `batched.relax_batched`, the same FIRE + Frechet cell algorithm over
  many structures with one model call per step.

Energies are eV per cell unless named `_per_atom`; forces eV/Å; stresses eV/Å^3 (ASE sign).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure

from xtalforge.structure import min_distance

# An MLIP energy outside this window (eV/atom) means the model left its training domain.
ENERGY_WINDOW = (-15.0, 5.0)
FUSED_DISTANCE = 0.6  # Å
MAX_VOLUME_PER_ATOM = 150.0  # Å^3/atom; beyond this the cell has blown apart
MIN_VOLUME_PER_ATOM = 1.0  # Å^3/atom; below this it has collapsed


@dataclass
class RelaxResult:
    ok: bool
    error: str = ""
    structure: Structure | None = None
    energy: float = math.nan  # eV per cell, raw model energy (CHGNet: MP raw GGA/GGA+U scale)
    energy_per_atom: float = math.nan
    max_force: float = math.nan  # eV/Å, largest atomic force at the end
    steps: int = 0  # optimizer steps taken (ASE's nsteps: force calls - 1)
    converged: bool = False  # the optimizer's criterion (atoms and, with a cell filter, stress)
    magmoms: list[float] = field(default_factory=list)  # μB per site; [] if the model has none
    seconds: float = 0.0
    timed_out: bool = False  # stopped by the per-relaxation wall-clock limit
    raised: bool = False  # the model or the optimizer raised: maybe transient, worth one retry
    properties: dict[str, float] = field(default_factory=dict)  # e.g. bulk_modulus (GPa)
    property_errors: dict[str, str] = field(default_factory=dict)


def failed(error: str, seconds: float = 0.0, timed_out: bool = False, raised: bool = False) -> RelaxResult:
    return RelaxResult(ok=False, error=error, seconds=seconds, timed_out=timed_out, raised=raised)


# -- models ------------------------------------------------------------------------------------
def local_device(device: str = "auto") -> str:
    """'auto' is CUDA when torch in this process sees a GPU, else CPU (inside an MLIP actor: the
    GPU Ray gave it; the driver decides with `oracle.cluster_device`)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def limit_threads(threads: int | None) -> None:
    """Cap torch and BLAS (scipy/numpy OpenBLAS) threads in this process; None leaves them."""
    if not threads:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # stays in force: each actor is its own process


def load_chgnet(threads: int | None = 1, device: str = "cpu"):
    """Load the bundled CHGNet weights (no download). One torch thread by default: Ray runs
    one actor per core, and oversubscribed BLAS threads slow every actor down."""
    from chgnet.model import CHGNet

    limit_threads(threads)
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(verbose=False, use_device=local_device(device))
    # a random proposal with an atom beyond the 5 Å cutoff must not spam stderr every step
    model.graph_converter.set_isolated_atom_response("ignore")
    return model


def is_ase_model(spec: str) -> bool:
    return spec.startswith("ase:")


# Options that name a program to run or a callable to call: a config file must not be able to
# run a shell command through a calculator's own settings either.
_PROGRAM_OPTIONS = re.compile(r"command|profile|executable|launch|exe$|script|binary", re.IGNORECASE)


def ase_calculator_class(spec: str, options: dict | None = None) -> type:
    """The class "ase:package.module.ClassName" names, after checking that it is an ASE
    calculator (a subclass of ase's BaseCalculator), not one of ASE's file-I/O calculators (they
    run an external program), and that no option names a program (`command`, `profile`, ...).
    ValueError with the reason otherwise. Imports the module, constructs nothing. (A calculator
    that takes its program from the environment, such as Vasp's VASP_COMMAND, runs what the
    user's environment names, never what a config file names.)"""
    from ase.calculators.calculator import BaseCalculator, FileIOCalculator
    from ase.calculators.genericfileio import GenericFileIOCalculator

    if not is_ase_model(spec):
        raise ValueError(f"model {spec!r}: an ASE calculator is named 'ase:package.module.Class'")
    path = spec[4:]
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"model {spec!r}: give the full dotted path, e.g. ase:ase.calculators.emt.EMT")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model {spec!r}: cannot import {path} ({err})") from None
    if not isinstance(cls, type) or not issubclass(cls, BaseCalculator):
        raise ValueError(f"model {spec!r}: {path} is not an ASE calculator class (a subclass of "
                         "ase.calculators.calculator.Calculator)")
    if issubclass(cls, (FileIOCalculator, GenericFileIOCalculator)):
        raise ValueError(f"model {spec!r}: {path} runs an external program (an ASE FileIOCalculator); "
                         "only calculators that compute in Python are accepted")
    bad = sorted(k for k in (options or {}) if _PROGRAM_OPTIONS.search(str(k)))
    if bad:
        raise ValueError(f"model {spec!r}: option(s) {', '.join(bad)} would name a program to run; "
                         "not accepted in a campaign config")
    return cls


def load_ase_calculator(spec: str, options: dict | None = None):
    """An ASE calculator from "ase:package.module.ClassName" (e.g. "ase:ase.calculators.emt.EMT"),
    constructed with `options` as keyword arguments; only classes `ase_calculator_class` accepts."""
    return ase_calculator_class(spec, options)(**(options or {}))


# -- sanity of a result ------------------------------------------------------------------------
def energy_problem(e_per_atom: float) -> str:
    if not math.isfinite(e_per_atom):
        return "energy is NaN or infinite"
    if not ENERGY_WINDOW[0] <= e_per_atom <= ENERGY_WINDOW[1]:
        return f"energy {e_per_atom:.2f} eV/atom off the scale {ENERGY_WINDOW}"
    return ""


def explosion(structure: Structure, e_per_atom: float) -> str:
    """Why a relaxed structure cannot be trusted, or '' when it can."""
    problem = energy_problem(e_per_atom)
    if problem:
        return problem
    vpa = structure.volume / len(structure)
    if not math.isfinite(vpa) or vpa > MAX_VOLUME_PER_ATOM:
        return f"cell exploded (volume > {MAX_VOLUME_PER_ATOM:.0f} Å^3/atom)"
    if vpa < MIN_VOLUME_PER_ATOM:
        return f"cell collapsed (volume < {MIN_VOLUME_PER_ATOM:.0f} Å^3/atom)"
    d = min_distance(structure)
    if d < FUSED_DISTANCE:
        return f"atoms fused ({d:.2f} Å apart)"
    return ""


_explosion = explosion  # old private name


# -- one at a time: ASE FIRE (+ FrechetCellFilter) ---------------------------------------------
def relax_ase(calc, structure: Structure, fmax: float = 0.1, max_steps: int = 300, relax_cell: bool = True,
              timeout_s: float | None = None) -> RelaxResult:
    """Relax on any ASE calculator with FIRE, the cell through a FrechetCellFilter when
    `relax_cell`. Never raises: a failure comes back as ok=False with the reason. `timeout_s`
    stops a relaxation that runs longer (wall clock) with timed_out=True."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            atoms = AseAtomsAdaptor.get_atoms(structure.copy().remove_oxidation_states())
            atoms.calc = calc
            target = FrechetCellFilter(atoms) if relax_cell else atoms
            opt = FIRE(target, logfile=None)
            converged = False
            for converged in opt.irun(fmax=fmax, steps=max_steps):
                e_now = float(atoms.get_potential_energy()) / len(atoms)
                problem = explosion(AseAtomsAdaptor.get_structure(atoms), e_now)
                if problem:  # stop early: FIRE will not come back from NaN, fused atoms or a blown-up cell
                    return failed(problem, time.perf_counter() - t0)
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    return failed(f"timed out after {timeout_s:g} s", time.perf_counter() - t0, timed_out=True)
            e = float(atoms.get_potential_energy())
            forces = np.asarray(atoms.get_forces())
            try:
                magmoms = [float(m) for m in atoms.get_magnetic_moments()]
            except Exception:  # most classical calculators have none
                magmoms = []
            final = AseAtomsAdaptor.get_structure(atoms)
        for key in list(final.site_properties):
            final.remove_site_property(key)
        if magmoms:
            final.add_site_property("magmom", magmoms)
        return finish(final, e, forces, opt.nsteps, bool(converged), magmoms, time.perf_counter() - t0)
    except Exception as err:  # an MLIP blow-up must never take the actor down
        return failed(f"{type(err).__name__}: {err}", time.perf_counter() - t0, raised=True)


def finish(final: Structure, energy: float, forces: np.ndarray, steps: int, converged: bool,
           magmoms: list[float], seconds: float) -> RelaxResult:
    """A RelaxResult from a relaxation's last evaluation, with the explosion checks applied."""
    n = len(final)
    fmax_final = float(np.linalg.norm(forces, axis=1).max()) if forces.size else 0.0
    problem = explosion(final, energy / n)
    if not problem and not np.isfinite(forces).all():
        problem = "forces are NaN"
    return RelaxResult(ok=not problem, error=problem, structure=final, energy=energy, energy_per_atom=energy / n,
                       max_force=fmax_final, steps=int(steps), converged=converged, magmoms=list(magmoms),
                       seconds=seconds)


def chgnet_calculator(model, device: str = "cpu"):
    """CHGNet's own ASE calculator around an already loaded model (what StructOptimizer uses)."""
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNetCalculator(model=model, use_device=local_device(device), on_isolated_atoms="ignore")


def relax(model, structure: Structure, fmax: float = 0.1, max_steps: int = 300, relax_cell: bool = True,
          timeout_s: float | None = None) -> RelaxResult:
    """Relax one structure with CHGNet, FIRE and a FrechetCellFilter (StructOptimizer's algorithm)."""
    return relax_ase(chgnet_calculator(model, _model_device(model)), structure, fmax, max_steps, relax_cell, timeout_s)


def _model_device(model) -> str:
    return str(next(model.parameters()).device.type)


# -- what an actor holds -----------------------------------------------------------------------
class Relaxer:
    """One loaded model and how to relax with it: CHGNet (batched or one at a time) or an ASE
    calculator. `relax_many` never raises; `energies` feeds the property oracles."""

    def __init__(self, model: str = "chgnet", batched: bool = False, device: str = "cpu", threads: int | None = 1,
                 model_options: dict | None = None, max_batch: int = 16):
        self.spec = model
        self.device = local_device(device)
        self.batched = bool(batched) and not is_ase_model(model)
        self.max_batch = max_batch
        self.threads = threads
        self._chgnet = None
        if is_ase_model(model):
            limit_threads(threads)
            self.calc = load_ase_calculator(model, model_options)
        elif model == "chgnet":
            self._chgnet = load_chgnet(threads, self.device)
            self.calc = chgnet_calculator(self._chgnet, self.device)
        else:
            raise ValueError(f"unknown MLIP model {model!r}: use 'chgnet' or 'ase:package.module.Class'")

    @property
    def chgnet(self):
        """CHGNet for embeddings; loaded lazily when relaxations use another model."""
        if self._chgnet is None:
            self._chgnet = load_chgnet(self.threads, self.device)
        return self._chgnet

    def relax_many(self, structures: Sequence[Structure], fmax: float, max_steps: int, relax_cell: bool = True,
                   timeout_s: float | None = None, properties: Sequence[str] = ()) -> list[RelaxResult]:
        """Relax each structure; then compute `properties` (see properties.py) on the ok ones."""
        if self.batched:
            from xtalforge.oracles.mlip.batched import relax_batched

            out = relax_batched(self.chgnet, structures, fmax=fmax, max_steps=max_steps, relax_cell=relax_cell,
                                max_batch=self.max_batch, timeout_s=timeout_s)
        else:
            out = [relax_ase(self.calc, s, fmax, max_steps, relax_cell, timeout_s) for s in structures]
        if properties:
            from xtalforge.oracles.mlip.properties import compute_properties

            def energies(cells: Sequence[Structure]) -> np.ndarray:
                return self.energies(cells, relax_ions=True, fmax=min(fmax, 0.05), max_steps=min(max_steps, 100))

            for r in out:
                if r.ok:
                    t0 = time.perf_counter()
                    r.properties, r.property_errors = compute_properties(properties, r.structure, energies)
                    r.seconds += time.perf_counter() - t0
        return out

    def energies(self, structures: Sequence[Structure], relax_ions: bool = True, fmax: float = 0.05,
                 max_steps: int = 100) -> np.ndarray:
        """Energies (eV per cell) at fixed cells; ions relaxed first when `relax_ions`. NaN where
        a structure failed."""
        if not relax_ions:
            return np.array([_static_energy(self.calc, s) for s in structures])
        res = self.relax_many(structures, fmax=fmax, max_steps=max_steps, relax_cell=False)
        return np.array([r.energy if r.ok else math.nan for r in res])

    def embed(self, structures: list[Structure], energy: bool = False) -> np.ndarray:
        return embed(self.chgnet, structures, energy=energy)


def _static_energy(calc, structure: Structure) -> float:
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        atoms = AseAtomsAdaptor.get_atoms(structure.copy().remove_oxidation_states())
        atoms.calc = calc
        with contextlib.redirect_stdout(io.StringIO()):
            return float(atoms.get_potential_energy())
    except Exception:
        return math.nan


def embed(model, structures: list[Structure], batch_size: int = 16, energy: bool = False) -> np.ndarray:
    """CHGNet crystal embeddings (64 floats each) of unrelaxed structures; NaN rows where
    CHGNet cannot build a graph (e.g. isolated atoms). With `energy`, a 65th column: the
    single-point energy (eV/atom, uncorrected) of the same forward pass, so the cheap fidelity
    costs nothing beyond the embedding."""
    import torch

    width = 65 if energy else 64

    def row(p) -> np.ndarray:
        emb = np.asarray(p["crystal_fea"], dtype=float).ravel()[:64]
        return np.append(emb, float(np.asarray(p["e"]).ravel()[0])) if energy else emb

    out = np.full((len(structures), width), np.nan)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(0, len(structures), batch_size):
            chunk = structures[i : i + batch_size]
            try:
                preds = model.predict_structure(chunk, task="e", return_crystal_feas=True, batch_size=batch_size)
                if isinstance(preds, dict):
                    preds = [preds]
                for j, p in enumerate(preds):
                    out[i + j] = row(p)
            except Exception:
                for j, s in enumerate(chunk):
                    try:
                        out[i + j] = row(model.predict_structure(s, task="e", return_crystal_feas=True))
                    except Exception:
                        pass
    return out
