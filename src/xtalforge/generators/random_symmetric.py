"""AIRSS-style random symmetric structures with PyXtal.

Composition, formula units, space group and Wyckoff assignment are sampled; PyXtal sets the
volume from atomic radii and enforces minimum distances. The update shifts probability towards
the compositions and space groups whose structures came back low in energy.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np

from xtalforge.generators.base import reward_from
from xtalforge.generators.compositions import require_compositions
from xtalforge.types import Candidate, Measurement, RoundContext

log = logging.getLogger(__name__)


class RandomSymmetric:
    name = "random_symmetric"

    def __init__(self, elements: Sequence[str], max_atoms: int, prior: float = 1.0, volume_factor: float = 1.1,
                 include_elements: bool = False, oxidation_commonality: str | float = "medium"):
        comps = require_compositions(tuple(elements), max_atoms, oxidation_commonality)
        if not include_elements:
            comps = tuple(c for c in comps if len(c.elements) > 1)
        self.compositions = [c.reduced_formula for c in comps]
        self._comp = {c.reduced_formula: c for c in comps}
        self.max_atoms = max_atoms
        self.volume_factor = volume_factor
        self.prior = prior
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
        w = self.prior + self.sg_reward
        return w / w.sum()

    def _one(self, rng: np.random.Generator, round: int) -> Candidate | None:
        from pyxtal import pyxtal
        from pyxtal.symmetry import Group

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
            group = Group(sg)
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
                    xtal.from_random(3, sg, species, num, factor=self.volume_factor,
                                     random_state=int(rng.integers(2**31)))
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
            if len(s) > self.max_atoms:
                continue
            return Candidate(structure=s, source=self.name, round=round,
                             meta={"spacegroup": sg, "formula_units": z})
        return None

    def propose(self, n: int, ctx: RoundContext) -> list[Candidate]:
        out = []
        for _ in range(n * 3):
            if len(out) >= n:
                break
            self.attempts += 1
            c = self._one(ctx.rng, ctx.round)
            if c is None:
                self.failures += 1
            else:
                out.append(c)
        return out

    # -- learning --------------------------------------------------------------------------
    def update(self, results: Sequence[tuple[Candidate, Measurement]]) -> dict[str, float]:
        for cand, m in results:
            r = reward_from(m)
            f = cand.structure.composition.reduced_formula
            if f in self.comp_reward:
                self.comp_reward[f] += r
            sg = cand.meta.get("spacegroup")
            if cand.source == self.name and sg:
                self.sg_reward[int(sg) - 1] += r
        p = self.composition_probs()
        top = int(np.argmax(p))
        return {
            "n_compositions": float(len(self.compositions)),
            "top_composition_p": float(p[top]),
            "composition_entropy": float(-(p * np.log(p)).sum()),
            "spacegroup_entropy": float(-(self.spacegroup_probs() * np.log(self.spacegroup_probs())).sum()),
        }

    def state_dict(self) -> dict:
        return {"comp_reward": self.comp_reward, "sg_reward": self.sg_reward.tolist()}

    def load_state_dict(self, state: dict) -> None:
        for f, v in state.get("comp_reward", {}).items():
            if f in self.comp_reward:
                self.comp_reward[f] = float(v)
        if "sg_reward" in state:
            self.sg_reward = np.asarray(state["sg_reward"], dtype=float)
