"""The shipped Wyckoff generator (pre-trained on MP, <= 20 atoms) on its held-out test split.

    nice -n 10 .venv/bin/python benchmarks/wyckoff_pretrained.py --samples 1000 --csp 10 --relax

Unconditional samples (any element of the vocabulary, at most 20 atoms, no charge-balance
preference, temperature 1), as the CDVAE / DiffCSP / CrystalFormer generation benchmarks draw them:
structural validity (no two atoms closer than 0.5 Å; as `xtalforge sample` and the campaign
draw, with the sampler's distance-aware coordinates, and beside it the model's own draws without
them), compositional validity (SMACT
`smact_validity` with its defaults, the metric those papers quote; the stricter
`generators.compositions.is_charge_balanced` alongside), uniqueness (StructureMatcher groups
within a formula), novelty (no StructureMatcher match among the training structures of the same
reduced formula), sampling speed. Crystal structure prediction on the test split: for `--csp`
test compositions (seeded draw, at most `--csp-max-atoms` atoms per formula unit x Z), 20 samples
each with the composition mask; share of samples matching a test structure of that composition
(StructureMatcher defaults), and share of compositions with at least one match (match@20), on
the raw samples and, with --relax, after CHGNet relaxation (batched, FIRE, fmax 0.1 eV/Å,
--relax-steps steps).
The split is recomputed from the checkpoint's card (seed, exclusions), so no test composition
was seen in training.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from xtalforge.loop.dedup import structure_classes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mp_reference" / "mp_structures.csv.gz"


def _valid(q, tables, min_distance) -> bool:
    from xtalforge.generators.wyckoff.encoding import decode

    try:
        return min_distance(decode(q, tables)) >= 0.5
    except Exception:  # a degenerate lattice
        return False


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="default: the shipped one")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--csp", type=int, default=10, help="test compositions for the CSP match rate (0: skip)")
    ap.add_argument("--csp-samples", type=int, default=20)
    ap.add_argument("--csp-max-atoms", type=int, default=12, help="largest test cell drawn for CSP (relaxation cost)")
    ap.add_argument("--relax", action="store_true", help="CHGNet-relax the CSP samples before matching")
    ap.add_argument("--relax-steps", type=int, default=300, help="FIRE steps at most per relaxation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Composition, Element, Structure
    from smact.screening import smact_validity

    from xtalforge.generators.compositions import is_charge_balanced
    from xtalforge.generators.wyckoff.drawing import draw
    from xtalforge.generators.wyckoff.encoding import decode
    from xtalforge.generators.wyckoff.model import Constraints
    from xtalforge.generators.wyckoff.mp_data import read_mp
    from xtalforge.generators.wyckoff.sampler import sample
    from xtalforge.generators.wyckoff.tables import wyckoff_tables
    from xtalforge.generators.wyckoff.train import load_checkpoint, read_card, shipped_checkpoint, torch_threads
    from xtalforge.structure import min_distance

    t_all = time.perf_counter()
    folder = Path(a.checkpoint) if a.checkpoint else shipped_checkpoint()
    card = read_card(folder)["info"]
    model = load_checkpoint(folder)
    tables = wyckoff_tables()
    split = card["split"]
    entries, _ = read_mp(a.data, max_atoms=card["data"]["max_atoms"], seed=split["seed"],
                         fractions=tuple(split["fractions"]), exclude_chemsys=card["data"]["excluded_chemsys"])
    train_by_formula: dict[str, list[str]] = defaultdict(list)
    test_by_formula: dict[str, list] = defaultdict(list)
    for e in entries:
        if e.split == "train":
            train_by_formula[e.reduced_formula].append(e.cif)
        elif e.split == "test":
            test_by_formula[e.reduced_formula].append(e)
    assert not set(train_by_formula) & set(test_by_formula), "split leaks a composition"
    matcher = StructureMatcher()
    gen = torch.Generator().manual_seed(a.seed)

    # -- unconditional generation -------------------------------------------------------------
    cons = Constraints(max_atoms=card["data"]["max_atoms"])
    t = time.perf_counter()
    with torch_threads(a.threads):
        seqs, logp = sample(model, a.samples, cons, gen)
    t_sample = time.perf_counter() - t
    with torch_threads(a.threads):
        raw_seqs, _ = sample(model, a.samples, cons, torch.Generator().manual_seed(a.seed), min_distance=None)
    raw_valid = sum(_valid(q, tables, min_distance) for q in raw_seqs) / a.samples
    t = time.perf_counter()
    structures = []
    for q in seqs:
        try:
            structures.append(decode(q, tables))
        except Exception:
            structures.append(None)
    t_decode = time.perf_counter() - t
    ok = [s for s in structures if s is not None]
    valid = [s for s in ok if min_distance(s) >= 0.5]
    struct_valid = len(valid) / a.samples
    comp_smact = sum(bool(smact_validity(s.composition)) for s in ok) / a.samples
    comp_cb = sum(is_charge_balanced(s.composition) for s in ok) / a.samples
    t = time.perf_counter()
    prims = [s.get_primitive_structure() for s in valid]
    n_unique = structure_classes(prims, matcher)
    novel = 0
    cache: dict[str, list] = {}
    for s in prims:
        f = s.composition.reduced_formula
        if f not in cache:
            cache[f] = [Structure.from_str(c, fmt="cif") for c in train_by_formula.get(f, [])]
        if not any(matcher.fit(s, r) for r in cache[f]):
            novel += 1
    t_match = time.perf_counter() - t
    in_train = sum(s.composition.reduced_formula in train_by_formula for s in prims)
    sgs = np.bincount([q.sg for q in seqs], minlength=231)
    top_sg = ", ".join(f"{g}:{sgs[g] / a.samples:.0%}" for g in np.argsort(sgs)[::-1][:4])
    sizes = [len(s) for s in prims]

    rows = [
        ("checkpoint", f"{folder} ({card['size']['parameters'] / 1e6:.2f} M parameters; trained "
                       f"{card['training']['minutes']} min, {card['training']['epochs_run']} epochs)"),
        ("split (structures)", f"{split['structures']}; compositions {split['compositions']}"),
        ("NLL, nats/crystal", f"val {card['metrics'].get('best_val_nll')}, test {card['metrics'].get('test_nll')}"),
        ("samples", f"{a.samples} unconditional at T=1 (<= {cons.max_atoms} atoms); top space groups {top_sg}; "
                    f"median {np.median(sizes) if sizes else 0:.0f} atoms"),
        ("structural validity (>= 0.5 Å)", f"{struct_valid:.1%}"),
        ("  the model's own draws (no redraws)", f"{raw_valid:.1%}"),
        ("compositional validity (smact_validity)", f"{comp_smact:.1%}"),
        ("  is_charge_balanced, ICSD-24 medium", f"{comp_cb:.1%}"),
        ("uniqueness (of valid)", f"{n_unique / max(1, len(prims)):.1%}"),
        ("novelty vs training set (of valid)", f"{novel / max(1, len(prims)):.1%}  "
                                                f"(formula seen in training: {in_train / max(1, len(prims)):.1%})"),
        ("sampling speed", f"{a.samples / t_sample:.0f} crystals/s sequences; {a.samples / t_decode:.0f}/s decode "
                           f"({a.threads} thread)"),
        ("matching time", f"{t_match:.0f} s"),
    ]

    # -- crystal structure prediction on test compositions ------------------------------------
    if a.csp > 0:
        rng = np.random.default_rng(a.seed)
        formulas = sorted(f for f, es in test_by_formula.items()
                          if min(e.nsites for e in es) <= a.csp_max_atoms and len(Composition(f).elements) >= 2)
        pick = [formulas[i] for i in rng.permutation(len(formulas))[: a.csp]]
        relaxer = None
        if a.relax:
            from xtalforge.oracles.mlip.batched import relax_batched
            from xtalforge.oracles.mlip.relax import load_chgnet

            chgnet = load_chgnet(threads=a.threads)

            def relaxer(structures: list) -> list:  # one composition's samples share model calls
                return relax_batched(chgnet, structures, fmax=0.1, max_steps=a.relax_steps, max_batch=20)
        raw_hits = relaxed_hits = drawn = 0
        any_raw = any_relaxed = 0
        t_csp = time.perf_counter()
        t_relax = 0.0
        lines = []
        for f in pick:
            comp = Composition(f)
            targets = [Structure.from_str(e.cif, fmt="cif") for e in test_by_formula[f]]
            cz = {Element(str(el)).Z: int(c) for el, c in comp.items()}
            ccons = Constraints(elements=tuple(sorted(cz)), max_atoms=card["data"]["max_atoms"])
            with torch_threads(a.threads):
                got, _ = draw(model, a.csp_samples, ccons, tables, gen, composition=cz, prefer_balanced=False,
                              oversample=6)
            drawn += len(got)
            h_raw = sum(any(matcher.fit(d.structure, t) for t in targets) for d in got)
            h_rel = 0
            if relaxer is not None:
                t0 = time.perf_counter()
                for r in relaxer([d.structure for d in got]):
                    if r.ok and any(matcher.fit(r.structure, t) for t in targets):
                        h_rel += 1
                t_relax += time.perf_counter() - t0
            raw_hits += h_raw
            relaxed_hits += h_rel
            any_raw += h_raw > 0
            any_relaxed += h_rel > 0
            lines.append(f"    {f:<14} {len(targets)} test polymorph(s); {len(got):>2} drawn; raw {h_raw:>2}"
                         + (f", relaxed {h_rel:>2}" if relaxer else ""))
        n_req = a.csp * a.csp_samples
        rows += [
            ("CSP compositions", f"{len(pick)} from the test split (<= {a.csp_max_atoms} atoms in the smallest cell), "
                                 f"{a.csp_samples} samples each; {drawn}/{n_req} drawn valid"),
            ("CSP match, per sample (raw)", f"{raw_hits / max(1, n_req):.1%}; match@{a.csp_samples} "
                                            f"{any_raw / max(1, len(pick)):.0%}"),
        ]
        if relaxer is not None:
            rows.append(("CSP match, per sample (CHGNet-relaxed)",
                         f"{relaxed_hits / max(1, n_req):.1%}; match@{a.csp_samples} "
                         f"{any_relaxed / max(1, len(pick)):.0%}; relax {t_relax / 60:.1f} min"))
        rows.append(("CSP time", f"{(time.perf_counter() - t_csp) / 60:.1f} min"))
    rows.append(("total wall time", f"{(time.perf_counter() - t_all) / 60:.1f} min"))

    w = max(len(k) for k, _ in rows)
    print(f"\nShipped Wyckoff generator on the MP test split ({a.data})")
    print("-" * (w + 70))
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if a.csp > 0:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
