"""AIRSS-style random symmetric structures with PyXtal.

Composition, formula units, space group and Wyckoff assignment are sampled; PyXtal sets the
volume from atomic radii and enforces minimum distances. The update shifts probability towards
the compositions and space groups whose structures came back low in energy: each carries
pseudo-counts `prior` (compositions) or `spacegroup_prior` (each of the 230 groups) plus the
summed reward of its results, and is drawn in proportion. The space-group prior is small so
that one good result in a group is felt (1 of ~23 pseudo-counts rather than 1 of 230).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence

import numpy as np

from xtalforge.generators.base import reward_from
from xtalforge.generators.compositions import require_compositions
from xtalforge.structure import ValidityLimits, structure_problem
from xtalforge.types import Candidate, Measurement, RoundContext

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _atomic_tolerances():
    """pyxtal's default distance table (half the summed covalent radii), built once per process;
    pyxtal only reads it."""
    from pyxtal.tolerance import Tol_matrix

    return Tol_matrix(prototype="atomic")


def _share_pyxtal_tolerances() -> None:
    """Make pyxtal stop rebuilding its 120x120 tolerance table on every Wyckoff merge.

    `pyxtal.symmetry.merge` calls `check_images(..., tol=t)` without a `Tol_matrix`, and
    `check_images` then builds one (4 ms) that it never reads when `tol` is given: 55 % of
    `from_random`'s time here. Handing it one shared table changes no result. Idempotent; the
    only process-wide change this package makes to a library."""
    import pyxtal.symmetry as sym
    from pyxtal.operations import check_images

    if getattr(sym.check_images, "shares_tolerances", False):
        return
    shared = _atomic_tolerances()

    def check_images_shared(coords, species, lattice, PBC=None, tm=None, tol=None, d_factor=1.0):
        return check_images(coords, species, lattice, PBC=PBC, tm=tm if tm is not None else shared,
                            tol=tol, d_factor=d_factor)

    check_images_shared.shares_tolerances = True
    sym.check_images = check_images_shared


@functools.lru_cache(maxsize=None)
def _group(number: int):
    """pyxtal's space group `number`, built once per process: building one reads its Wyckoff
    tables (~4 ms) and pyxtal only reads it afterwards."""
    from pyxtal.symmetry import Group

    return Group(number)


class RandomSymmetric:
    name = "random_symmetric"

    def __init__(self, elements: Sequence[str], max_atoms: int, prior: float = 1.0, volume_factor: float = 1.1,
                 include_elements: bool = False, oxidation_commonality: str | float = "medium",
                 spacegroup_prior: float = 0.1):
        comps = require_compositions(tuple(elements), max_atoms, oxidation_commonality)
        if not include_elements:
            comps = tuple(c for c in comps if len(c.elements) > 1)
        self.compositions = [c.reduced_formula for c in comps]
        self._comp = {c.reduced_formula: c for c in comps}
        self.max_atoms = max_atoms
        self.volume_factor = volume_factor
        self.prior = prior
        self.spacegroup_prior = spacegroup_prior
        # pseudo-counts of reward: sampling probability ∝ prior + accumulated reward
        self.comp_reward = {f: 0.0 for f in self.compositions}
        self.sg_reward = np.zeros(230)
        self.attempts = 0
        self.failures = 0

    # -- sampling --------------------------------------------------------------------------
    def composition_probs(self) -> np.ndarray:
        w = np.array([self.prior + self.comp_reward[f] for f in self.compositions])
        return w / w.sum()

    def spacegroup_probs(self) -> np.ndarray:
        w = self.spacegroup_prior + self.sg_reward
        return w / w.sum()

    def _one(self, rng: np.random.Generator, round: int, limits: ValidityLimits,
             elements: tuple[str, ...]) -> Candidate | None:
        from pyxtal import pyxtal

        formula = self.compositions[rng.choice(len(self.compositions), p=self.composition_probs())]
        comp = self._comp[formula]
        species = [e.symbol for e in comp.elements]
        base = [int(comp[e]) for e in comp.elements]
        zmax = max(1, self.max_atoms // int(sum(base)))
        sg_p = self.spacegroup_probs()
        for _ in range(20):
            z = int(rng.integers(1, zmax + 1))
            sg = int(rng.choice(230, p=sg_p)) + 1
            num = [b * z for b in base]
            group = _group(sg)
            # pyxtal counts atoms in the conventional cell; centred cells hold 2-4 primitive ones
            if sum(num) * 1 > self.max_atoms * group.cellsize():
                continue
            ok, _free = group.check_compatible(num)
            if not ok:
                continue
            xtal = pyxtal()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    xtal.from_random(3, group, species, num, factor=self.volume_factor,
                                     random_state=int(rng.integers(2**31)), tm=_atomic_tolerances())
            except Exception as err:  # pyxtal gives up on tight Wyckoff/distance combinations
                log.debug("pyxtal %s sg %d: %s", formula, sg, err)
                continue
            if not xtal.valid:
                continue
            s = xtal.to_pymatgen()
            try:
                s = s.get_primitive_structure()
            except Exception:
                pass
            if structure_problem(s, limits, elements):
                continue
            return Candidate(structure=s, source=self.name, round=round,
                             meta={"spacegroup": sg, "formula_units": z})
        return None

    def propose(self, n: int, ctx: RoundContext) -> list[Candidate]:
        _share_pyxtal_tolerances()
        out = []
        limits = ValidityLimits(max_atoms=min(self.max_atoms, ctx.max_atoms))
        for _ in range(n * 3):
            if len(out) >= n:
                break
            self.attempts += 1
            c = self._one(ctx.rng, ctx.round, limits, tuple(ctx.elements))
            if c is None:
                self.failures += 1
            else:
                out.append(c)
        return out

    # -- learning --------------------------------------------------------------------------
    def update(self, results: Sequence[tuple[Candidate, Measurement]]) -> dict[str, float]:
        for cand, m in results:
            if cand.source != self.name:
                continue
            r = reward_from(m)
            f = cand.structure.composition.reduced_formula
            if f in self.comp_reward:
                self.comp_reward[f] += r
            sg = cand.meta.get("spacegroup")
            if sg:
                self.sg_reward[int(sg) - 1] += r
        p = self.composition_probs()
        q = self.spacegroup_probs()
        top = int(np.argmax(p))
        metrics = {
            "n_compositions": float(len(self.compositions)),
            "top_composition_p": float(p[top]),
            "composition_entropy": float(-(p * np.log(p)).sum()),
            "spacegroup_entropy": float(-(q * np.log(q)).sum()),
            "top_spacegroup": float(np.argmax(q) + 1),
            "top_spacegroup_p": float(q.max()),
        }
        metrics.update({f"p_{f}": float(v) for f, v in zip(self.compositions, p)})
        return metrics

    def state_dict(self) -> dict:
        return {"comp_reward": self.comp_reward, "sg_reward": self.sg_reward.tolist()}

    def load_state_dict(self, state: dict) -> None:
        for f, v in state.get("comp_reward", {}).items():
            if f in self.comp_reward:
                self.comp_reward[f] = float(v)
        if "sg_reward" in state:
            self.sg_reward = np.asarray(state["sg_reward"], dtype=float)
