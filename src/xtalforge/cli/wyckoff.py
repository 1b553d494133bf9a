"""`xtalforge pretrain DATA`: pre-train the Wyckoff generator on known crystals.

DATA is either the Materials Project table `mp_structures.csv.gz` (columns material_id,
reduced_formula, nsites, cif), split train / val / test by reduced composition (seeded, so
polymorphs never straddle two splits), or a CDVAE-style CSV with a `cif` column (random
held-out share). `--exclude-chemsys Ba-Zr-O` leaves a system's compounds out of training, for
leave-system-out benchmarks. Writes a checkpoint folder (model.pt, model.json with the card,
CARD.md) and one MLflow run with the training curve. Imports stay inside the command so that
building the CLI parser does not load torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from xtalforge.cli.errors import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train the Wyckoff generator on known crystals (MP table or CIF CSV)")
    p.add_argument("data", help="mp_structures.csv.gz (split by composition) or a CSV with a 'cif' column")
    p.add_argument("--out", default="runs/wyckoff/model", help="checkpoint folder (default: runs/wyckoff/model)")
    p.add_argument("--model-size", default="small", choices=["tiny", "small", "base"])
    p.add_argument("--max-sites", type=int, help="most Wyckoff sites per crystal (default: the data's maximum)")
    p.add_argument("--max-atoms", type=int, default=20, help="MP table: most atoms per cell (default 20, as MP-20)")
    p.add_argument("--exclude-chemsys", action="append", default=[], metavar="A-B-C",
                   help="leave this system's compounds (and its subsystems') out of training; repeatable")
    p.add_argument("--split-seed", type=int, default=0, help="MP table: seed of the split by composition")
    p.add_argument("--patience", type=int, help="stop after this many epochs without a lower held-out NLL")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--minutes", type=float, help="wall-clock budget; training stops when either runs out")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--symprec", type=float, default=0.01, help="symmetry tolerance in Å for encoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (small models run best on 1)")
    p.add_argument("--cache-dir", help="where encoded data sets are cached (default: ~/.cache/xtalforge/wyckoff)")
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    p.add_argument("--experiment", default="xtalforge-pretrain")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_pretrain)


def _is_mp_table(path: Path) -> bool:
    import pandas as pd

    cols = set(pd.read_csv(path, nrows=0).columns)
    return {"material_id", "reduced_formula", "nsites", "cif"} <= cols


def cmd_pretrain(a: argparse.Namespace) -> int:
    from xtalforge.generators.wyckoff.generator import SIZES
    from xtalforge.generators.wyckoff.mp_data import normalise_chemsys
    from xtalforge.generators.wyckoff.tables import wyckoff_tables
    from xtalforge.generators.wyckoff.train import TrainConfig, mean_nll, pretrain, save_checkpoint

    data = Path(a.data)
    if not data.is_file():
        return fail(f"no such file {data}")
    try:
        excluded = sorted({normalise_chemsys(c) for c in a.exclude_chemsys})
    except ValueError as err:
        return fail(f"--exclude-chemsys: {err}")
    progress = not a.no_progress
    tables = wyckoff_tables()
    try:
        if _is_mp_table(data):
            split, card = _mp_split(data, tables, a, excluded, progress)
        else:
            split, card = _cif_csv(data, tables, a, excluded, progress)
    except (ValueError, KeyError, OSError) as err:
        return fail(f"{data}: {err}")
    seqs, val, test = split["train"], split.get("val"), split.get("test", [])
    if not seqs:
        return fail(f"{data}: no structure could be encoded")
    max_sites = a.max_sites or max(q.n_sites for q in seqs)
    mcfg = SIZES[a.model_size](max_sites)
    tcfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, threads=a.threads,
                       max_seconds=a.minutes * 60 if a.minutes else None, patience=a.patience)
    tracker = _Tracking(a.tracking_uri, a.experiment, Path(a.out))
    n_fit = sum(q.n_sites <= max_sites for q in seqs)
    tracker.start(f"pretrain-{data.name.split('.')[0]}", {"data": str(data.resolve()), "structures": n_fit,
                                                         "model": mcfg.to_json(), "train": vars(tcfg)})
    print(f"pre-training a {a.model_size} model on {n_fit} structures from {data} -> {a.out}")
    status = "FAILED"
    t0 = time.perf_counter()
    try:
        model, metrics = pretrain(seqs, mcfg, tcfg, progress=progress, on_epoch=tracker.log, val=val)
        minutes = (time.perf_counter() - t0) / 60
        if test:
            metrics["test_nll"] = mean_nll(model, test)
        card.update(_card_common(model, metrics, tcfg, minutes, a, seqs))
        folder = save_checkpoint(model, a.out, card)
        (folder / "CARD.md").write_text(card_markdown(card))
        tracker.artifacts(folder)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    kept = (f"held-out NLL {metrics['best_val_nll']:.2f} at epoch {int(metrics['best_epoch'])}, kept"
            if "best_val_nll" in metrics else f"train NLL {metrics['train_nll']:.2f}")
    if "test_nll" in metrics:
        kept += f"; test NLL {metrics['test_nll']:.2f}"
    print(f"checkpoint: {folder} ({kept}; nats/crystal; {minutes:.1f} min); MLflow run {tracker.run_id} at {tracker.uri}")
    print(f"use it in a campaign: generators: [{{name: wyckoff, options: {{checkpoint: {folder}}}}}]")
    return 0


def _hidden(seq, excluded: list[str]) -> bool:
    from pymatgen.core import Element

    els = {Element.from_Z(int(z)).symbol for z in seq.species}
    return len(els) >= 2 and any(els <= set(c.split("-")) for c in excluded)


def _mp_split(data: Path, tables, a: argparse.Namespace, excluded: list[str], progress: bool) -> tuple[dict, dict]:
    """Train / val / test sequences of the MP table, split by reduced composition, and the card's data part."""
    from xtalforge.generators.wyckoff.mp_data import ATTRIBUTION, DEFAULT_FRACTIONS, SPLITS, encode_entries, read_mp

    entries, dropped = read_mp(data, max_atoms=a.max_atoms, seed=a.split_seed, exclude_chemsys=excluded)
    st = data.stat()
    cache_dir = Path(a.cache_dir or Path.home() / ".cache" / "xtalforge" / "wyckoff")
    cache = cache_dir / f"mp-{data.name.split('.')[0]}-{st.st_size}-{int(st.st_mtime)}-{a.symprec}.json"
    seqs = encode_entries(entries, tables, tol=a.symprec, cache=cache, progress=progress)
    split: dict[str, list] = {s: [] for s in SPLITS}
    systems: dict[str, set[str]] = {s: set() for s in SPLITS}
    formulas: dict[str, set[str]] = {s: set() for s in SPLITS}
    for e in entries:
        q = seqs.get(e.material_id)
        if q is None:
            continue
        split[e.split].append(q)
        systems[e.split].add(e.chemsys)
        formulas[e.split].add(e.reduced_formula)
    card = {
        "data": {"file": data.name, "source": "Materials Project structures (mp_structures.csv.gz)",
                 "attribution": ATTRIBUTION, "max_atoms": a.max_atoms, "rows": len(entries) + len(dropped),
                 "excluded_chemsys": excluded, "excluded_structures": len(dropped),
                 "not_encoded": len(entries) - len(seqs), "symprec": a.symprec},
        "split": {"method": "by reduced composition: sha256('seed:reduced_formula') -> [0, 1) -> train/val/test",
                  "seed": a.split_seed, "fractions": list(DEFAULT_FRACTIONS),
                  "structures": {s: len(split[s]) for s in SPLITS},
                  "compositions": {s: len(formulas[s]) for s in SPLITS}},
        "chemical_systems": sorted(systems["train"]),
    }
    print(f"{data.name}: {len(entries)} structures with <= {a.max_atoms} atoms"
          f"{f' ({len(dropped)} left out for {excluded})' if excluded else ''}; encoded "
          + ", ".join(f"{s} {len(split[s])}" for s in SPLITS))
    return split, card


def _cif_csv(data: Path, tables, a: argparse.Namespace, excluded: list[str], progress: bool) -> tuple[dict, dict]:
    from collections import Counter

    from pymatgen.core import Element

    from xtalforge.generators.wyckoff.train import TrainConfig, cached_encodings

    seqs = cached_encodings(data, tables, tol=a.symprec, cache_dir=a.cache_dir, progress=progress)
    kept = [q for q in seqs if not _hidden(q, excluded)]
    systems = Counter("-".join(sorted({Element.from_Z(int(z)).symbol for z in q.species})) for q in kept)
    card = {"data": {"file": data.name, "excluded_chemsys": excluded, "excluded_structures": len(seqs) - len(kept),
                     "symprec": a.symprec},
            "split": {"method": f"random held-out share of {TrainConfig().val_fraction} (seed {a.seed})"},
            "chemical_systems": sorted(systems)}
    return {"train": kept}, card


def _card_common(model, metrics: dict, tcfg, minutes: float, a: argparse.Namespace, train: list) -> dict:
    from pymatgen.core import Element

    elements = sorted({Element.from_Z(int(z)).symbol for q in train for z in q.species}, key=lambda s: Element(s).Z)
    return {
        "elements": elements,
        "size": {"parameters": sum(p.numel() for p in model.parameters()), "model_size": a.model_size,
                 "config": model.cfg.to_json()},
        "training": {"epochs_run": int(metrics.get("epochs", 0)), "best_epoch": int(metrics.get("best_epoch", 0)),
                     "minutes": round(minutes, 1), "lr": tcfg.lr, "batch_size": tcfg.batch_size, "seed": tcfg.seed,
                     "threads": tcfg.threads, "patience": tcfg.patience, "max_minutes": a.minutes,
                     "command": "xtalforge pretrain " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["pretrain"]
                     else None},
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()
                    if k in ("train_nll", "best_val_nll", "val_nll", "test_nll")} | {"unit": "nats per crystal"},
    }


def card_markdown(card: dict) -> str:
    """A human-readable summary of a checkpoint's card (the full card is model.json)."""
    d, s, m = card.get("data", {}), card.get("split", {}), card.get("metrics", {})
    size, tr = card.get("size", {}), card.get("training", {})
    lines = ["# Wyckoff generator checkpoint", "",
             f"- Data: {d.get('file')} ({d.get('source', 'CIF CSV')}), at most {d.get('max_atoms', '?')} atoms; "
             f"left out: {', '.join(d.get('excluded_chemsys') or []) or 'nothing'}",
             f"- Attribution: {d.get('attribution', 'see the data source')}",
             f"- Split: {s.get('method')}; seed {s.get('seed', '-')}; structures {s.get('structures', '-')}; "
             f"compositions {s.get('compositions', '-')}",
             f"- Size: {size.get('parameters')} parameters ({size.get('model_size')}: {size.get('config')})",
             f"- Training: {tr.get('epochs_run')} epochs (best {tr.get('best_epoch')}), {tr.get('minutes')} min, "
             f"{tr.get('threads')} CPU thread(s); command: `{tr.get('command')}`",
             "- Metrics (nats per crystal): " + ", ".join(f"{k} {v}" for k, v in m.items() if k != "unit"),
             f"- Element vocabulary ({len(card.get('elements', []))}): {' '.join(card.get('elements', []))}",
             f"- Chemical systems in training: {len(card.get('chemical_systems', []))} (listed in model.json)", ""]
    return "\n".join(lines)


class _Tracking:
    """The pre-training run in MLflow (MlflowClient; a local SQLite store by default)."""

    def __init__(self, uri: str, experiment: str, out: Path):
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            db = Path(uri[len("sqlite:///"):]).resolve()  # absolute, so any cwd finds the same store
            db.parent.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{db}"
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            loc = None
            if uri.startswith("sqlite"):
                root = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
                root.mkdir(parents=True, exist_ok=True)
                loc = root.resolve().as_uri()
            self.exp_id = self.client.create_experiment(experiment, artifact_location=loc)
        else:
            self.exp_id = exp.experiment_id
        self.run_id = ""

    def start(self, name: str, params: dict) -> None:
        self.run_id = self.client.create_run(self.exp_id, run_name=name).info.run_id
        flat = {}
        for k, v in params.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[
            Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v)) for k, v in flat.items()])

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, epoch) for k, v in metrics.items()])

    def artifacts(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder), "checkpoint")

    def finish(self, status: str) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)
