"""Uniqueness and novelty: symmetry-equivalent structures collapse to one Candidate.id.

StructureMatcher costs milliseconds per pair, so it runs only where a match is plausible:
1. the canonical id (rotated, translated, permuted and supercell copies usually share it);
2. a bucket key: reduced formula and atoms in the primitive cell (spglib at symprec 0.1);
3. inside a bucket, a vectorized pre-screen on two descriptors that rotation, translation,
   supercells and site order leave unchanged, both in units of the free length per atom
   (V/N)^(1/3), so that they agree with the matcher's volume scaling:
   - the log of the primitive lattice's successive minima (its Niggli-reduced lengths),
     within a factor `lattice_tol`;
   - per element, the mean distance of its atoms to their 1st..6th nearest neighbours, within
     `site_tol`;
4. StructureMatcher.fit on what survives, nearest descriptor first, at most
   `max_matcher_calls` per structure, on primitive Niggli cells reduced once per structure
   (the matcher would otherwise reduce both structures again on every call).
Before all of this, a repeat of the very same cell (exact_key) is a duplicate outright.
Symmetry-equivalent copies pass 2-3 exactly (up to float noise). A copy whose atoms moved by a
sizeable fraction of the matcher's site tolerance (0.3 free lengths) can fail the pre-screen
and be kept as new; the pre-screen never merges structures the matcher tells apart.

Batches of at least PARALLEL_MIN structures can use `workers` processes: fingerprints in
chunks, then one task per bucket (buckets never share a match, so the answer is the serial one).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from xtalforge.types import Candidate

BucketKey = tuple[str, int]  # (reduced formula, atoms in the primitive cell)
NEIGHBOURS = 6
PARALLEL_MIN = 500  # below this many new structures a process pool costs more than it saves


def _matcher() -> StructureMatcher:
    # pymatgen's defaults (ltol 0.2, stol 0.3, angle_tol 5) with supercell matching on, so a
    # doubled cell is the same crystal as its primitive one.
    return StructureMatcher(primitive_cell=True, scale=True, attempt_supercell=True)


def fingerprint(s: Structure, symprec: float = 0.1) -> tuple[BucketKey, np.ndarray]:
    """Bucket key and the pre-screen descriptor: [log successive minima (3), per-element mean
    k-th neighbour distance (NEIGHBOURS per element, elements in alphabetical order)]."""
    import spglib

    formula = s.composition.reduced_formula
    lat, nprim = s.lattice.matrix, len(s)
    if s.is_ordered:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = spglib.get_symmetry_dataset((s.lattice.matrix, s.frac_coords, s.atomic_numbers), symprec=symprec)
        if ds is not None:
            nprim, lat = len(set(ds.mapping_to_primitive)), ds.primitive_lattice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        red = spglib.niggli_reduce(lat)
    red = lat if red is None else red
    free = (s.volume / len(s)) ** (1.0 / 3.0)  # Å
    minima = np.log(np.sort(np.linalg.norm(red, axis=1)) / free)
    return (formula, nprim), np.concatenate([minima, _neighbour_shells(s, free)])


def _neighbour_shells(s: Structure, free: float) -> np.ndarray:
    """Per element (alphabetical), the mean distance of its atoms to their k-th nearest
    neighbour, k = 1..NEIGHBOURS, over the free length per atom."""
    cutoff = 2.5 * free  # a sphere of ~65 atoms on average: six neighbours are always inside
    centres, _, _, dists = s.get_neighbor_list(cutoff)
    n = len(s)
    order = np.lexsort((dists, centres))
    centres, dists = centres[order], dists[order]
    counts = np.bincount(centres, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    shells = np.full((n, NEIGHBOURS), cutoff)
    for k in range(NEIGHBOURS):
        have = counts > k
        shells[have, k] = dists[starts[have] + k]
    symbols = np.array([sp.symbol if hasattr(sp, "symbol") else str(sp) for sp in s.species])
    return np.concatenate([shells[symbols == el].mean(axis=0) for el in sorted(set(symbols))]) / free


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


def _reduced(s: Structure, nprim: int) -> Structure:
    """What StructureMatcher compares: the primitive cell, Niggli-reduced, found by spglib
    (ten times faster than pymatgen's search); `nprim` is spglib's count from `fingerprint`."""
    import spglib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if nprim < len(s) and s.is_ordered:
            # the primitive cell spglib found, positions as they are (not symmetrized)
            prim = spglib.standardize_cell((s.lattice.matrix, s.frac_coords, s.atomic_numbers), to_primitive=True,
                                           no_idealize=True, symprec=0.1)
            s = s.get_primitive_structure() if prim is None else Structure(prim[0], prim[2], prim[1])
        lat = spglib.niggli_reduce(s.lattice.matrix)
    if lat is None:
        return s.get_reduced_structure()
    return Structure(Lattice(lat), s.species, s.cart_coords, coords_are_cartesian=True, to_unit_cell=True)


@dataclass(frozen=True)
class _Tolerances:
    log_lattice: float
    site: float
    max_calls: int


@dataclass
class _Bucket:
    """The unique structures of one bucket key, with their descriptors and reduced cells."""

    ids: list[str] = field(default_factory=list)
    reduced: list[Structure] = field(default_factory=list)
    desc: np.ndarray | None = None  # one descriptor row per structure

    def add(self, cid: str, red: Structure, d: np.ndarray) -> None:
        self.ids.append(cid)
        self.reduced.append(red)
        self.desc = d[None, :] if self.desc is None else np.vstack([self.desc, d[None, :]])

    def find(self, red: Structure, d: np.ndarray, matcher: StructureMatcher, tol: _Tolerances) -> tuple[str | None, int]:
        """(id of the structure `red` duplicates or None, matcher calls spent)."""
        if self.desc is None or self.desc.shape[1] != d.shape[0]:
            return None, 0
        diff = np.abs(self.desc - d)
        close = np.flatnonzero((diff[:, :3].max(axis=1) <= tol.log_lattice) & (diff[:, 3:].max(axis=1) <= tol.site))
        # nearest first: a duplicate, when there is one, is nearly always among the closest few
        order = close[np.argsort(diff[close].sum(axis=1))][: tol.max_calls]
        for calls, i in enumerate(order, start=1):
            if matcher.fit(red, self.reduced[i], skip_structure_reduction=True):
                return self.ids[i], calls
        return None, len(order)


def _scan_bucket(args: tuple[BucketKey, _Bucket, list[tuple[str, Structure, np.ndarray]], _Tolerances]
                 ) -> tuple[_Bucket, list[bool], int]:
    """Deduplicate `items` (id, structure, descriptor) against and into one bucket, in order:
    (the bucket with the new ones added, new or not per item, matcher calls)."""
    key, bucket, items, tol = args
    matcher = _matcher()
    flags, calls = [], 0
    for cid, s, d in items:
        red = _reduced(s, key[1])
        hit, n = bucket.find(red, d, matcher, tol)
        calls += n
        if hit is None:
            bucket.add(cid, red, d)
        flags.append(hit is None)
    return bucket, flags, calls


def _fingerprints(args: tuple[list[Structure], float]) -> list[tuple[BucketKey, np.ndarray]]:
    structures, symprec = args
    return [fingerprint(s, symprec) for s in structures]


class Deduplicator:
    """Remembers every structure seen; `add` says whether a new structure is new."""

    def __init__(self, known: Iterable[Candidate] = (), symprec: float = 0.1, lattice_tol: float = 1.25,
                 site_tol: float = 0.05, max_matcher_calls: int = 8, workers: int = 1):
        """`lattice_tol`: the largest ratio of successive minima still sent to the matcher;
        `site_tol`: the largest difference of mean neighbour distances, in free lengths per atom;
        `max_matcher_calls`: matcher calls per structure before calling it new;
        `workers`: processes for `unique` on batches of at least PARALLEL_MIN structures."""
        self.matcher = _matcher()
        self.symprec = symprec
        self.tol = _Tolerances(math.log(lattice_tol), site_tol, max_matcher_calls)
        self.workers = workers
        self.ids: set[str] = set()
        self.seen: set[str] = set()  # exact_key of every structure already judged
        self.buckets: dict[BucketKey, _Bucket] = {}
        self.matcher_calls = 0  # how often the expensive step ran (for benchmarks)
        for c in known:  # the store's candidates are unique already: no matching needed
            key, desc = fingerprint(c.structure, symprec)
            self.ids.add(c.id)
            self.seen.add(exact_key(c.structure))
            self.buckets.setdefault(key, _Bucket()).add(c.id, _reduced(c.structure, key[1]), desc)

    def match(self, s: Structure) -> str | None:
        """The id of a known structure that `s` duplicates, or None."""
        key, desc = fingerprint(s, self.symprec)
        b = self.buckets.get(key)
        if b is None:
            return None
        hit, n = b.find(_reduced(s, key[1]), desc, self.matcher, self.tol)
        self.matcher_calls += n
        return hit

    def add(self, c: Candidate) -> bool:
        """True when `c` is new (and is now remembered); False for a duplicate.

        The canonical id is a coarse hash (lattice rounded to 0.1 Å), so two distinct
        polymorphs can share it: identity is the matcher's call, and a new structure whose id
        is taken gets the next free suffix (`<id>-1`, `<id>-2`, ...). The very same cell
        proposed again (generators repeat themselves) is answered without the matcher."""
        exact = exact_key(c.structure)
        if exact in self.seen:
            return False
        self.seen.add(exact)
        key, desc = fingerprint(c.structure, self.symprec)
        bucket = self.buckets.setdefault(key, _Bucket())
        _, flags, calls = _scan_bucket((key, bucket, [(self._free_id(c.id), c.structure, desc)], self.tol))
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
        fresh = []
        for c in cands:
            exact = exact_key(c.structure)
            if exact not in self.seen:
                self.seen.add(exact)
                fresh.append(c)
        step = max(1, math.ceil(len(fresh) / (4 * self.workers)))
        chunks = [([c.structure for c in fresh[i:i + step]], self.symprec) for i in range(0, len(fresh), step)]
        with ProcessPoolExecutor(max_workers=self.workers) as pool:
            fps = [fp for part in pool.map(_fingerprints, chunks) for fp in part]
            groups: dict[BucketKey, list[int]] = {}
            for i, (key, _) in enumerate(fps):
                groups.setdefault(key, []).append(i)
            keys = sorted(groups, key=lambda k: -len(groups[k]))  # the longest scan starts first
            # new entries carry a placeholder id ("#<index>") until the final ids are known
            tasks = [(k, self.buckets.get(k, _Bucket()), [(f"#{i}", fresh[i].structure, fps[i][1]) for i in groups[k]],
                      self.tol) for k in keys]
            new: set[int] = set()
            for k, (bucket, flags, calls) in zip(keys, pool.map(_scan_bucket, tasks)):
                self.buckets[k] = bucket
                self.matcher_calls += calls
                new.update(i for i, f in zip(groups[k], flags) if f)
        final: dict[str, str] = {}
        out = []
        for i, c in enumerate(fresh):  # ids in input order, as the serial scan would give them
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
