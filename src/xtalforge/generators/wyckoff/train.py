"""Pre-training by maximum likelihood, data loading and checkpoints.

A checkpoint is a folder with `model.pt` (a state_dict of CPU tensors, loaded with
`weights_only=True`, so no code is ever unpickled) and `model.json` (the network size, the
SHA-256 of model.pt and a card: what it was trained on, the split, metrics, the element
vocabulary and chemical systems). A checkpoint whose weights do not match their recorded hash,
that torch cannot read as plain tensors, or whose tensors do not fit the recorded network is
refused with a `CheckpointError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    patience: int | None = None  # stop after this many epochs without a lower held-out NLL


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupted, tampered with, or for another network."""


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
    if cache_dir is None:
        from xtalforge.paths import cache_root

        cache_dir = cache_root() / "wyckoff"
    cache_dir = Path(cache_dir)
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
    return -total.mean(), {f"nll_{k}": float(-v.detach().mean()) for k, v in parts.items()}


def length_batches(seqs: list[CrystalSeq], batch_size: int, rng: np.random.Generator | None = None) -> list[list[int]]:
    """Index batches of sequences of similar length (a batch is padded to its longest member,
    and most crystals have 2-4 orbits), in random order when `rng` is given."""
    keys = np.array([q.n_sites for q in seqs], float)
    if rng is not None:  # shuffle within a length, keep lengths together
        keys = keys + rng.random(len(seqs)) * 0.5
    order = np.argsort(keys, kind="stable")
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@torch.no_grad()
def mean_nll(model: WyckoffTransformer, seqs: list[CrystalSeq], batch_size: int = 256) -> float:
    """Mean negative log-likelihood per crystal (nats) of `seqs` (those within max_sites)."""
    seqs = [q for q in seqs if q.n_sites <= model.cfg.max_sites]
    model.eval()
    total = 0.0
    for idx in length_batches(seqs, batch_size):
        total += float(-model.log_prob(collate([seqs[i] for i in idx], model.cfg.max_sites)).sum())
    return total / max(1, len(seqs))


def pretrain(seqs: list[CrystalSeq], model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None,
             model: WyckoffTransformer | None = None, progress: bool = False,
             on_epoch: Callable[[int, dict[str, float]], None] | None = None,
             val: list[CrystalSeq] | None = None) -> tuple[WyckoffTransformer, dict]:
    """Fit a model to `seqs` by maximum likelihood. The held-out set is `val` when given (a
    split made by the caller, e.g. by composition), else a random `val_fraction` of `seqs` when
    there are at least 40. The weights of the epoch with the lowest held-out NLL are kept, and
    with `cfg.patience` training stops once that many epochs passed without improvement.
    Returns the model and the last epoch's metrics (plus best_val_nll and best_epoch)."""
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
    if val is not None:
        train = seqs
        val = [q for q in val if q.n_sites <= model.cfg.max_sites]
    else:
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
            sums: dict[str, float] = {}
            seen = 0
            for idx in length_batches(train, cfg.batch_size, rng):
                frac = progress_frac(step)
                for grp in opt.param_groups:
                    grp["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
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
                metrics["val_nll"] = mean_nll(model, val)
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
            if cfg.patience is not None and best is not None and epoch - best[1] >= cfg.patience:
                log.info("early stop at epoch %d: held-out NLL last improved at epoch %d", epoch + 1, best[1] + 1)
                metrics["early_stopped"] = 1.0
                break
    if best is not None:  # keep the weights that generalised best, not the last ones
        model.load_state_dict(best[2])
        metrics.update(best_val_nll=best[0], best_epoch=float(best[1] + 1))
    model.eval()
    return model, metrics


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: WyckoffTransformer, folder: str | Path, info: dict | None = None) -> Path:
    """Write model.pt (CPU tensors only) and model.json (network size, SHA-256 of model.pt, `info`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / "model.pt")
    meta = {"format": "xtalforge-wyckoff-1", "model": model.cfg.to_json(),
            "sha256": _sha256(folder / "model.pt"), "info": info or {}}
    (folder / "model.json").write_text(json.dumps(meta, indent=1))
    return folder


def read_card(folder: str | Path) -> dict:
    """model.json of a checkpoint folder (network size, hash, card); CheckpointError if unreadable."""
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a checkpoint folder holds model.pt and model.json "
                              "(make one with `xtalforge pretrain`)")
    try:
        meta = json.loads(path.read_text())
        ModelConfig(**meta["model"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a Wyckoff checkpoint description ({type(err).__name__}: {err})") from None
    return meta


def load_checkpoint(folder: str | Path) -> WyckoffTransformer:
    """The model in a checkpoint folder, refusing (CheckpointError, naming the file) weights whose
    hash differs from the recorded one, that are not plain tensors, or that do not fit the network."""
    folder = Path(folder)
    meta = read_card(folder)
    pt = folder / "model.pt"
    if not pt.is_file():
        raise CheckpointError(f"{pt}: missing")
    want = meta.get("sha256")
    if want and _sha256(pt) != want:  # checked before torch reads a single byte
        raise CheckpointError(f"{pt}: SHA-256 differs from the one in model.json; the file was changed or damaged")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as err:  # weights-only unpickling refuses anything but tensors and containers
        raise CheckpointError(f"{pt}: not a plain tensor file ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{pt}: not a dict of tensors")
    model = WyckoffTransformer(ModelConfig(**meta["model"]), wyckoff_tables())
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0:2]
        raise CheckpointError(f"{pt}: weights do not fit the network in model.json ({' '.join(first)})") from None
    model.eval()
    return model


def shipped_checkpoint() -> Path:
    """The checkpoint that ships with the package (pre-trained on Materials Project crystals)."""
    from importlib import resources

    return Path(str(resources.files("xtalforge").joinpath("data", "wyckoff", "mp20")))


__all__ = ["CheckpointError", "TrainConfig", "cached_encodings", "encode_all", "length_batches", "load_checkpoint",
           "mean_nll", "nll_loss", "pretrain", "read_card", "read_cif_csv", "save_checkpoint", "shipped_checkpoint",
           "torch_threads"]
