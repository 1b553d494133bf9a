"""Pre-training by maximum likelihood, data loading and checkpoints.

A checkpoint is a folder with `model.pt` (a state_dict of CPU tensors, loaded with
`weights_only=True`, so no code is ever unpickled) and `model.json` (the network size and a
summary of what it was trained on).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xtalforge.generators.wyckoff.encoding import CrystalSeq, encode
from xtalforge.generators.wyckoff.model import ModelConfig, WyckoffTransformer
from xtalforge.generators.wyckoff.sampler import collate
from xtalforge.generators.wyckoff.tables import WyckoffTables, wyckoff_tables

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate (Adam), cosine decay to lr/20
    weight_decay: float = 1e-4
    val_fraction: float = 0.05
    seed: int = 0
    threads: int = 1  # small matrices: more threads mostly add contention
    max_seconds: float | None = None  # wall-clock budget; the schedule follows whichever ends first


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (spglib prints 'ssm_get_exact_positions failed' per structure)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def read_cif_csv(path: str | Path) -> list:
    """Structures from a CSV with a `cif` column (the CDVAE format: perov_5, carbon_24, mp_20)."""
    import pandas as pd
    from pymatgen.core import Structure

    df = pd.read_csv(path, index_col=0)
    if "cif" not in df.columns:
        raise ValueError(f"{path}: no 'cif' column (have: {', '.join(map(str, df.columns))})")
    return [Structure.from_str(c, fmt="cif") for c in df["cif"]]


def encode_all(structures: Iterable, tables: WyckoffTables, tol: float = 0.01, max_sites: int | None = None,
               progress: bool = False) -> tuple[list[CrystalSeq], int]:
    """Encode structures, skipping those PyXtal cannot analyse or with more than max_sites
    orbits. Returns the sequences and the number skipped."""
    from tqdm import tqdm

    structures = list(structures)
    out, skipped = [], 0
    for s in tqdm(structures, desc="encode", disable=not progress, mininterval=1.0):
        with quiet_stderr():  # per structure, so the progress bar itself still shows
            q = encode(s, tables, tol=tol)
        if q is None or (max_sites is not None and q.n_sites > max_sites):
            skipped += 1
        else:
            out.append(q)
    return out, skipped


def cached_encodings(path: str | Path, tables: WyckoffTables, tol: float = 0.01, cache_dir: str | Path | None = None,
                     progress: bool = False) -> list[CrystalSeq]:
    """Encode a CIF CSV once; later calls read a JSON cache keyed by the file's size, mtime and tol."""
    path = Path(path)
    st = path.stat()
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "xtalforge" / "wyckoff")
    key = f"{path.stem}-{st.st_size}-{int(st.st_mtime)}-{tol}.json"
    cache = cache_dir / key
    if cache.is_file():
        return [CrystalSeq.from_json(d) for d in json.loads(cache.read_text())]
    seqs, skipped = encode_all(read_cif_csv(path), tables, tol=tol, progress=progress)
    if skipped:
        log.info("%s: %d structures could not be encoded", path, skipped)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([q.to_json() for q in seqs]))
    return seqs


def nll_loss(model: WyckoffTransformer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood per crystal (nats), and its parts for logging."""
    parts = model.log_prob(batch, parts=True)
    total = sum(parts.values())
    return -total.mean(), {f"nll_{k}": float(-v.mean()) for k, v in parts.items()}


def pretrain(seqs: list[CrystalSeq], model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None,
             model: WyckoffTransformer | None = None, progress: bool = False,
             on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> tuple[WyckoffTransformer, dict]:
    """Fit a model to `seqs` by maximum likelihood. With a held-out split (>= 40 structures) the
    weights of the epoch with the lowest held-out NLL are kept. Returns the model and the last
    epoch's metrics (plus best_val_nll and best_epoch)."""
    from tqdm import tqdm

    cfg = cfg or TrainConfig()
    tables = wyckoff_tables()
    if model is None:
        mc = model_cfg or ModelConfig(max_sites=max(q.n_sites for q in seqs))
        seqs = [q for q in seqs if q.n_sites <= mc.max_sites]
        torch.manual_seed(cfg.seed)
        model = WyckoffTransformer(mc, tables)
    else:
        seqs = [q for q in seqs if q.n_sites <= model.cfg.max_sites]
    if not seqs:
        raise ValueError("no training structures fit the model's max_sites")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(seqs))
    n_val = int(len(seqs) * cfg.val_fraction) if len(seqs) >= 40 else 0
    val = [seqs[i] for i in order[:n_val]]
    train = [seqs[i] for i in order[n_val:]]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    start = time.perf_counter()

    def progress_frac(step: int) -> float:
        # cosine decay over steps, or over the time budget when that runs out sooner
        f = step / total
        if cfg.max_seconds:
            f = max(f, (time.perf_counter() - start) / cfg.max_seconds)
        return min(1.0, f)

    metrics: dict[str, float] = {}
    bar = tqdm(range(cfg.epochs), desc="pretrain", disable=not progress, mininterval=1.0)
    step = 0
    best: tuple[float, int, dict] | None = None  # (held-out NLL, epoch, weights): early stopping
    with torch_threads(cfg.threads):
        for epoch in bar:
            t0 = time.perf_counter()
            model.train()
            perm = rng.permutation(len(train))
            sums: dict[str, float] = {}
            seen = 0
            for k in range(steps_per_epoch):
                frac = progress_frac(step)
                for grp in opt.param_groups:
                    grp["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
                idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
                batch = collate([train[i] for i in idx], model.cfg.max_sites)
                loss, parts = nll_loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                seen += len(idx)
                for key, v in {"train_nll": float(loss), **parts}.items():
                    sums[key] = sums.get(key, 0.0) + v * len(idx)
            metrics = {k: v / seen for k, v in sums.items()}
            if val:
                model.eval()
                with torch.no_grad():
                    metrics["val_nll"] = float(nll_loss(model, collate(val, model.cfg.max_sites))[0])
                if best is None or metrics["val_nll"] < best[0]:
                    best = (metrics["val_nll"], epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
            metrics["lr"] = opt.param_groups[0]["lr"]
            metrics["epoch_s"] = time.perf_counter() - t0
            metrics["epochs"] = float(epoch + 1)
            bar.set_postfix(nll=f"{metrics['train_nll']:.2f}", val=f"{metrics.get('val_nll', float('nan')):.2f}")
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if progress_frac(step) >= 1.0:
                break
    if best is not None:  # keep the weights that generalised best, not the last ones
        model.load_state_dict(best[2])
        metrics.update(best_val_nll=best[0], best_epoch=float(best[1] + 1))
    model.eval()
    return model, metrics


def save_checkpoint(model: WyckoffTransformer, folder: str | Path, info: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.pt")
    (folder / "model.json").write_text(json.dumps({"model": model.cfg.to_json(), "info": info or {}}, indent=2))
    return folder


def load_checkpoint(folder: str | Path) -> WyckoffTransformer:
    folder = Path(folder)
    if not (folder / "model.pt").is_file() or not (folder / "model.json").is_file():
        raise FileNotFoundError(f"{folder}: not a Wyckoff checkpoint (model.pt and model.json)")
    meta = json.loads((folder / "model.json").read_text())
    model = WyckoffTransformer(ModelConfig(**meta["model"]), wyckoff_tables())
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model


__all__ = ["TrainConfig", "cached_encodings", "encode_all", "load_checkpoint", "nll_loss", "pretrain",
           "read_cif_csv", "save_checkpoint", "torch_threads"]
