"""MLIP relaxation throughput and agreement: CHGNet's StructOptimizer one at a time against the
xtalforge MLIP oracle (1 and 2 Ray workers, batched and not), on the same structures.

The structures: every ordered crystal of at most `--max-atoms` atoms in shared/data/test_cifs,
then perov_5 validation perovskites, each strained (±4 % per axis, seeded) and rattled (0.05 Å),
until there are `--n`. Every configuration relaxes all of them with FIRE, a Frechet cell
filter, `--fmax` and `--max-steps`; the table gives relaxations per minute (warm workers: model
loading excluded), the ratio to the StructOptimizer baseline measured in the same run, and the
final energy difference per structure against that baseline (target: under 5 meV/atom).

Run (CPU):   nice -n 5 .venv/bin/python benchmarks/mlip_relax.py
On a GPU:    .venv/bin/python benchmarks/mlip_relax.py --device cuda
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread everywhere, as each Ray actor has: set before numpy/torch load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from pymatgen.core import Structure  # noqa: E402

DATA = Path(os.environ.get("XTALFORGE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def structures(n: int, max_atoms: int, seed: int) -> list[Structure]:
    """`n` strained and rattled structures of at most `max_atoms` atoms, the same for a seed."""
    rng = np.random.default_rng(seed)
    base: list[Structure] = []
    for p in sorted((DATA / "test_cifs").rglob("*.cif")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                s = Structure.from_file(p)
            except Exception:
                continue
        if s.is_ordered and 1 < len(s) <= max_atoms and "He" not in s.composition:
            base.append(s)
    csv.field_size_limit(sys.maxsize)
    with (DATA / "perov_5" / "val.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if len(base) >= n:
                break
            base.append(Structure.from_str(row["cif"], fmt="cif"))
    out = []
    for s in base[:n]:
        s = s.copy()
        s.remove_oxidation_states()
        for key in list(s.site_properties):
            s.remove_site_property(key)
        s.apply_strain(rng.uniform(-0.04, 0.04, 3))
        cart = s.cart_coords + rng.normal(0, 0.05, (len(s), 3))
        out.append(Structure(s.lattice, s.species, cart, coords_are_cartesian=True))
    return out


def struct_optimizer(model, structs: list[Structure], fmax: float, steps: int, device: str) -> list[float]:
    """CHGNet's own StructOptimizer, one structure at a time, in this process: eV/atom."""
    from chgnet.model import StructOptimizer

    opt = StructOptimizer(model=model, optimizer_class="FIRE", use_device=device, on_isolated_atoms="ignore")
    out = []
    for s in structs:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = opt.relax(s, fmax=fmax, steps=steps, verbose=False)
            out.append(float(r["trajectory"].energies[-1]) / len(s))
        except Exception:
            out.append(np.nan)
    return out


def engine(model, structs: list[Structure], fmax: float, steps: int, max_batch: int, timings) -> list[float]:
    """The batched engine in this process (no Ray): eV/atom; `timings` says where the time went."""
    from xtalforge.oracles.mlip.batched import relax_batched

    res = relax_batched(model, structs, fmax=fmax, max_steps=steps, max_batch=max_batch, timings=timings)
    return [r.energy_per_atom if r.ok else np.nan for r in res]


def oracle(structs: list[Structure], offset: int, fmax: float, steps: int, device: str, workers: int,
           batched: bool, max_batch: int) -> tuple[list[float], float]:
    """The MLIP oracle on Ray (warm workers): eV/atom and seconds from submit to the last result."""
    import ray

    from xtalforge.oracles.mlip.oracle import MLIPOracle
    from xtalforge.types import Candidate

    orc = MLIPOracle(None, workers=workers, fmax=fmax, max_steps=steps, timeout_s=3600, batched=batched,
                     max_batch=max_batch, device=device)
    try:
        ray.get([a.ready.remote() for a in orc.actors])  # model loading is not relaxation
        cands = [Candidate(structure=s, source="bench", round=0, id=f"s{offset + i:03d}") for i, s in enumerate(structs)]
        got = {}
        t0 = time.perf_counter()
        orc.submit(cands)
        orc.drain(lambda m: got.__setitem__(m.candidate_id, m))
        wall = time.perf_counter() - t0
    finally:
        orc.shutdown()
    return [got[c.id].values.get("energy_per_atom", np.nan) if c.id in got else np.nan for c in cands], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-atoms", type=int, default=20)
    ap.add_argument("--fmax", type=float, default=0.1, help="eV/Å")
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=32, help="structures per interleaving block")
    args = ap.parse_args()

    from xtalforge.loop.executor import start_ray
    from xtalforge.oracles.mlip.relax import local_device

    device = local_device(args.device)
    structs = structures(args.n, args.max_atoms, args.seed)
    atoms = [len(s) for s in structs]
    print(f"{len(structs)} structures, {min(atoms)}-{max(atoms)} atoms (mean {np.mean(atoms):.1f}); "
          f"fmax {args.fmax} eV/Å, max {args.max_steps} steps; device {device}; {os.cpu_count()} CPUs")

    from xtalforge.oracles.mlip.batched import Timings
    from xtalforge.oracles.mlip.relax import load_chgnet

    model = load_chgnet(threads=1, device=device)
    struct_optimizer(model, structs[:1], args.fmax, 2, device)  # warm-up: first calls are slow
    configs = [("StructOptimizer, 1 at a time (baseline)", "-", None),
               ("batched engine in-process, max_batch 1", "-", 1),
               (f"batched engine in-process, max_batch {args.max_batch}", "-", args.max_batch)]
    configs += [(f"oracle {'batched' if b else 'one at a time'}", str(w), (w, b)) for w in args.workers
                for b in (False, True)]
    walls = {c[0] + c[1]: 0.0 for c in configs}
    energies: dict[str, list[float]] = {c[0] + c[1]: [] for c in configs}
    breakdown = {1: Timings(), args.max_batch: Timings()}
    start_ray(num_cpus=max(args.workers))
    # blocks of structures, every configuration on each block in turn: the machine's load drifts
    # over minutes, and interleaving spreads that drift over all configurations alike
    for b in range(0, len(structs), args.block):
        block = structs[b : b + args.block]
        for name, w, how in configs:
            key = name + w
            t0 = time.perf_counter()
            if how is None:
                e = struct_optimizer(model, block, args.fmax, args.max_steps, device)
            elif isinstance(how, int):
                e = engine(model, block, args.fmax, args.max_steps, how, breakdown[how])
            else:
                e, wall = oracle(block, b, args.fmax, args.max_steps, device, how[0], how[1], args.max_batch)
            walls[key] += wall if isinstance(how, tuple) else time.perf_counter() - t0
            energies[key].extend(e)
        print(f"  block {b // args.block + 1}: done", flush=True)
    rows = [(name, w, walls[name + w], np.array(energies[name + w])) for name, w, _ in configs]
    breakdown = {k: v.as_dict() for k, v in breakdown.items()}
    n = len(structs)
    base = rows[0][3]
    base_rate = n / rows[0][2] * 60
    print(f"\n{'configuration':44s} {'workers':>7s} {'wall s':>8s} {'relax/min':>9s} {'x base':>7s} "
          f"{'failed':>6s} {'max|dE|':>8s} {'mean|dE|':>8s} {'>5meV':>5s}")
    print(f"{'':44s} {'':>7s} {'':>8s} {'':>9s} {'':>7s} {'':>6s} {'meV/at':>8s} {'meV/at':>8s} {'':>5s}")
    for name, w, wall, e in rows:
        d = np.abs(e - base) * 1000
        ok = np.isfinite(d)
        print(f"{name:44s} {w:>7s} {wall:8.1f} {n / wall * 60:9.1f} {n / wall * 60 / base_rate:7.2f} "
              f"{int((~np.isfinite(e)).sum()):6d} {np.nanmax(d) if ok.any() else np.nan:8.3f} "
              f"{np.nanmean(d) if ok.any() else np.nan:8.3f} {int((d[ok] > 5).sum()):5d}")
    print("\nbatched engine, where the time went (s):")
    for mb, tm in breakdown.items():
        tot = tm["graph_s"] + tm["model_s"] + tm["optimizer_s"]
        print(f"  max_batch {mb:3d}: graph conversion {tm['graph_s']:6.1f} ({tm['graph_s'] / tot:4.0%}), "
              f"model {tm['model_s']:6.1f} ({tm['model_s'] / tot:4.0%}), optimizer {tm['optimizer_s']:5.1f} "
              f"({tm['optimizer_s'] / tot:4.0%}); {int(tm['calls'])} model calls, "
              f"{tm['evaluations'] / max(tm['calls'], 1):.1f} structures per call")


if __name__ == "__main__":
    main()
