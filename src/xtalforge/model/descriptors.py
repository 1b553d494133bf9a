"""Featurizers for the surrogate, chosen by name (`acquisition.featurizer` in a campaign config).

- "chgnet+composition": the CHGNet crystal embedding of the unrelaxed structure plus the
  campaign's composition features (what the campaign computes by default);
- "magpie+structure": element-property statistics (fraction-weighted mean, spread, min, max over
  a dozen properties, as in Ward et al.'s Magpie set) plus cheap structure features (volume,
  density, packing, neighbour distances). Works for any chemistry, which backtests on data sets
  with dozens of elements need;
- "chgnet+magpie+structure": both, plus CHGNet's predicted energy per atom and a formation-energy
  estimate against the bundled MP elemental references (a cheap, low-fidelity label as input).

CHGNet features can be cached on disk (`cache` argument): one file per data set and model.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, Element, Structure

FEATURIZERS = ("chgnet+composition", "magpie+structure", "chgnet+magpie+structure")

_BLOCKS = {"s": 0.0, "p": 1.0, "d": 2.0, "f": 3.0}


@functools.lru_cache(maxsize=None)
def _element_props(symbol: str) -> tuple[float, ...]:
    """Z, Pauling X, atomic radius (Å), mass (amu), row, group, Mendeleev number, first ionization
    energy (eV), average ionic radius (Å), block, valence s/p/d/f electron counts, melting point (K)."""
    el = Element(symbol)

    def f(get: Callable[[], object]) -> float:
        try:
            v = float(get())  # type: ignore[arg-type]
        except Exception:
            return math.nan
        return v if math.isfinite(v) else math.nan

    val = {"s": 0.0, "p": 0.0, "d": 0.0, "f": 0.0}
    try:
        for _n, orb, cnt in el.full_electronic_structure[-4:]:
            val[orb] = float(cnt)
    except Exception:
        pass
    return (float(el.Z), f(lambda: el.X), f(lambda: el.atomic_radius), f(lambda: el.atomic_mass),
            float(el.row), float(el.group), f(lambda: el.mendeleev_no),
            f(lambda: el.ionization_energies[0]), f(lambda: el.average_ionic_radius),
            _BLOCKS.get(el.block, math.nan), val["s"], val["p"], val["d"], val["f"],
            f(lambda: el.melting_point))


N_PROPS = len(_element_props("H"))


def magpie_features(comp: Composition) -> np.ndarray:
    """Element-property statistics (mean, spread, min, max per property) plus stoichiometry
    (number of elements, L2 and L3 norms of the fractions). Missing properties count as the
    mean of the others present."""
    frac = comp.fractional_composition
    els = [e.symbol for e in frac.elements]
    w = np.array([frac[e] for e in els])
    P = np.array([_element_props(e) for e in els])  # (n_el, N_PROPS)
    col_mean = np.nanmean(np.where(np.isfinite(P), P, np.nan), axis=0) if len(P) else np.zeros(N_PROPS)
    P = np.where(np.isfinite(P), P, np.nan_to_num(col_mean))
    mean = w @ P
    spread = np.sqrt(w @ (P - mean) ** 2)
    stoich = [len(els), float(np.sqrt((w**2).sum())), float(((w**3).sum()) ** (1 / 3))]
    return np.concatenate([mean, spread, P.min(0), P.max(0), stoich])


def structure_features(s: Structure) -> np.ndarray:
    """Volume per atom (Å^3), density (g/cm^3), packing fraction (atomic spheres over the cell),
    and the min, mean and spread of nearest-neighbour distances (Å)."""
    n = len(s)
    vol = s.volume / n
    radii = np.array([_element_props(sp.symbol)[2] for sp in s.species], dtype=float)
    radii = np.where(np.isfinite(radii), radii, 1.5)
    packing = float((4.0 / 3.0) * math.pi * (radii**3).sum() / s.volume)
    try:
        nn = []
        for site_nbrs in s.get_all_neighbors(r=5.0):
            nn.append(min((nb.nn_distance for nb in site_nbrs), default=5.0))
        nn = np.array(nn)
    except Exception:
        nn = np.full(n, math.nan)
    return np.array([vol, float(s.density), packing, float(np.min(nn)), float(np.mean(nn)), float(np.std(nn))])


def _mp_reference_energies() -> dict[str, float]:
    """Energy per atom (eV) of each element's MP ground state, from the bundled references."""
    import gzip
    import json

    path = Path(__file__).resolve().parent.parent / "data" / "mp_elemental_refs.json.gz"
    with gzip.open(path, "rt") as fh:
        data = json.load(fh)
    out = {}
    for sym, entry in data.items():
        comp = Composition(entry.get("composition", {sym: 1}))
        out[sym] = float(entry["energy"]) / comp.num_atoms
    return out


def chgnet_features(structures: Sequence[Structure], cache: Path | None = None,
                    model=None) -> np.ndarray:
    """(N, 66): CHGNet crystal embedding (64), predicted energy per atom (eV) and a formation
    energy per atom (eV) against MP elemental references. NaN rows where CHGNet fails."""
    if cache is not None and Path(cache).is_file():
        arr = np.load(cache)["features"]
        if arr.shape[0] == len(structures):
            return arr
    import torch

    from xtalforge.oracles.mlip.relax import embed, load_chgnet

    model = model or load_chgnet(threads=torch.get_num_threads())
    refs = _mp_reference_energies()
    emb = embed(model, list(structures), energy=True)  # the campaign's single point: the same forward pass
    e = emb[:, 64]
    ref = np.array([sum(c[el] * refs.get(el.symbol, math.nan) for el in c.elements)
                    for c in (s.composition.fractional_composition for s in structures)])
    out = np.concatenate([emb, (e - ref)[:, None]], axis=1)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, features=out)
    return out


def cached_chgnet_features(structures: Sequence[Structure], root: str | Path | None = None,
                           progress: Callable[[str], None] | None = None) -> np.ndarray:
    """`chgnet_features` (N, 66) through the per-structure disk cache (model.feature_cache):
    CHGNet is loaded, once, only when some structure has no cached row."""
    from xtalforge.model.feature_cache import cached_rows

    model = []

    def compute(chunk: list[Structure]) -> np.ndarray:
        if not model:
            import torch

            from xtalforge.oracles.mlip.relax import load_chgnet

            model.append(load_chgnet(threads=torch.get_num_threads()))
        return chgnet_features(chunk, model=model[0])

    return cached_rows(structures, "chgnet", compute, root=root, progress=progress)


def local_embed(root: str | Path | None = None) -> Callable[[list[Structure]], np.ndarray]:
    """An `embed` function for "chgnet+composition" that runs CHGNet in this process (cached on
    disk), giving the same 64 numbers per structure as the MLIP oracle's workers: a backtest's
    stand-in for the campaign's Ray actors."""
    return lambda structures: cached_chgnet_features(structures, root)[:, :64]


def cache_path(key: str, featurizer: str, root: str | Path | None = None) -> Path:
    """Where CHGNet features of data set `key` go: `root`, else `paths.cache_root()`."""
    from xtalforge.paths import cache_root

    base = Path(root) if root else cache_root()
    h = hashlib.sha1(key.encode()).hexdigest()[:16]
    return base / f"{featurizer.replace('+', '_')}_{h}.npz"


def featurize(name: str, structures: Sequence[Structure], elements: Sequence[str] = (),
              embed: Callable[[list[Structure]], np.ndarray] | None = None,
              cache: Path | None = None, cache_root: str | Path | None = None) -> np.ndarray:
    """Feature matrix (N, d) of `structures` by featurizer `name` (see FEATURIZERS).

    `embed` supplies CHGNet embeddings for "chgnet+composition" (the campaign passes its MLIP
    oracle's Ray actors; a backtest passes `local_embed()`); "chgnet+magpie+structure" loads
    CHGNet here, caching per structure under `cache_root` (or to the one file `cache`)."""
    from xtalforge.model.features import composition_features

    if name not in FEATURIZERS:
        raise ValueError(f"featurizer {name!r} is not available (have: {', '.join(FEATURIZERS)})")
    if not len(structures):
        return np.zeros((0, 0))
    if name == "chgnet+composition":
        if embed is None:
            raise ValueError("featurizer 'chgnet+composition' needs an embed function (the MLIP oracle's)")
        emb = embed(list(structures))
        comp = np.stack([composition_features(s.composition, elements) for s in structures])
        return np.concatenate([emb, comp], axis=1)
    base = np.stack([np.concatenate([magpie_features(s.composition), structure_features(s)]) for s in structures])
    if name == "magpie+structure":
        return base
    chg = cached_chgnet_features(structures, cache_root) if cache is None else chgnet_features(structures, cache=cache)
    return np.concatenate([base, chg], axis=1)
