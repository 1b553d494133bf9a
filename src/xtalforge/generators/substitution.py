"""Ionic substitution on prototypes, after GNoME's symmetry-aware partial substitution (SAPS).

One proposal: pick a prototype (shipped textbook types, user CIFs, the campaign's best relaxed
structures and, by default (`prototypes: known`), the reference snapshot's structures of the
systems whose ions substitute best onto this one's), map every prototype ion onto an ion of the chemical system (weighted by the
Hautier et al. 2011 data-mined substitution probabilities, pymatgen's SubstitutionProbability),
then, often, replace only part of one species' sites (whole symmetry orbits where the cell has
several) by another ion, so one prototype yields many stoichiometries. Only charge-balanced
results are kept; the volume is rescaled to the new ions (DLS volume predictor).

Learning: every prototype and every substitution pair carries a Beta posterior of the reward
its structures earned (reward_from: 1 on the hull); sampling weights follow the posterior means.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pymatgen.core import Species, Structure

from xtalforge.generators.base import reward_from
from xtalforge.generators.compositions import is_charge_balanced, oxidation_states, require_compositions
from xtalforge.generators.prototypes import (KNOWN, Cell, Prototype, history_prototypes, known_prototypes,
                                             known_sources, load_prototypes)
from xtalforge.structure import ValidityLimits, structure_problem
from xtalforge.types import Candidate, Measurement, RoundContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeciesMap:
    """Prototype ion -> system ion for every ion of a prototype, e.g. (("Sr2+", "Ca2+"), ...)."""

    pairs: tuple[tuple[str, str], ...]
    score: float  # product of conditional substitution probabilities (unitless)

    @property
    def identity(self) -> bool:
        return all(a == b for a, b in self.pairs)


def system_ions(elements: Sequence[str]) -> list[Species]:
    """Every ion of the system in the ICSD oxidation states of its elements plus their common
    ones: the common set adds the anions of p-block metals (Sn4- in the antiperovskite Ba3SnO)
    that ICSD-derived lists leave out."""
    return [Species(e, s) for e in elements for s in oxidation_states(e)]


@functools.lru_cache(maxsize=1)
def _substitution_probability():
    """pymatgen's data-mined table, built once per process (a few seconds: 50,000 lambdas)."""
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

    return SubstitutionProbability()


UNSEEN_SELF_PROBABILITY = 0.3  # P(ion | same ion) for an ion the data-mined table lacks


class SubstitutionTable:
    """P(target ion | prototype ion), restricted to ions of the same sign; memoized.

    Pickles without pymatgen's table: unpickling that table re-runs its constructor (1.5-4 s),
    which every Ray task carrying this generator paid. The memo travels instead, and a process
    that meets a new pair builds the table once."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str], float] = {}

    def p(self, target: str, proto: str) -> float:
        key = (target, proto)
        if key not in self._memo:
            t, s = Species.from_str(target), Species.from_str(proto)
            v = 0.0
            if t.oxi_state * s.oxi_state > 0:
                try:
                    v = float(_substitution_probability().cond_prob(t, s))
                except Exception:  # an ion the data-mined table never saw
                    v = 0.0
                if v == 0.0 and t == s:
                    # the table holds no anion below -3, yet Sn4- of the antiperovskite Sr3SnO
                    # still stands for itself; as likely as a common cation's (Sr2+ 0.35, Sn4+ 0.22)
                    v = UNSEEN_SELF_PROBABILITY
            self._memo[key] = v
        return self._memo[key]


def enumerate_maps(cell: Cell, ions: Sequence[Species], table: SubstitutionTable, max_maps: int,
                   commonality: str | float) -> list[SpeciesMap]:
    """The `max_maps` most probable charge-balanced full substitutions of one prototype cell."""
    comp = cell.structure.composition
    protos = sorted(comp, key=str)
    options = []
    for s in protos:
        opts = sorted(((str(t), table.p(str(t), str(s)), t.oxi_state) for t in ions), key=lambda o: -o[1])
        options.append([o for o in opts if o[1] > 0][:8])  # the long tail never wins a draw
    maps = []
    for combo in itertools.product(*options):
        if abs(sum(comp[s] * o[2] for s, o in zip(protos, combo))) > 1e-6:
            continue
        maps.append(SpeciesMap(tuple((str(s), o[0]) for s, o in zip(protos, combo)), math.prod(o[1] for o in combo)))
    maps.sort(key=lambda m: -m.score)
    keep = []
    for m in maps:
        if len(keep) >= max_maps:
            break
        target: dict[str, float] = {}
        for a, b in m.pairs:
            el = Species.from_str(b).symbol
            target[el] = target.get(el, 0.0) + comp[Species.from_str(a)]
        if is_charge_balanced(_formula(target), commonality):
            keep.append(m)
    return keep


def _groups(species: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, sp in enumerate(species):
        out.setdefault(sp, []).append(i)
    return out


@lru_cache(maxsize=512)
def _oxi(ion: str) -> float:
    return float(Species.from_str(ion).oxi_state)


def _formula(amounts: dict[str, float]) -> str:
    from pymatgen.core import Composition

    return Composition(amounts).reduced_formula


def _beta_mean(stat: Sequence[float] | None, a: float = 1.0, b: float = 1.0) -> float:
    s, n = (stat[0], stat[1]) if stat else (0.0, 0)
    return (a + s) / (a + b + n)


def metric_key(text: str) -> str:
    """MLflow metric names allow letters, digits, '_', '-', '.', '/', ' '."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


class Substitution:
    name = "substitution"

    def __init__(self, elements: Sequence[str], max_atoms: int, prototypes: str | Sequence[str] = (KNOWN,),
                 builtin: bool = True, history_top_k: int = 8, partial_probability: float = 0.5,
                 max_maps: int = 48, temperature: float = 0.5, oxidation_commonality: str | float = "low",
                 include_elements: bool = False, exclude_chemsys: Sequence[str] = (), known_limit: int = 96,
                 known_max_e_above_hull: float = 0.025):
        """`prototypes`: extra structure files (CIF, POSCAR, pymatgen JSON), and/or "known" (the
        default; a list without it leaves it out): the
        `known_limit` reference-snapshot structures (within `known_max_e_above_hull` eV/atom of
        its DFT hull, as many elements as the system) from the systems whose elements map onto
        this system's with the highest ionic-substitution probability; `exclude_chemsys` hides
        systems from that library (a leave-system-out benchmark hides its target system).
        `temperature` flattens the substitution probabilities (score**temperature) so rare but
        allowed ions still appear; `oxidation_commonality` is SMACT's filter on the result's
        composition: "low" by default, because every proposal is already charge-balanced ion by
        ion and weighted by how often that ion substitutes, while "medium" rejects real ground
        states with rarer states (NaBiO3 and Na5BiO5 with Bi5+); `include_elements`: also propose pure elements (their
        references are on every hull)."""
        require_compositions(tuple(elements), max_atoms, oxidation_commonality)
        self.elements = tuple(elements)
        self.max_atoms = max_atoms
        self.history_top_k = history_top_k
        self.partial_probability = partial_probability
        self.max_maps = max_maps
        self.temperature = temperature
        self.commonality = oxidation_commonality
        self.include_elements = include_elements
        self.ions = system_ions(self.elements)
        self.table = SubstitutionTable()
        self._element_scores: dict[tuple[str, str], float] = {}
        files = [prototypes] if isinstance(prototypes, str) else list(prototypes)
        self.prototypes = load_prototypes([f for f in files if f != KNOWN], builtin, max_atoms)
        if KNOWN in files:
            sources = known_sources(self.elements, max_atoms, self.element_score, exclude_chemsys,
                                    known_limit, known_max_e_above_hull)
            self.prototypes += known_prototypes(sources, max_atoms)
        self._maps: dict[str, list[SpeciesMap]] = {}
        for p in self.prototypes:
            self.maps_for(p)
        usable = [p.key for p in self.prototypes if self._maps[p.key]]
        if not usable:
            log.warning("substitution: no prototype maps onto a charge-balanced compound of %s within %d atoms; "
                        "it will only substitute on the campaign's own structures", "-".join(self.elements), max_atoms)
        # [sum of rewards, count] per prototype key and per "from>to" ion pair
        self.proto_stats: dict[str, list[float]] = {}
        self.pair_stats: dict[str, list[float]] = {}

    # -- weights ---------------------------------------------------------------------------
    def element_score(self, known: str, target: str) -> float:
        """Best P(target ion | known ion) over the two elements' ions of the same sign: how
        readily `known` is replaced by `target` (1-ish for an element by itself)."""
        key = (known, target)
        if key not in self._element_scores:
            targets = [str(t) for t in self.ions if t.symbol == target]
            self._element_scores[key] = max((self.table.p(t, str(s)) for s in system_ions([known]) for t in targets),
                                            default=0.0)
        return self._element_scores[key]

    def prototype_weight(self, p: Prototype) -> float:
        return _beta_mean(self.proto_stats.get(p.key), p.prior_a, p.prior_b)

    def pair_weight(self, pair: str) -> float:
        """Multiplier on a pair's substitution probability: 1 before any result, in (0, 2)."""
        return 2.0 * _beta_mean(self.pair_stats.get(pair))

    def maps_for(self, p: Prototype) -> list[SpeciesMap]:
        if p.key not in self._maps:
            self._maps[p.key] = enumerate_maps(p.primitive, self.ions, self.table, self.max_maps, self.commonality)
        return self._maps[p.key]

    # -- proposing -------------------------------------------------------------------------
    def propose(self, n: int, ctx: RoundContext) -> list[Candidate]:
        protos = self.prototypes + history_prototypes(ctx.history, self.history_top_k, ctx.max_atoms)
        usable = [p for p in protos if self.maps_for(p)]
        if not usable:
            log.warning("substitution: no usable prototype for %s; proposing nothing", "-".join(ctx.elements))
            return []
        w = np.array([self.prototype_weight(p) for p in usable])
        limits = ValidityLimits(max_atoms=ctx.max_atoms)
        out: list[Candidate] = []
        tried: set[tuple] = set()  # decorations already built: the same one gives the same crystal
        failed, last_error = 0, None
        for _ in range(6 * n):
            if len(out) >= n:
                break
            p = usable[int(ctx.rng.choice(len(usable), p=w / w.sum()))]
            try:
                c = self._one(p, ctx, limits, tried)
            except Exception as err:  # one odd prototype costs an attempt, not the round
                failed, last_error = failed + 1, err
                continue
            if c is not None:  # `tried` already ruled out repeats of the same decoration
                out.append(c)
        if failed:
            log.warning("substitution: %d attempts raised (last: %r)", failed, last_error)
        return out

    def _one(self, p: Prototype, ctx: RoundContext, limits: ValidityLimits, tried: set[tuple]) -> Candidate | None:
        rng = ctx.rng
        maps = self.maps_for(p)
        mw = np.array([m.score**self.temperature * math.prod(self.pair_weight(f"{a}>{b}") for a, b in m.pairs)
                       for m in maps])
        m = maps[int(rng.choice(len(maps), p=mw / mw.sum()))]
        from_history = p.key.startswith("history:")
        # the campaign's own structures are already in the system: without a partial
        # substitution the identity map would only propose them again
        partial = m.identity or rng.random() < (0.8 if from_history else self.partial_probability)
        cell = p.primitive
        if partial and p.larger is not None and rng.random() < 0.5:
            cell = p.larger
        mapping = dict(m.pairs)
        species = [mapping[str(sp)] for sp in cell.structure.species]
        pairs = [f"{a}>{b}" for a, b in m.pairs if a != b]
        if partial:
            res = partial_substitution(species, cell.orbits, self.ions, self._weight, rng)
            if res is None and m.identity:
                return None
            partial = res is not None
            if res is not None:
                species, extra = res
                pairs += extra
        sig = (p.key, cell is p.primitive, tuple(species))
        if sig in tried:
            return None
        tried.add(sig)
        s = Structure(cell.structure.lattice, [Species.from_str(x).symbol for x in species], cell.structure.frac_coords)
        if len(s.composition.elements) < 2 and not self.include_elements:
            return None
        if not is_charge_balanced(s.composition, self.commonality) or len(s) > ctx.max_atoms:
            return None
        s = rescale_volume(s)
        if structure_problem(s, limits, tuple(ctx.elements)):
            return None
        parents = [p.key.split(":", 1)[1]] if from_history else []
        return Candidate(structure=s, source=self.name, round=ctx.round, parents=parents,
                         meta={"prototype": p.key, "pairs": pairs, "partial": bool(partial)})

    def _weight(self, a: str, b: str) -> float:
        """Unnormalized odds of ion `a` -> ion `b`: tempered data-mined probability times what
        this campaign learned about the pair."""
        return self.table.p(b, a) ** self.temperature * self.pair_weight(f"{a}>{b}")

    # -- learning --------------------------------------------------------------------------
    def update(self, results: Sequence[tuple[Candidate, Measurement]]) -> dict[str, float]:
        for cand, m in results:
            if cand.source != self.name:
                continue
            r = reward_from(m)
            key = cand.meta.get("prototype")
            if key:
                st = self.proto_stats.setdefault(key, [0.0, 0])
                st[0] += r
                st[1] += 1
            for pair in cand.meta.get("pairs", ()):
                st = self.pair_stats.setdefault(pair, [0.0, 0])
                st[0] += r
                st[1] += 1
        w = np.array([self.prototype_weight(p) for p in self.prototypes]) if self.prototypes else np.ones(1)
        q = w / w.sum()
        metrics = {
            "n_prototypes": float(len(self.prototypes)),
            "prototype_entropy": float(-(q * np.log(q)).sum()),
            "pairs_seen": float(len(self.pair_stats)),
            "best_pair_w": max((self.pair_weight(k) for k in self.pair_stats), default=1.0),
        }
        for p in self.prototypes:
            metrics[f"w_{metric_key(p.key.split(':', 1)[1])}"] = self.prototype_weight(p)
        return metrics

    def state_dict(self) -> dict:
        return {"proto_stats": self.proto_stats, "pair_stats": self.pair_stats}

    def load_state_dict(self, state: dict) -> None:
        self.proto_stats = {k: [float(v[0]), int(v[1])] for k, v in state.get("proto_stats", {}).items()}
        self.pair_stats = {k: [float(v[0]), int(v[1])] for k, v in state.get("pair_stats", {}).items()}


WeightFn = Callable[[str, str], float]  # (from ion, to ion) -> unnormalized odds


def partial_substitution(species: list[str], orbits: Sequence[Sequence[int]], ions: Sequence[Species],
                         weight: WeightFn, rng: np.random.Generator) -> tuple[list[str], list[str]] | None:
    """Replace some sites of one ion (whole orbits when it spans several) by an ion of another
    element; when that changes the charge, compensate by replacing sites of a second ion
    (co-substitution). Returns the new ion per site and the "from>to" pairs used, or None."""
    groups = _groups(species)
    multi = sorted(g for g, ix in groups.items() if len(ix) >= 2)
    if not multi:
        return None
    g = multi[int(rng.integers(len(multi)))]
    orbs = [list(o) for o in orbits if species[o[0]] == g]
    if len(orbs) >= 2:
        k = int(rng.integers(1, len(orbs)))
        sites = [i for j in rng.choice(len(orbs), size=k, replace=False) for i in orbs[int(j)]]
    else:
        ix = groups[g]
        sites = [int(i) for i in rng.choice(ix, size=int(rng.integers(1, len(ix))), replace=False)]
    el = Species.from_str(g).symbol
    opts = [str(t) for t in ions if t.symbol != el]
    t = _draw(opts, [weight(g, o) for o in opts], rng)
    if t is None:
        return None
    new = list(species)
    for i in sites:
        new[i] = t
    pairs = [f"{g}>{t}"]
    dq = len(sites) * (_oxi(t) - _oxi(g))
    if abs(dq) > 1e-6:
        comp = _compensate(new, dq, set(sites), ions, weight, rng)
        if comp is None:
            return None
        new, pair = comp
        pairs.append(pair)
    return new, pairs


def _compensate(species: list[str], dq: float, frozen: set[int], ions: Sequence[Species], weight: WeightFn,
                rng: np.random.Generator) -> tuple[list[str], str] | None:
    """Replace m sites of some ion h by ion u with m * (q_u - q_h) = -dq, if any such exists."""
    groups = {h: [i for i in ix if i not in frozen] for h, ix in _groups(species).items()}
    opts, w = [], []
    for h, ix in groups.items():
        for u in map(str, ions):
            delta = _oxi(u) - _oxi(h)
            if not ix or Species.from_str(u).symbol == Species.from_str(h).symbol or abs(delta) < 1e-6:
                continue
            m = -dq / delta
            if abs(m - round(m)) < 1e-6 and 1 <= round(m) <= len(ix):
                opts.append((h, u, int(round(m))))
                w.append(weight(h, u))
    pick = _draw(opts, w, rng)
    if pick is None:
        return None
    h, u, m = pick
    new = list(species)
    for i in rng.choice(groups[h], size=m, replace=False):
        new[int(i)] = u
    return new, f"{h}>{u}"


def _draw(options: Sequence, weights: Sequence[float], rng: np.random.Generator):
    w = np.asarray(weights, dtype=float)
    if not len(options) or not np.isfinite(w).all() or w.sum() <= 0:
        return None
    return options[int(rng.choice(len(options), p=w / w.sum()))]


def rescale_volume(s: Structure) -> Structure:
    """`s` scaled to the volume the DLS predictor expects for its ions (bond lengths from
    data-mined radii); when that fails, by the ratio of summed cubed atomic radii."""
    from pymatgen.analysis.structure_prediction.volume_predictor import DLSVolumePredictor

    s = s.copy()
    v = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = DLSVolumePredictor().predict(s)
    except Exception:
        v = None
    if v is None or not math.isfinite(v) or v <= 0:
        r3 = sum((sp.atomic_radius or 1.5) ** 3 for sp in s.species)
        v = 4.0 / 3.0 * math.pi * r3 / 0.55  # ~ random close packing of hard spheres
    s.scale_lattice(float(v))
    return s
