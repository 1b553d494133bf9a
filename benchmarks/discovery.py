#!/usr/bin/env python
"""Leave-system-out rediscovery: does the loop find a system's known ground states faster than search?

For each ternary system A-B-C the targets are its ternary phases on the MP-20 DFT hull (the
hull of the snapshot's MP-20 entries) with at most --max-atoms sites and a structure in the
snapshot. Every A-B-C ternary entry is hidden from what the campaign sees
(`references.exclude_chemsys`: its hulls and novelty; the substitution generator's known
prototypes); binaries and elements stay. A target is rediscovered when a relaxed candidate
matches it (StructureMatcher, default tolerances).

Methods, at the same number of MLIP relaxations:
  loop       random_symmetric + substitution + evolutionary, bandit, GP + qLogNEI, generator updates
  no_update  the same with generators and bandit frozen
  random     random_symmetric only, random picks, no surrogate, no updates
The substitution generator draws prototypes from the whole snapshot by ionic-substitution
probability (its default, `prototypes: known`; the target system left out); `--textbook` limits
it to the 25 textbook prototypes. `--no-single-point` turns off the cheap fidelity (each
proposal's MLIP single-point e_above_hull given to the surrogate, `acquisition.single_point`).

Per method: targets rediscovered per system and seed, relaxations until each rediscovery, new SUN
per 100 relaxations (stable against the full oracle-consistent hull, targets included, plus the
run's own results; unique within the run; matching no known phase), and the share of relaxations
ending within 50 meV/atom of that hull.

    benchmarks/discovery.py --chemsys Sr-Ti-O --chemsys Ba-O-Sn --max-atoms 12 --relaxations 48 --seeds 2

`--reach N` runs no campaign: it counts the targets that N unrelaxed substitution proposals
already match, textbook prototypes against the snapshot library (what the library puts in reach);
`--substitution-commonality medium` repeats it with SMACT's stricter composition filter.

The last line printed is `rediscovery_ratio=X`, X = (loop total + 1) / (random total + 1).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

warnings.filterwarnings("ignore")
logging.basicConfig(level=logging.ERROR)

from xtalforge.config import parse_config  # noqa: E402
from xtalforge.loop.dedup import Deduplicator  # noqa: E402
from xtalforge.references.hull import Hull  # noqa: E402
from xtalforge.references.known import KnownMaterialsError, KnownPhase, load_known, parse_chemsys  # noqa: E402
from xtalforge.references.novelty import KnownStructures  # noqa: E402
from xtalforge.references.snapshot import chemsys_of  # noqa: E402
from xtalforge.types import Candidate, Status  # noqa: E402

SHOWCASE = ("Sr-Ti-O", "Cu-O-Sr", "Bi-Na-O", "Ba-O-Sn")  # several small MP-20 ground states each
SEARCH_GENERATORS = ("random_symmetric", "substitution", "evolutionary")
METHODS = ("loop", "no_update", "random")


def rediscovery_targets(chemsys: str, max_atoms: int, hull_tol: float = 1e-6) -> list[KnownPhase]:
    """The phases of exactly `chemsys` (e.g. 'Sr-Ti-O', all its elements) on the MP-20 DFT hull
    (within `hull_tol` eV/atom; the hull of the snapshot's MP-20 entries and MP's elemental
    references) with a structure of at most `max_atoms` sites, smallest first."""
    elements = parse_chemsys(chemsys)
    known = load_known(elements, ["snapshot"])
    mp20 = [p for p in known.with_energy() if p.source == "mp20"]
    hull = Hull(elements, [p.entry() for p in mp20])
    full = chemsys_of(elements)
    out = [p for p in mp20 if p.chemsys == full and p.structure is not None and len(p.structure) <= max_atoms
           and hull.e_above_hull(p.entry()) <= hull_tol]
    return sorted(out, key=lambda p: (len(p.structure), p.formula, p.material_id))


def wyckoff_checkpoints(systems: list[str], checkpoint: str | None) -> dict[str, str]:
    """System -> the Wyckoff checkpoint the loop may use there: only one whose card lists no
    training system inside the target system (it would have seen the answers). Prints why the
    generator is left out where it is."""
    from xtalforge.generators.wyckoff.generator import trained_systems_within

    out = {}
    for cs in systems:
        # binaries and elements stay visible in a leave-system-out run; the target system must not
        saw_target = cs in trained_systems_within(parse_chemsys(cs), checkpoint)
        if checkpoint and not saw_target:
            out[cs] = checkpoint
        elif checkpoint:
            print(f"note: {cs}: the Wyckoff checkpoint {checkpoint} was trained on {cs}; the generative "
                  "model is left out there")
        else:
            print(f"note: {cs}: the generative model is left out (" + (
                  "the shipped checkpoint was trained on it; " if saw_target else "") +
                  f"give --wyckoff-checkpoint from `xtalforge pretrain --exclude-chemsys {cs}` to add it)")
    return out


def method_config(method: str, chemsys: str, relaxations: int, batch: int, seed: int, out: Path, max_atoms: int,
                  max_steps: int, textbook: bool = False, wyckoff_checkpoint: str | None = None,
                  single_point: bool = True) -> dict:
    """The campaign config of one method on one system; the system's own ternaries hidden. The
    generative model joins the loop only from a checkpoint that never saw the system."""
    elements = list(parse_chemsys(chemsys))
    if method == "random":
        gens = [{"name": "random_symmetric"}]
    else:
        gens = [{"name": g} for g in SEARCH_GENERATORS]
        if wyckoff_checkpoint:
            gens.append({"name": "wyckoff", "options": {"checkpoint": wyckoff_checkpoint}})
        if textbook:
            for g in gens:
                if g["name"] == "substitution":
                    g["options"] = {"prototypes": []}
    return dict(
        name=f"{method}{'-textbook' if textbook and method != 'random' else ''}"
             f"{'-nosp' if not single_point and method != 'random' else ''}-{chemsys}-s{seed}",
        chemical_system=elements,
        max_atoms=max_atoms,
        rounds=max(1, relaxations // batch),
        proposals_per_round=60,
        seed=seed,
        update_generators=method == "loop",
        generators=gens,
        acquisition={"kind": "random" if method == "random" else "qlognei", "batch_size": batch,
                     "single_point": single_point and method != "random"},
        mlip={"workers": 2, "max_steps": max_steps},
        references={"sources": ["snapshot"], "exclude_chemsys": [chemsys]},
        tracking={"uri": f"sqlite:///{out}/mlflow.db", "experiment": "rediscovery-benchmark"},
        output_dir=str(out / "runs"),
    )


@dataclass
class RunScore:
    """One campaign scored: targets found (material id -> relaxations until the first match,
    1-based), relaxations spent, new SUN and relaxations within `near` eV/atom of the hull."""

    method: str
    chemsys: str
    seed: int
    relaxations: int = 0
    found: dict[str, int] = field(default_factory=dict)
    found_by: dict[str, str] = field(default_factory=dict)  # material id -> the generator that proposed it
    proposed: dict[str, str] = field(default_factory=dict)  # material id -> generator of an unrelaxed match in the pool
    new_sun: int = 0
    near: int = 0
    non_oracle_share: float = float("nan")  # of round wall time, rounds after the first


def run_campaign(cfg_dict: dict) -> Path:
    """Run one campaign to the end; its run folder."""
    from xtalforge.loop.campaign import Campaign
    from xtalforge.loop.executor import start_ray

    start_ray(num_cpus=2)
    with contextlib.redirect_stdout(sys.stderr):  # the campaign's own tables; stdout carries the benchmark's
        camp = Campaign.create(parse_config(cfg_dict), progress=False, echo=lambda *_: None)
        camp.run()
    return Path(camp.run_dir)


def full_hulls(cfg_dict: dict, run_dir: Path):
    """The oracle-consistent hulls of the system with nothing hidden (targets included), built
    with the campaign's own MLIP settings (the relaxed known phases are cached across runs)."""
    from xtalforge.loop.results import build_hull

    d = copy.deepcopy(cfg_dict)
    d["references"]["exclude_chemsys"] = []
    return build_hull(parse_config(d), run_dir)


def score_run(method: str, chemsys: str, seed: int, run_dir: Path, targets: list[KnownPhase], hulls,
              known_index: KnownStructures, stable_tol: float, near: float) -> RunScore:
    """Score one finished run against the targets and the full hull (`hulls` is copied)."""
    from xtalforge.loop.results import hull_entry
    from xtalforge.loop.store import CampaignStore

    score = RunScore(method, chemsys, seed)
    target_index = KnownStructures((p.material_id, p.structure) for p in targets)
    st = CampaignStore(f"sqlite:///{run_dir / 'store.db'}")
    try:
        ms = st.measurements(oracle="mlip")
        cands = {c.id: c for c in st.candidates(ids=[m.candidate_id for m in ms])}
        later = [r for _, r in sorted(st.round_metrics().items())][1:]
        pool = st.candidates()
    finally:
        st.close()
    score.relaxations = len(ms)
    for c in pool:  # did a generator put the target in the pool, relaxed by the loop or not?
        mid = target_index.match(c.structure)
        if mid and mid not in score.proposed:
            score.proposed[mid] = c.source
    total = sum(r.get("time_round_s", 0.0) for r in later)
    if total > 0:
        score.non_oracle_share = 1.0 - sum(r.get("time_oracle_s", 0.0) for r in later) / total
    hull = copy.deepcopy(hulls)
    keys = []
    for i, m in enumerate(ms, start=1):
        if m.status != Status.ok or m.relaxed is None:
            continue
        mid = target_index.match(m.relaxed)
        if mid and mid not in score.found:
            score.found[mid] = i
            score.found_by[mid] = cands[m.candidate_id].source if m.candidate_id in cands else "?"
        e = hull_entry(m)
        if e is not None:
            hull.add(m.candidate_id, e)
            keys.append(m.candidate_id)
    e_hull = hull.all_e_above_hull()
    relaxed = {m.candidate_id: m.relaxed for m in ms if m.status == Status.ok and m.relaxed is not None}
    score.near = sum(e_hull.get(k, float("inf")) <= near + 1e-9 for k in keys)
    dd = Deduplicator()
    for k in sorted(keys, key=lambda k: e_hull.get(k, float("inf"))):  # the lowest polymorph represents
        if e_hull.get(k, float("inf")) > stable_tol + 1e-9:
            break
        c = Candidate(structure=relaxed[k], source=cands[k].source if k in cands else "", round=0, id=k)
        if dd.add(c) and not known_index.match(relaxed[k]):
            score.new_sun += 1
    return score


def _ms(v: list[float], spec: str = ".2f") -> str:
    return f"{statistics.mean(v):{spec}} ± {statistics.pstdev(v):{spec}}" if v else "n/a"


def report(scores: list[RunScore], methods: list[str], systems: list[str], targets: dict[str, list[KnownPhase]],
           near: float) -> float:
    """Print the per-method tables; return the rediscovery ratio (loop + 1) / (random + 1)."""
    totals = {}
    for m in methods:
        runs = [s for s in scores if s.method == m]
        totals[m] = sum(len(s.found) for s in runs)
        print(f"\n{m}: {totals[m]} targets rediscovered in {len(runs)} runs")
        for cs in systems:
            mine = sorted((s for s in runs if s.chemsys == cs), key=lambda s: s.seed)
            per_seed = ", ".join(f"s{s.seed}: {len(s.found)}/{len(targets[cs])}" for s in mine)
            when = "; ".join(f"s{s.seed} " + ", ".join(f"{_formula(targets[cs], k)}@{n} ({s.found_by[k]})" for k, n in
                                                        sorted(s.found.items(), key=lambda t: t[1]))
                             for s in mine if s.found)
            print(f"  {cs:9s} {per_seed}" + (f"   (relaxations until found: {when})" if when else ""))
            missed = "; ".join(f"s{s.seed} " + ", ".join(f"{_formula(targets[cs], k)} ({v})" for k, v in s.proposed.items()
                                                           if k not in s.found)
                               for s in mine if set(s.proposed) - set(s.found))
            if missed:
                print(f"  {'':9s} proposed unrelaxed but never picked: {missed}")
        sun = [100.0 * s.new_sun / max(1, s.relaxations) for s in runs]
        share = [100.0 * s.near / max(1, s.relaxations) for s in runs]
        print(f"  new SUN per 100 relaxations {_ms(sun)}; within {1000 * near:.0f} meV/atom of the hull "
              f"{_ms(share, '.1f')} % of relaxations")
        overhead = [100.0 * s.non_oracle_share for s in runs if s.non_oracle_share == s.non_oracle_share]
        if overhead:
            print(f"  non-oracle share of round time from round 2: {_ms(overhead, '.1f')} %")
    loop, rnd = totals.get("loop", 0), totals.get("random", 0)
    if "no_update" in totals:
        print(f"loop/no_update = {(loop + 1) / (totals['no_update'] + 1):.2f} (totals + 1)")
    return (loop + 1) / (rnd + 1)


def _formula(phases: list[KnownPhase], mid: str) -> str:
    return next((p.formula for p in phases if p.material_id == mid), mid)


def proposal_reach(chemsys: str, max_atoms: int, targets: list[KnownPhase], n: int, seed: int,
                   known: bool, commonality: str | None = None) -> dict[str, int]:
    """Targets matched by `n` unrelaxed proposals of the substitution generator (textbook
    prototypes, or the snapshot library with `chemsys` hidden): material id -> proposals drawn
    until the first match. No relaxation: what the prototype library alone puts in reach."""
    import numpy as np

    from xtalforge.generators.registry import build_generator
    from xtalforge.types import RoundContext

    elements = parse_chemsys(chemsys)
    options = {"prototypes": "known", "exclude_chemsys": [chemsys]} if known else {"prototypes": []}
    if commonality:
        options["oxidation_commonality"] = commonality
    gen = build_generator("substitution", elements, max_atoms, options)
    ctx = RoundContext(round=0, elements=elements, max_atoms=max_atoms, rng=np.random.default_rng(seed), history=[])
    index = KnownStructures((p.material_id, p.structure) for p in targets)
    found: dict[str, int] = {}
    for i, c in enumerate(gen.propose(n, ctx), start=1):
        mid = index.match(c.structure)
        if mid and mid not in found:
            found[mid] = i
    return found


def print_targets(systems: list[str], max_atoms: int) -> dict[str, list[KnownPhase]]:
    """Print and return each system's targets."""
    out = {}
    print(f"Targets (MP-20 DFT hull, <= {max_atoms} sites, structure in the snapshot):")
    for cs in systems:
        out[cs] = rediscovery_targets(cs, max_atoms)
        listed = ", ".join(f"{p.formula} {p.spacegroup or '?'} ({len(p.structure)} sites, {p.material_id})"
                           for p in out[cs]) or "none"
        print(f"  {cs:9s} {len(out[cs])}: {listed}")
    return out


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chemsys", action="append", help="a ternary system, e.g. Sr-Ti-O; repeat for more")
    ap.add_argument("--max-atoms", type=int, default=12)
    ap.add_argument("--relaxations", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--methods", default="loop,random")
    ap.add_argument("--batch", type=int, default=6, help="relaxations per round")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--textbook", action="store_true",
                    help="substitution on the 25 textbook prototypes only (default: the whole snapshot, "
                         "target system left out)")
    ap.add_argument("--out", type=Path, default=None, help="keep run folders here (default: a temp dir)")
    ap.add_argument("--wyckoff-checkpoint", default=None, metavar="DIR",
                    help="add the generative model to loop/no_update from this checkpoint (`xtalforge pretrain "
                         "--exclude-chemsys SYS`); the shipped one saw the benchmark's systems and is left out")
    ap.add_argument("--no-single-point", dest="single_point", action="store_false",
                    help="loop and no_update without the single-point low fidelity (acquisition.single_point)")
    ap.add_argument("--substitution-commonality", choices=("low", "medium", "high"), default=None,
                    help="with --reach: SMACT's commonality filter of the substitution generator "
                         "(default: the generator's, low)")
    ap.add_argument("--reuse", action="store_true", help="score runs already finished in --out instead of rerunning")
    ap.add_argument("--targets-only", action="store_true", help="print the targets and stop")
    ap.add_argument("--reach", type=int, default=0, metavar="N",
                    help="instead of campaigns: which targets N unrelaxed substitution proposals already match, "
                         "textbook prototypes against the snapshot library (per seed)")
    ap.add_argument("--stable-tol", type=float, default=0.001,
                    help="eV/atom above the hull that still counts as on it (copies of one polymorph relaxed "
                         "with FIRE to fmax 0.1 eV/Å land within ~1 meV/atom of each other)")
    ap.add_argument("--near", type=float, default=0.05, help="eV/atom: the near-hull share's threshold")
    a = ap.parse_args(argv)
    systems_in = a.chemsys or list(SHOWCASE)
    methods = [m for m in a.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.exit(2, f"discovery.py: unknown method {', '.join(bad)} (have: {', '.join(METHODS)})\n")
    try:
        systems = [chemsys_of(parse_chemsys(cs)) for cs in systems_in]
    except KnownMaterialsError as err:
        ap.exit(2, f"discovery.py: {err}\n")
    if any(len(cs.split("-")) != 3 for cs in systems):
        ap.exit(2, "discovery.py: give ternary systems, e.g. --chemsys Sr-Ti-O\n")
    targets = print_targets(systems, a.max_atoms)
    wyckoff = wyckoff_checkpoints(systems, a.wyckoff_checkpoint)
    if a.targets_only:
        return float("nan")
    if a.reach:
        print(f"\nTargets matched by {a.reach} unrelaxed substitution proposals (proposals until the first match):")
        for cs in systems:
            for known in (False, True):
                per_seed = []
                for seed in range(a.seeds):
                    found = proposal_reach(cs, a.max_atoms, targets[cs], a.reach, seed, known,
                                           a.substitution_commonality)
                    per_seed.append(f"s{seed} {len(found)}/{len(targets[cs])}" + (" (" + ", ".join(
                        f"{_formula(targets[cs], k)}@{v}" for k, v in sorted(found.items(), key=lambda t: t[1])) + ")"
                        if found else ""))
                print(f"  {cs:9s} {'known (SAPS)' if known else 'builtin':12s} " + "; ".join(per_seed))
        return float("nan")
    out = a.out or Path(tempfile.mkdtemp(prefix="xf-rediscovery-"))
    out.mkdir(parents=True, exist_ok=True)
    scores: list[RunScore] = []
    for cs in systems:
        hulls = known_index = None
        for seed in range(a.seeds):
            for m in methods:
                cfg = method_config(m, cs, a.relaxations, a.batch, seed, out, a.max_atoms, a.max_steps, a.textbook,
                                    wyckoff.get(cs), a.single_point)
                run_dir = out / "runs" / cfg["name"]
                if not (a.reuse and (run_dir / "store.db").is_file()):
                    t0 = time.perf_counter()
                    run_dir = run_campaign(cfg)
                    print(f"# {cfg['name']}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                if hulls is None:
                    hulls = full_hulls(cfg, run_dir)
                    known_index = KnownStructures(hulls.known.with_structure())
                    for e in (hulls.relaxed.entries if hulls.relaxed is not None else ()):
                        known_index.add(str(e.entry_id), e.structure)
                scores.append(score_run(m, cs, seed, run_dir, targets[cs], hulls, known_index, a.stable_tol, a.near))
    print(f"\nRediscovery: {a.relaxations} relaxations per run ({a.batch} per round), {a.seeds} seeds, "
          f"max {a.max_atoms} atoms, substitution prototypes: {'textbook' if a.textbook else 'known (SAPS)'}, "
          f"single-point fidelity: {'on' if a.single_point else 'off'}")
    ratio = report(scores, methods, systems, targets, a.near)
    print(f"run folders: {out}")
    print(f"rediscovery_ratio={ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
