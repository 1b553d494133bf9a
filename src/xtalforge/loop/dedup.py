"""Uniqueness and novelty: symmetry-equivalent structures collapse to one Candidate.id.

StructureMatcher costs milliseconds per pair, so it runs only where a match is plausible:
1. a repeat of the very same cell (`exact_key`) is a duplicate outright;
2. structures are bucketed by reduced formula (the matcher never matches across formulas);
3. inside a bucket, a vectorized pre-screen on a descriptor that rotation, translation,
   supercells and site order leave unchanged, in units of the free length per atom
   (V/N)^(1/3) so that it agrees with the matcher's volume scaling: per element, the mean,
   least and largest distance of its atoms to their 1st..6th nearest neighbours and the mean
   distance to the nearest atom of each element. Only structures within `site_tol` of each
   other on every entry go on;
4. StructureMatcher.fit on what survives with a primitive cell of the same size, nearest
   descriptor first, at most `max_matcher_calls` per structure, on primitive Niggli cells
   (spglib) reduced once per structure and only when first needed (the matcher would reduce
   both on every call).
Symmetry-equivalent copies pass 3 exactly (up to float noise). A copy whose atoms moved by a
sizeable fraction of the matcher's site tolerance (0.3 free lengths) can fail the pre-screen
and be kept as new; the pre-screen never merges structures the matcher tells apart.

The canonical id (types.canonical_id) is a coarse hash that distinct polymorphs can share, so
it is not trusted: a new structure whose id is taken gets a suffix (`<id>-1`, ...).

Batches of at least PARALLEL_MIN structures can use `workers` processes, one task per bucket
(buckets never share a match, so the answer is the serial one).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from xtalforge.types import Candidate

NEIGHBOURS = 6
PARALLEL_MIN = 500  # below this many new structures a process pool costs more than it saves


def _matcher() -> StructureMatcher:
    # pymatgen's defaults (ltol 0.2, stol 0.3, angle_tol 5) with supercell matching on, so a
    # doubled cell is the same crystal as its primitive one.
    return StructureMatcher(primitive_cell=True, scale=True, attempt_supercell=True)


def fingerprint(s: Structure) -> tuple[str, np.ndarray]:
    """(bucket key = reduced formula, pre-screen descriptor)."""
    free = (s.volume / len(s)) ** (1.0 / 3.0)  # Å
    return s.composition.reduced_formula, _neighbour_shells(s, free)


def _neighbour_shells(s: Structure, free: float) -> np.ndarray:
    """Per element A (alphabetical): the mean, least and largest distance of its atoms to their
    k-th nearest neighbour, k = 1..NEIGHBOURS, then the mean distance to their nearest atom of
    each element B; all over the free length per atom. The last part tells apart structures
    that differ only in which atom sits where (a swap keeps the distances, not who is at the
    other end). Supercells repeat every atom's surroundings, so none of this changes."""
    cutoff = 2.5 * free  # a sphere of ~65 atoms on average: six neighbours are always inside
    centres, points, _, dists = s.get_neighbor_list(cutoff)
    n = len(s)
    order = np.lexsort((dists, centres))
    centres, points, dists = centres[order], points[order], dists[order]
    counts = np.bincount(centres, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    shells = np.full((n, NEIGHBOURS), cutoff)
    for k in range(NEIGHBOURS):
        have = counts > k
        shells[have, k] = dists[starts[have] + k]
    symbols = np.array([sp.symbol if hasattr(sp, "symbol") else str(sp) for sp in s.species])
    elements = sorted(set(symbols))
    el = np.searchsorted(elements, symbols)
    nearest = np.full((n, len(elements)), cutoff)
    np.minimum.at(nearest, (centres, el[points]), dists)
    parts = [np.concatenate([shells[el == i].mean(axis=0), shells[el == i].min(axis=0), shells[el == i].max(axis=0),
                             nearest[el == i].mean(axis=0)])
             for i in range(len(elements))]
    return np.concatenate(parts) / free


def exact_key(s: Structure) -> str:
    """A hash of the cell exactly as given (lattice, and species with positions in any site
    order, to 1e-4): equal only for repeats of the very same cell, never for distinct crystals."""
    import hashlib

    frac = np.round(np.mod(s.frac_coords, 1.0), 4) % 1.0
    z = np.array([sp.Z if hasattr(sp, "Z") else 0 for sp in s.species], dtype=float)[:, None]
    rows = np.hstack([z, frac])
    rows = rows[np.lexsort(rows.T[::-1])]
    data = np.round(s.lattice.matrix, 4).tobytes() + rows.tobytes() + s.composition.formula.encode()
    return hashlib.sha1(data).hexdigest()


def _reduced(s: Structure) -> Structure:
    """What StructureMatcher compares: the primitive cell, Niggli-reduced, both found by spglib
    (ten times faster than pymatgen's searches), positions as they are (not symmetrized)."""
    import spglib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if s.is_ordered:
            prim = spglib.standardize_cell((s.lattice.matrix, s.frac_coords, s.atomic_numbers), to_primitive=True,
                                           no_idealize=True, symprec=0.1)
            if prim is not None and len(prim[2]) < len(s):
                s = Structure(prim[0], prim[2], prim[1])
        lat = spglib.niggli_reduce(s.lattice.matrix)
    if lat is None:
        return s.get_reduced_structure()
    return Structure(Lattice(lat), s.species, s.cart_coords, coords_are_cartesian=True, to_unit_cell=True)


@dataclass(frozen=True)
class _Tolerances:
    site: float
    max_calls: int


@dataclass
class _Bucket:
    """The unique structures of one formula, with their descriptors and (lazily) reduced cells."""

    ids: list[str] = field(default_factory=list)
    structures: list[Structure] = field(default_factory=list)
    reduced: list[Structure | None] = field(default_factory=list)
    desc: np.ndarray | None = None  # one descriptor row per structure

    def add(self, cid: str, s: Structure, d: np.ndarray, red: Structure | None = None) -> None:
        self.ids.append(cid)
        self.structures.append(s)
        self.reduced.append(red)
        self.desc = d[None, :] if self.desc is None else np.vstack([self.desc, d[None, :]])

    def reduced_at(self, i: int) -> Structure:
        if self.reduced[i] is None:
            self.reduced[i] = _reduced(self.structures[i])
        return self.reduced[i]

    def find(self, s: Structure, d: np.ndarray, matcher: StructureMatcher, tol: _Tolerances
             ) -> tuple[str | None, int, Structure | None]:
        """(id of the structure `s` duplicates or None, matcher calls spent, `s` reduced if it
        had to be)."""
        if self.desc is None or self.desc.shape[1] != d.shape[0]:
            return None, 0, None
        diff = np.abs(self.desc - d)
        close = np.flatnonzero(diff.max(axis=1) <= tol.site)
        if not len(close):
            return None, 0, None
        red = _reduced(s)
        calls = 0
        # nearest first: a duplicate, when there is one, is nearly always among the closest few
        for i in close[np.argsort(diff[close].sum(axis=1))]:
            other = self.reduced_at(int(i))
            if len(other) != len(red):  # a different primitive cell: the matcher's slow supercell search
                continue
            calls += 1
            if matcher.fit(red, other, skip_structure_reduction=True):
                return self.ids[int(i)], calls, red
            if calls >= tol.max_calls:
                break
        return None, calls, red


def _scan_bucket(args: tuple[_Bucket, list[tuple[str, Structure, np.ndarray]], _Tolerances]
                 ) -> tuple[_Bucket, list[bool], int]:
    """Deduplicate `items` (id, structure, descriptor) against and into one bucket, in order:
    (the bucket with the new ones added, new or not per item, matcher calls)."""
    bucket, items, tol = args
    matcher = _matcher()
    flags, calls = [], 0
    for cid, s, d in items:
        hit, n, red = bucket.find(s, d, matcher, tol)
        calls += n
        if hit is None:
            bucket.add(cid, s, d, red)
        flags.append(hit is None)
    return bucket, flags, calls


class Deduplicator:
    """Remembers every structure seen; `add` says whether a new structure is new."""

    def __init__(self, known: Iterable[Candidate] = (), site_tol: float = 0.05, max_matcher_calls: int = 8,
                 workers: int = 1):
        """`site_tol`: the largest difference of any descriptor entry still sent to the matcher,
        in free lengths per atom; `max_matcher_calls`: matcher calls per structure before
        calling it new; `workers`: processes for `unique` on batches of PARALLEL_MIN or more."""
        self.matcher = _matcher()
        self.tol = _Tolerances(site_tol, max_matcher_calls)
        self.workers = workers
        self.ids: set[str] = set()
        self.seen: set[str] = set()  # exact_key of every structure already judged
        self.buckets: dict[str, _Bucket] = {}
        self.matcher_calls = 0  # how often the expensive step ran (for benchmarks)
        for c in known:  # the store's candidates are unique already: no matching needed
            key, desc = fingerprint(c.structure)
            self.ids.add(c.id)
            self.seen.add(exact_key(c.structure))
            self.buckets.setdefault(key, _Bucket()).add(c.id, c.structure, desc)

    def match(self, s: Structure) -> str | None:
        """The id of a known structure that `s` duplicates, or None."""
        key, desc = fingerprint(s)
        b = self.buckets.get(key)
        if b is None:
            return None
        hit, n, _ = b.find(s, desc, self.matcher, self.tol)
        self.matcher_calls += n
        return hit

    def add(self, c: Candidate) -> bool:
        """True when `c` is new (and is now remembered, under a free id); False for a duplicate."""
        exact = exact_key(c.structure)
        if exact in self.seen:
            return False
        self.seen.add(exact)
        key, desc = fingerprint(c.structure)
        bucket = self.buckets.setdefault(key, _Bucket())
        _, flags, calls = _scan_bucket((bucket, [(self._free_id(c.id), c.structure, desc)], self.tol))
        self.matcher_calls += calls
        if flags[0]:
            c.id = bucket.ids[-1]
            self.ids.add(c.id)
        return flags[0]

    def unique(self, cands: Iterable[Candidate]) -> list[Candidate]:
        """The new candidates among `cands`, in order, each now remembered."""
        cands = list(cands)
        if self.workers <= 1 or len(cands) < PARALLEL_MIN:
            return [c for c in cands if self.add(c)]
        return self._unique_parallel(cands)

    def _free_id(self, cid: str) -> str:
        if cid not in self.ids:
            return cid
        k = 1
        while f"{cid}-{k}" in self.ids:
            k += 1
        return f"{cid}-{k}"

    def _unique_parallel(self, cands: Sequence[Candidate]) -> list[Candidate]:
        fresh, groups, descs = [], {}, []
        for c in cands:
            exact = exact_key(c.structure)
            if exact in self.seen:
                continue
            self.seen.add(exact)
            key, desc = fingerprint(c.structure)
            groups.setdefault(key, []).append(len(fresh))
            fresh.append(c)
            descs.append(desc)
        keys = sorted(groups, key=lambda k: -len(groups[k]))  # the longest scan starts first
        # new entries carry a placeholder id ("#<index>") until the final ids are known
        tasks = [(self.buckets.get(k, _Bucket()), [(f"#{i}", fresh[i].structure, descs[i]) for i in groups[k]],
                  self.tol) for k in keys]
        new: set[int] = set()
        with ProcessPoolExecutor(max_workers=self.workers) as pool:
            for k, (bucket, flags, calls) in zip(keys, pool.map(_scan_bucket, tasks)):
                self.buckets[k] = bucket
                self.matcher_calls += calls
                new.update(i for i, f in zip(groups[k], flags) if f)
        final: dict[str, str] = {}
        out = []
        for i, c in enumerate(fresh):  # ids in input order, as the serial scan gives them
            if i in new:
                c.id = self._free_id(c.id)
                self.ids.add(c.id)
                final[f"#{i}"] = c.id
                out.append(c)
        for k in keys:
            b = self.buckets[k]
            b.ids = [final.get(x, x) for x in b.ids]
        return out

    def __len__(self) -> int:
        return len(self.ids)


def is_novel(s: Structure, references: Iterable[Structure]) -> bool:
    """Not a StructureMatcher match of any reference structure of the same formula."""
    m = _matcher()
    f = s.composition.reduced_formula
    return not any(r.composition.reduced_formula == f and m.fit(s, r) for r in references)


def structure_classes(structures: Sequence[Structure], matcher: StructureMatcher) -> int:
    """How many distinct crystals `structures` hold: StructureMatcher groups, compared only
    within a reduced formula (the matcher never matches across formulas)."""
    buckets: dict[str, list[Structure]] = {}
    for s in structures:
        buckets.setdefault(s.composition.reduced_formula, []).append(s)
    return sum(len(matcher.group_structures(b)) for b in buckets.values())
