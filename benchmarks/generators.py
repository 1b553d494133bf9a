"""Search generators: proposals per second, valid %, unique %, and deduplication at 10,000.

For each generator (random_symmetric, substitution, evolutionary) in one chemical system:
1. Proposals: `propose(chunk)` calls with fresh seeds (as rounds and Ray tasks would make them),
   on `--workers` processes, until `--n` proposals or `--max-seconds` of wall time. All three get
   the same mid-campaign context: a population of 16 of their structures with synthetic
   e_above_hull (uniform 0-0.3 eV/atom) standing in for relaxed results (evolutionary breeds
   from it; substitution uses it as extra prototypes; random_symmetric ignores it).
2. valid %: proposals passing xtalforge/structure.py (the campaign's filter) out of all proposed.
   unique %: proposals left after deduplication out of all proposed (duplicates across chunks,
   i.e. across rounds, count as not unique).
3. Deduplication of 10,000: the generator's proposals, padded when it made fewer than 10,000
   with symmetry-equivalent copies of them (rotated, translated, site-permuted, half of them
   doubled), in a shuffled order through a fresh Deduplicator. Of a proposal and its copies
   exactly one must be left: "copies kept" counts the extra ones. Wall and CPU time exclude
   building Candidates (the id hash is paid when a generator proposes) and include everything
   Deduplicator.unique does: on one core, then with workers=2 (same answer, asserted).
   "dedup real s": the proposals alone, one core.
4. Agreement with brute force: on a random sample of `--check` proposals, the number of unique
   structures by plain pairwise StructureMatcher (same formula) against Deduplicator's count.

Run:  nice -n 5 .venv/bin/python benchmarks/generators.py
"""

from __future__ import annotations

import argparse
import logging
import pickle
import os
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from xtalforge.generators.registry import build_generator
from xtalforge.loop.dedup import Deduplicator, _matcher
from xtalforge.structure import ValidityLimits, filter_valid
from xtalforge.types import Candidate, Measurement, RoundContext

GENERATORS = ("random_symmetric", "substitution", "evolutionary")


def _propose(args: tuple) -> list[Candidate]:
    gen, n, elements, max_atoms, seed, history = args
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    ctx = RoundContext(round=1, elements=elements, max_atoms=max_atoms, rng=np.random.default_rng(seed),
                       history=history)
    return gen.propose(n, ctx)


def population(elements: tuple[str, ...], max_atoms: int, seed: int) -> list[tuple[Candidate, Measurement]]:
    """16 structures (8 substitution, 8 random symmetric) with synthetic e_above_hull, best first."""
    rng = np.random.default_rng(seed)
    cands = []
    for name in ("substitution", "random_symmetric"):
        gen = build_generator(name, elements, max_atoms)
        cands += _propose((gen, 8, elements, max_atoms, seed, []))[:8]
    hist = [(c, Measurement(candidate_id=c.id, oracle="synthetic", fidelity=1,
                            values={"e_above_hull": float(rng.uniform(0, 0.3))}, relaxed=c.structure))
            for c in cands]
    return sorted(hist, key=lambda t: t[1].values["e_above_hull"])


def generate(name: str, elements, max_atoms: int, n: int, chunk: int, workers: int, max_s: float, seed: int,
             history) -> tuple[list[Candidate], float]:
    gen = build_generator(name, elements, max_atoms)
    out: list[Candidate] = []
    t0 = time.perf_counter()
    k = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        while len(out) < n and time.perf_counter() - t0 < max_s:
            jobs = [(gen, chunk, elements, max_atoms, seed * 100_003 + k + j, history) for j in range(workers * 2)]
            k += len(jobs)
            for res in pool.map(_propose, jobs):
                out.extend(res)
    return out[:n] if len(out) > n else out, time.perf_counter() - t0


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def copy_of(s: Structure, rng: np.random.Generator) -> Structure:
    """A rotated, translated, site-permuted and (every other time) doubled copy of `s`."""
    if rng.random() < 0.5:
        s = s * [1, 1, 2]
    c = Structure(Lattice(s.lattice.matrix @ _rotation(rng).T), s.species, s.frac_coords)
    c.translate_sites(list(range(len(c))), rng.random(3), frac_coords=True, to_unit_cell=True)
    p = rng.permutation(len(c))
    return Structure(c.lattice, [c.species[i] for i in p], c.frac_coords[p])


def brute_force_unique(structs: list[Structure]) -> int:
    m = _matcher()
    kept: list[Structure] = []
    for s in structs:
        f = s.composition.reduced_formula
        if not any(k.composition.reduced_formula == f and m.fit(s, k) for k in kept):
            kept.append(s)
    return len(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", default="Ca,Ti,O")
    ap.add_argument("--max-atoms", type=int, default=12)
    ap.add_argument("--n", type=int, default=10_000, help="deduplication size")
    ap.add_argument("--chunk", type=int, default=50, help="proposals per propose() call")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=300, help="generation wall time per generator")
    ap.add_argument("--check", type=int, default=150, help="sample size for the brute-force comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generators", default=",".join(GENERATORS))
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep/reuse generated proposals")
    a = ap.parse_args()
    elements = tuple(a.system.split(","))
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    history = population(elements, a.max_atoms, a.seed)
    limits = ValidityLimits(max_atoms=a.max_atoms)
    rows = []
    for name in a.generators.split(","):
        cache = a.cache / f"{name}-{'-'.join(elements)}-{a.max_atoms}.pkl" if a.cache else None
        if cache and cache.is_file():
            props, gen_s = pickle.loads(cache.read_bytes())
        else:
            props, gen_s = generate(name, elements, a.max_atoms, a.n, a.chunk, a.workers, a.max_seconds, a.seed,
                                    history)
            if cache:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_bytes(pickle.dumps((props, gen_s)))
        valid, _ = filter_valid(props, limits, elements)
        rng = np.random.default_rng(a.seed)
        t = time.perf_counter()
        unique_real = len(Deduplicator().unique(valid))
        dedup_real_s = time.perf_counter() - t
        sources = rng.integers(len(valid), size=max(0, a.n - len(valid)))
        copies = [Candidate(structure=copy_of(valid[int(i)].structure, rng), source=name, round=1) for i in sources]
        pool = valid + copies
        origin = {id(c): i for i, c in enumerate(valid)} | {id(c): int(i) for c, i in zip(copies, sources)}
        order = rng.permutation(len(pool))
        shuffled = [pool[i] for i in order]
        ids = [c.id for c in shuffled]  # unique() may rename a clashing id: each run starts alike
        dedup = Deduplicator()
        t = time.perf_counter()
        c0 = time.process_time()
        kept = dedup.unique(shuffled)
        dedup_s, dedup_cpu = time.perf_counter() - t, time.process_time() - c0
        for c, cid in zip(shuffled, ids):
            c.id = cid
        t = time.perf_counter()
        kept2 = Deduplicator(workers=2).unique(shuffled)
        dedup2_s = time.perf_counter() - t
        assert len(kept2) == len(kept), "the parallel scan must give the serial answer"
        # a proposal and its copies must leave exactly one of them
        copies_kept = sum(n - 1 for n in Counter(origin[id(c)] for c in kept).values())
        sample = [valid[int(i)] for i in rng.choice(len(valid), size=min(a.check, len(valid)), replace=False)]
        t = time.perf_counter()
        brute = brute_force_unique([c.structure for c in sample])
        brute_s = time.perf_counter() - t
        ours = len(Deduplicator().unique(sample))
        rows.append(dict(
            generator=name, proposals=len(props), gen_s=gen_s, rate=len(props) / gen_s,
            valid=100 * len(valid) / max(1, len(props)), unique=100 * unique_real / max(1, len(props)),
            dedup_real_s=dedup_real_s, n_total=len(pool), n_copies=len(copies), dedup_s=dedup_s,
            dedup_cpu=dedup_cpu, dedup2_s=dedup2_s, copies_kept=copies_kept, matcher_calls=dedup.matcher_calls,
            check=len(sample), brute=brute, ours=ours, brute_s=brute_s,
        ))
        print(f"{name}: done", flush=True)
    print()
    print(f"system {'-'.join(elements)}, max_atoms {a.max_atoms}, {a.workers} worker processes, "
          f"chunks of {a.chunk}, generation capped at {a.max_seconds:.0f} s; "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    head = (f"{'generator':17s} {'proposed':>8s} {'prop/s':>7s} {'valid%':>7s} {'unique%':>8s} "
            f"{'dedup real s':>12s} {'dedup N (copies)':>17s} {'dedup s (cpu)':>14s} {'2 procs s':>9s} "
            f"{'copies kept':>11s} "
            f"{'matcher calls':>13s} {'brute/ours (n)':>15s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['generator']:17s} {r['proposals']:8d} {r['rate']:7.1f} {r['valid']:7.1f} {r['unique']:8.1f} "
              f"{r['dedup_real_s']:12.1f} {r['n_total']:>9d} ({r['n_copies']:5d}) {r['dedup_s']:7.1f} ({r['dedup_cpu']:4.1f}) "
              f"{r['dedup2_s']:9.1f} "
              f"{r['copies_kept']:11d} {r['matcher_calls']:13d} {r['brute']:>6d}/{r['ours']:<4d}({r['check']})")


if __name__ == "__main__":
    main()
