"""Evolutionary search over the campaign's population, after USPEX and XtalOpt.

Parents are the campaign's best relaxed structures (ctx.history, best first by e_above_hull),
drawn in proportion to their reward. Children come from five operators: lattice strain, atom
swap (permutation of unlike atoms), coordinate mutation, element substitution within the
system (charge-compensated when needed) and cut-and-splice crossover of two parents. Small
parents are sometimes doubled first, so a mutation can break their translational symmetry.

Learning: each operator carries a Beta posterior of the reward its children earned; operator
probabilities follow the posterior means. Before the campaign has any relaxed structure, the
population is seeded with shipped prototypes decorated within the system (marked meta["seed"]).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Lattice, Species, Structure

from xtalforge.generators.base import reward_from
from xtalforge.generators.compositions import is_charge_balanced, require_compositions
from xtalforge.generators.prototypes import PrototypeError, decorate, fresh
from xtalforge.generators.substitution import partial_substitution, system_ions
from xtalforge.structure import ValidityLimits, structure_problem
from xtalforge.types import Candidate, Measurement, RoundContext

log = logging.getLogger(__name__)

OPERATORS = ("strain", "swap", "coord", "substitute", "crossover")


# -- operators: each returns a new structure or None when it does not apply ---------------
def strain(s: Structure, rng: np.random.Generator, sigma: float = 0.1) -> Structure | None:
    """Random symmetric strain (entries ~ N(0, sigma)) at constant volume."""
    eps = rng.normal(0.0, sigma, (3, 3))
    eps = (eps + eps.T) / 2
    m = s.lattice.matrix @ (np.eye(3) + eps).T
    lat = Lattice(m)
    if min(lat.angles) < 30 or max(lat.angles) > 150:  # a needle or pancake cell, not a crystal
        return None
    out = Structure(lat, s.species, s.frac_coords)
    out.scale_lattice(s.volume)
    return out


def swap(s: Structure, rng: np.random.Generator) -> Structure | None:
    """Exchange the species of 1..n/4 pairs of unlike atoms."""
    species = [str(sp) for sp in s.species]
    if len(set(species)) < 2:
        return None
    for _ in range(int(rng.integers(1, max(1, len(s) // 4) + 1))):
        i = int(rng.integers(len(s)))
        others = [j for j, sp in enumerate(species) if sp != species[i]]
        j = int(rng.choice(others))
        species[i], species[j] = species[j], species[i]
    return Structure(s.lattice, species, s.frac_coords)


def coord(s: Structure, rng: np.random.Generator, sigma: float = 0.4) -> Structure | None:
    """Displace about half the atoms by N(0, sigma) Å along each Cartesian axis."""
    move = rng.random(len(s)) < 0.5
    move[int(rng.integers(len(s)))] = True
    cart = s.cart_coords + move[:, None] * rng.normal(0.0, sigma, (len(s), 3))
    return Structure(s.lattice, s.species, cart, coords_are_cartesian=True)


def substitute(s: Structure, rng: np.random.Generator, ions: Sequence[Species]) -> Structure | None:
    """Turn some atoms of one element into another element of the system, with a compensating
    second substitution when the first changes the charge."""
    try:
        dec = decorate(s)
    except PrototypeError:
        return None
    res = partial_substitution([str(sp) for sp in dec.species], [(i,) for i in range(len(s))], ions,
                               lambda a, b: 1.0, rng)
    if res is None:
        return None
    return Structure(s.lattice, [Species.from_str(x).symbol for x in res[0]], s.frac_coords)


def crossover(a: Structure, b: Structure, rng: np.random.Generator) -> Structure | None:
    """Cut-and-splice: the slab of `a` below a random plane and the slab of `b` above it, in the
    average of the two (Niggli-reduced) cells, at the parents' mean volume per atom."""
    la, lb = a.lattice.get_niggli_reduced_lattice(), b.lattice.get_niggli_reduced_lattice()
    fa = np.mod(la.get_fractional_coords(a.cart_coords) + rng.random(3), 1.0)
    fb = np.mod(lb.get_fractional_coords(b.cart_coords) + rng.random(3), 1.0)
    axis, cut = int(rng.integers(3)), float(rng.uniform(0.25, 0.75))
    keep_a, keep_b = fa[:, axis] < cut, fb[:, axis] >= cut
    species = [a.species[i] for i in np.flatnonzero(keep_a)] + [b.species[i] for i in np.flatnonzero(keep_b)]
    if len(species) < 2:
        return None
    lat = Lattice(cut * la.matrix + (1 - cut) * lb.matrix)
    if abs(lat.volume) < 1e-6:
        return None
    child = Structure(lat, species, np.vstack([fa[keep_a], fb[keep_b]]))
    vpa = (a.volume / len(a) * keep_a.sum() + b.volume / len(b) * keep_b.sum()) / len(species)
    child.scale_lattice(vpa * len(species))
    return child


def doubled(s: Structure, rng: np.random.Generator) -> Structure:
    scale = [1, 1, 1]
    scale[int(rng.integers(3))] = 2
    return s * scale


class Evolutionary:
    name = "evolutionary"

    def __init__(self, elements: Sequence[str], max_atoms: int, population_size: int = 16,
                 seed_from_prototypes: bool = True, strain_sigma: float = 0.1, coord_sigma: float = 0.4,
                 double_probability: float = 0.3, oxidation_commonality: str | float = "medium",
                 include_elements: bool = False):
        """`coord_sigma` in Å; `strain_sigma` unitless; `double_probability`: chance a parent
        small enough is doubled along one axis before the operator acts."""
        require_compositions(tuple(elements), max_atoms, oxidation_commonality)
        self.elements = tuple(elements)
        self.max_atoms = max_atoms
        self.population_size = population_size
        self.seed_from_prototypes = seed_from_prototypes
        self._seeds: list[tuple[str | None, Structure, float, dict]] = []  # see prepare
        self.strain_sigma = strain_sigma
        self.coord_sigma = coord_sigma
        self.double_probability = double_probability
        self.commonality = oxidation_commonality
        self.include_elements = include_elements
        self.ions = system_ions(self.elements)
        # [sum of rewards, count] of each operator's children
        self.op_stats: dict[str, list[float]] = {op: [0.0, 0] for op in OPERATORS}

    # -- weights ---------------------------------------------------------------------------
    def operator_weights(self) -> dict[str, float]:
        """Posterior mean reward of each operator's children (Beta(1, 1) prior)."""
        return {op: (1.0 + s) / (2.0 + n) for op, (s, n) in self.op_stats.items()}

    def operator_probs(self) -> np.ndarray:
        w = np.array(list(self.operator_weights().values()))
        return w / w.sum()

    # -- population ------------------------------------------------------------------------
    def population(self, ctx: RoundContext) -> list[tuple[str | None, Structure, float, dict]]:
        """(candidate id, structure, fitness, meta) of the parents to draw from."""
        pop = self._relaxed_parents(ctx)
        if pop or not self.seed_from_prototypes:
            return pop
        return self._seeds or self._prototype_seeds(ctx)

    def _relaxed_parents(self, ctx: RoundContext) -> list[tuple[str | None, Structure, float, dict]]:
        pop = []
        for cand, m in ctx.history:
            if len(pop) >= self.population_size:
                break
            if m.relaxed is not None and len(m.relaxed) <= ctx.max_atoms:
                pop.append((cand.id, fresh(m.relaxed), reward_from(m), {}))
        return pop

    def prepare(self, ctx: RoundContext) -> dict[str, float]:
        """Before a round's Ray tasks copy this generator: with nothing relaxed yet, draw the
        prototype seeds here, once, instead of in every task (each paid seconds for pymatgen's
        substitution table)."""
        self._seeds = []
        if self.seed_from_prototypes and not self._relaxed_parents(ctx):
            self._seeds = self._prototype_seeds(ctx)
            return {"prototype_seeds": float(len(self._seeds))}
        return {}

    def _prototype_seeds(self, ctx: RoundContext) -> list[tuple[str | None, Structure, float, dict]]:
        from xtalforge.generators.substitution import Substitution

        # the textbook prototypes only: the known-materials library would need the campaign's
        # hidden systems, and seeds are starting points to mutate, not candidates in their own right
        seeder = Substitution(self.elements, ctx.max_atoms, prototypes=[], history_top_k=0, partial_probability=0.0,
                              oxidation_commonality=self.commonality)
        seeds = seeder.propose(self.population_size, ctx)
        return [(None, c.structure, 0.5, {"seed": c.meta["prototype"]}) for c in seeds]

    # -- proposing -------------------------------------------------------------------------
    def propose(self, n: int, ctx: RoundContext) -> list[Candidate]:
        rng = ctx.rng
        pop = self.population(ctx)
        if not pop:
            log.warning("evolutionary: no relaxed structures yet and no prototype seeds for %s; proposing nothing",
                        "-".join(ctx.elements))
            return []
        fit = np.array([f for _, _, f, _ in pop]) + 0.05  # the worst parent still breeds sometimes
        fit = fit / fit.sum()
        probs = self.operator_probs()
        limits = ValidityLimits(max_atoms=ctx.max_atoms)
        out: list[Candidate] = []
        seen: set[bytes] = set()  # exact repeats only: the canonical id also joins distinct polymorphs
        failed, last_error = 0, None
        for _ in range(10 * n):
            if len(out) >= n:
                break
            op = OPERATORS[int(rng.choice(len(OPERATORS), p=probs))]
            try:
                child, parents, doubled_, meta = self._child(op, pop, fit, rng, ctx.max_atoms)
                if not self._acceptable(child, ctx, limits):
                    continue
            except Exception as err:  # one bad parent or operator costs an attempt, not the round
                failed, last_error = failed + 1, err
                continue
            c = Candidate(structure=child, source=self.name, round=ctx.round, parents=parents,
                          meta={"operator": op, "doubled": doubled_, **meta})
            key = c.id.encode() + np.round(np.mod(child.frac_coords, 1.0), 4).tobytes()
            if key not in seen:
                seen.add(key)
                out.append(c)
        if failed:
            log.warning("evolutionary: %d attempts raised (last: %r)", failed, last_error)
        return out

    def _acceptable(self, child: Structure | None, ctx: RoundContext, limits: ValidityLimits) -> bool:
        if child is None or len(child) > ctx.max_atoms:
            return False
        if len(child.composition.elements) < 2 and not self.include_elements:
            return False
        return is_charge_balanced(child.composition, self.commonality) and not structure_problem(
            child, limits, tuple(ctx.elements))

    def _child(self, op: str, pop: list, fit: np.ndarray, rng: np.random.Generator, max_atoms: int
               ) -> tuple[Structure | None, list[str], bool, dict]:
        """Apply operator `op` to parents drawn by fitness: (child or None, parent ids, doubled, meta)."""
        pid, s, _, meta = pop[int(rng.choice(len(pop), p=fit))]
        parents = [pid] if pid else []
        doubled_ = False
        if op != "crossover" and 2 * len(s) <= max_atoms and rng.random() < self.double_probability:
            s, doubled_ = doubled(s, rng), True
        if op == "strain":
            child = strain(s, rng, self.strain_sigma)
        elif op == "swap":
            child = swap(s, rng)
        elif op == "coord":
            child = coord(s, rng, self.coord_sigma)
        elif op == "substitute":
            child = substitute(s, rng, self.ions)
        else:
            other = pop[int(rng.choice(len(pop), p=fit))]
            child = crossover(s, other[1], rng)
            if other[0] and other[0] not in parents:
                parents.append(other[0])
        return child, parents, doubled_, meta

    # -- learning --------------------------------------------------------------------------
    def update(self, results: Sequence[tuple[Candidate, Measurement]]) -> dict[str, float]:
        for cand, m in results:
            op = cand.meta.get("operator")
            if cand.source != self.name or op not in self.op_stats:
                continue
            self.op_stats[op][0] += reward_from(m)
            self.op_stats[op][1] += 1
        metrics = {f"w_{op}": w for op, w in self.operator_weights().items()}
        metrics.update({f"p_{op}": float(p) for op, p in zip(OPERATORS, self.operator_probs())})
        metrics.update({f"n_{op}": float(n) for op, (_, n) in self.op_stats.items()})
        return metrics

    def state_dict(self) -> dict:
        return {"op_stats": self.op_stats}

    def load_state_dict(self, state: dict) -> None:
        for op, (s, n) in state.get("op_stats", {}).items():
            if op in self.op_stats:
                self.op_stats[op] = [float(s), int(n)]
