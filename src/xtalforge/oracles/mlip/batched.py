"""Batched FIRE relaxation with CHGNet: many structures per model call, swapped in and out.

The optimizer is ASE's FIRE over ASE's FrechetCellFilter degrees of freedom, written out per
structure so that a batch follows, step for step, the trajectory each structure would follow
alone under `chgnet.model.StructOptimizer` (same defaults: dt 0.1, maxstep 0.2 Å, ...):

- DOF of a structure with n atoms: positions in the undeformed reference cell (n x 3), plus
  n * log(F), F the deformation gradient from the starting cell (3 x 3);
- their forces: atomic forces @ F, and the virial pulled back through the Frechet derivative
  of exp, divided by n (ASE's exp_cell_factor);
- converged when the largest row norm of those forces is below fmax.

One model call per step evaluates every structure in flight (in-flight batching, as torch-sim
does for other models): converged ones leave, queued ones enter. `ChgnetEvaluator` computes
energies, forces and stresses with one backward pass (CHGNet's own `forward` takes two, both
building a double-backward graph only training needs), and times graph conversion apart from
the model so benchmarks can say which dominates.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Lattice, Structure

from xtalforge.oracles.mlip.relax import RelaxResult, explosion, failed, finish

# ASE FIRE defaults (ase.optimize.FIRE)
DT, DT_MAX, MAX_STEP, N_MIN, F_INC, F_DEC, A_START, F_A = 0.1, 1.0, 0.2, 5, 1.1, 0.5, 0.1, 0.99


@dataclass
class Evaluation:
    """One structure's model output: energy eV per cell, forces eV/Å, stress eV/Å^3 (ASE sign,
    symmetrized as ASE does), magnetic moments μB."""

    energy: float = math.nan
    forces: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    stress: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    magmoms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    error: str = ""


@dataclass
class Timings:
    """Where the seconds of a batched relaxation went."""

    graph_s: float = 0.0  # CrystalGraphConverter: neighbor lists and line graphs, on CPU
    model_s: float = 0.0  # batched forward + one backward
    optimizer_s: float = 0.0  # FIRE, Frechet cell algebra, building Structures
    calls: int = 0  # batched model calls (= steps of the batch)
    evaluations: int = 0  # structure evaluations (sum of batch sizes)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class ChgnetEvaluator:
    """Energies, forces, stresses and magmoms of a list of structures in one CHGNet call."""

    def __init__(self, model, timings: Timings | None = None):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.timings = timings if timings is not None else Timings()

    def __call__(self, structures: Sequence[Structure]) -> list[Evaluation]:
        out = [Evaluation() for _ in structures]
        t0 = time.perf_counter()
        graphs, idx = [], []
        for i, s in enumerate(structures):
            try:
                graphs.append(self.model.graph_converter(s))
                idx.append(i)
            except Exception as err:  # e.g. a bond graph that cannot be built
                out[i].error = f"graph conversion failed: {type(err).__name__}: {err}"
        t1 = time.perf_counter()
        self.timings.graph_s += t1 - t0
        if graphs:
            for i, ev in zip(idx, self._safe_forward(graphs)):
                out[i] = ev
        self.timings.model_s += time.perf_counter() - t1
        self.timings.calls += 1
        self.timings.evaluations += len(structures)
        return out

    def _safe_forward(self, graphs: list) -> list[Evaluation]:
        """A NaN in one structure must not cost the batch: evaluate alone whatever looks wrong."""
        try:
            evs = self._forward(graphs)
        except Exception as err:
            if len(graphs) == 1:
                return [Evaluation(error=f"model failed: {type(err).__name__}: {err}")]
            evs = [Evaluation(error="retry alone") for _ in graphs]
        if len(graphs) > 1:
            for k, ev in enumerate(evs):
                if ev.error or not _finite(ev):
                    evs[k] = self._safe_forward([graphs[k]])[0]
        return evs

    def _forward(self, graphs: list) -> list[Evaluation]:
        import torch
        from chgnet.model.model import BatchedGraph

        model = self.model
        graphs = [g.to(self.device) for g in graphs]
        bg = BatchedGraph.from_graphs(graphs, bond_basis_expansion=model.bond_basis_expansion,
                                      angle_basis_expansion=model.angle_basis_expansion, compute_stress=True)
        pred = model._compute(bg, compute_magmom=True)
        n_atoms = pred["atoms_per_graph"]
        e_model = pred["e"] * n_atoms if model.is_intensive else pred["e"]  # extensive, as CHGNet differentiates
        grads = torch.autograd.grad(e_model.sum(), [*bg.atom_positions, *bg.strains])
        e_atom = pred["e"].detach() if model.is_intensive else pred["e"].detach() / n_atoms
        if model.composition_model is not None:  # the AtomRef shift is per atom and position-free
            e_atom = e_atom + model.composition_model(graphs).detach()
        k = len(graphs)
        out = []
        for i in range(k):
            n = int(n_atoms[i])
            stress = (grads[k + i] / bg.volumes[i]).detach().cpu().numpy().astype(float)
            out.append(Evaluation(
                energy=float(e_atom[i]) * n,
                forces=-grads[i].detach().cpu().numpy().astype(float),
                stress=0.5 * (stress + stress.T),
                magmoms=pred["m"][i].detach().cpu().numpy().astype(float) if "m" in pred else np.zeros(n),
            ))
        return out


def _finite(ev: Evaluation) -> bool:
    return math.isfinite(ev.energy) and bool(np.isfinite(ev.forces).all()) and bool(np.isfinite(ev.stress).all())


def _expm(a: np.ndarray) -> np.ndarray:
    from scipy.linalg import expm

    return expm(a)  # batched over the leading axis


def frechet_cell_forces(log_f: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """For each system b, the gradient of <grad_b, exp(L)> with respect to L at L = log_f[b].

    That is the adjoint Frechet derivative of exp, which equals the Frechet derivative at L^T
    in the direction grad_b: the upper-right block of exp([[L^T, G], [0, L^T]]). ASE's
    FrechetCellFilter computes the same thing with nine `expm_frechet` calls per system."""
    b = len(log_f)
    scale = np.maximum(np.abs(grad).reshape(b, -1).max(axis=1), 1e-300)[:, None, None]
    block = np.zeros((b, 6, 6))
    lt = np.transpose(log_f, (0, 2, 1))
    block[:, :3, :3] = lt
    block[:, 3:, 3:] = lt
    block[:, :3, 3:] = grad / scale  # the derivative is linear in G: keep the block well scaled
    return _expm(block)[:, :3, 3:] * scale


class _System:
    """One structure in flight: its FIRE state and its Frechet-cell coordinates."""

    def __init__(self, index: int, structure: Structure, relax_cell: bool):
        s = structure.copy().remove_oxidation_states()
        self.index = index
        self.species = [site.specie for site in s]
        self.n = len(s)
        self.relax_cell = relax_cell
        self.orig_cell = np.array(s.lattice.matrix, dtype=float)
        self.pos_ref = np.array(s.cart_coords, dtype=float)  # positions in the undeformed cell
        self.log_f = np.zeros((3, 3))
        self.deform = np.eye(3)  # F = exp(log_f)
        self.vel: np.ndarray | None = None
        self.dt, self.a, self.n_pos, self.nsteps = DT, A_START, 0, 0
        self.started = time.perf_counter()
        self.last: Evaluation | None = None

    def structure(self) -> Structure:
        cell = self.orig_cell @ self.deform.T
        return Structure(Lattice(cell), self.species, self.pos_ref @ self.deform.T, coords_are_cartesian=True)

    def dof(self) -> np.ndarray:
        if not self.relax_cell:
            return self.pos_ref
        return np.vstack([self.pos_ref, self.n * self.log_f])

    def fire_step(self, f: np.ndarray) -> None:
        """ase.optimize.FIRE.step on this system's DOF, `f` its forces (minus the gradient)."""
        if self.vel is None:
            self.vel = np.zeros_like(f)
        else:
            vf = np.vdot(f, self.vel)
            if vf > 0.0:
                self.vel = (1.0 - self.a) * self.vel + self.a * f / np.sqrt(np.vdot(f, f)) * np.sqrt(
                    np.vdot(self.vel, self.vel))
                if self.n_pos > N_MIN:
                    self.dt = min(self.dt * F_INC, DT_MAX)
                    self.a *= F_A
                self.n_pos += 1
            else:
                self.vel[:] *= 0.0
                self.a = A_START
                self.dt *= F_DEC
                self.n_pos = 0
        self.vel += self.dt * f
        dr = self.dt * self.vel
        norm = np.sqrt(np.vdot(dr, dr))
        if norm > MAX_STEP:
            dr = MAX_STEP * dr / norm
        x = self.dof() + dr
        self.pos_ref = x[: self.n].copy()
        if self.relax_cell:
            self.log_f = x[self.n :] / self.n  # F itself is set, batched, by the caller


def _dof_forces(systems: list[_System]) -> list[np.ndarray]:
    """Forces on every system's DOF from its last evaluation (FrechetCellFilter.get_forces)."""
    out: list[np.ndarray | None] = [None] * len(systems)
    cell_sys = [k for k, s in enumerate(systems) if s.relax_cell]
    for k, s in enumerate(systems):
        if not s.relax_cell:
            out[k] = s.last.forces
    if cell_sys:
        logs = np.stack([systems[k].log_f for k in cell_sys])
        grads = []
        for k in cell_sys:
            s = systems[k]
            cell = s.orig_cell @ s.deform.T
            virial = -abs(np.linalg.det(cell)) * s.last.stress
            grads.append(virial @ np.linalg.inv(s.deform.T))
        cell_f = frechet_cell_forces(logs, np.stack(grads))
        for j, k in enumerate(cell_sys):
            s = systems[k]
            out[k] = np.vstack([s.last.forces @ s.deform, cell_f[j] / s.n])
    return out  # type: ignore[return-value]


def relax_batched(model, structures: Sequence[Structure], fmax: float = 0.1, max_steps: int = 300,
                  relax_cell: bool = True, max_batch: int = 16, max_atoms: int = 4096,
                  timeout_s: float | None = None, timings: Timings | None = None) -> list[RelaxResult]:
    """Relax `structures` with CHGNet, up to `max_batch` structures (and `max_atoms` atoms) per
    model call; results in input order. Never raises: a structure whose energy turns NaN or
    off the scale, or whose atoms fuse, comes back ok=False with the reason; one running
    longer than `timeout_s` (wall clock since it entered the batch) comes back timed_out."""
    timings = timings if timings is not None else Timings()
    evaluate = ChgnetEvaluator(model, timings)
    queue = deque(range(len(structures)))
    results: list[RelaxResult | None] = [None] * len(structures)
    active: list[_System] = []
    while queue or active:
        t_opt = time.perf_counter()
        atoms_in = sum(s.n for s in active)
        while queue and len(active) < max_batch:
            n_next = len(structures[queue[0]])
            if active and atoms_in + n_next > max_atoms:
                break
            i = queue.popleft()
            try:
                active.append(_System(i, structures[i], relax_cell))
                atoms_in += n_next
            except Exception as err:
                results[i] = failed(f"{type(err).__name__}: {err}", raised=True)
        if not active:
            continue
        current = [s.structure() for s in active]
        timings.optimizer_s += time.perf_counter() - t_opt
        evs = evaluate(current)
        t_opt = time.perf_counter()
        alive: list[_System] = []
        alive_structures: list[Structure] = []
        for s, ev, st in zip(active, evs, current):
            seconds = time.perf_counter() - s.started
            problem = ev.error or explosion(st, ev.energy / s.n)
            if not problem and not _finite(ev):
                problem = "forces or stress are NaN"
            if problem:  # FIRE will not come back from here: stop spending steps on it
                results[s.index] = failed(problem, seconds, raised=bool(ev.error))
                continue
            s.last = ev
            alive.append(s)
            alive_structures.append(st)
        forces = _dof_forces(alive) if alive else []
        stepped: list[_System] = []
        for s, f, st in zip(alive, forces, alive_structures):
            seconds = time.perf_counter() - s.started
            converged = float(np.linalg.norm(f, axis=1).max()) < fmax
            if converged or s.nsteps >= max_steps:
                for key in list(st.site_properties):
                    st.remove_site_property(key)
                st.add_site_property("magmom", [float(m) for m in s.last.magmoms])
                results[s.index] = finish(st, s.last.energy, s.last.forces, s.nsteps, converged,
                                          [float(m) for m in s.last.magmoms], seconds)
            elif timeout_s is not None and seconds > timeout_s:
                results[s.index] = failed(f"timed out after {timeout_s:g} s", seconds, timed_out=True)
            else:
                s.fire_step(f)
                s.nsteps += 1
                stepped.append(s)
        moved = [s for s in stepped if s.relax_cell]
        if moved:
            deforms = _expm(np.stack([s.log_f for s in moved]))
            for s, d in zip(moved, deforms):
                s.deform = d
        active = stepped
        timings.optimizer_s += time.perf_counter() - t_opt
    return [r if r is not None else failed("not relaxed") for r in results]
