"""Ancestral sampling from the Wyckoff transformer, one token at a time with a key/value cache.

The masks are the ones `WyckoffTransformer.log_prob` applies, so the log-probability returned
with each sample equals the teacher-forced one (a test checks this)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xtalforge.generators.wyckoff.distributions import gmm_log_prob, gmm_sample, vm_log_prob, vm_sample
from xtalforge.generators.wyckoff.encoding import CrystalSeq
from xtalforge.generators.wyckoff.model import Constraints, WyckoffTransformer
from xtalforge.generators.wyckoff.tables import N_LETTERS


def _categorical(logits: torch.Tensor, mask: torch.Tensor, gen: torch.Generator,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample from masked logits at `temperature`; log-probability at temperature 1."""
    logits = logits.masked_fill(~mask, -torch.inf)
    tok = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen).squeeze(-1)
    return tok, F.log_softmax(logits, -1).gather(1, tok[:, None]).squeeze(1)


@torch.no_grad()
def sample(model: WyckoffTransformer, n: int, constraints: Constraints | None = None,
           gen: torch.Generator | None = None, temperature: float = 1.0) -> tuple[list[CrystalSeq], torch.Tensor]:
    """`n` crystals and their log-probabilities (n,) under the model and `constraints`."""
    model.eval()
    cons = constraints or Constraints()
    gen = gen or torch.Generator().manual_seed(0)
    S = model.cfg.max_sites
    caches: list[dict] = [{} for _ in model.blocks]

    def step(x: torch.Tensor) -> torch.Tensor:
        return model.run(x[:, None], caches)[:, 0]

    h = step(model.emb_bos(n))
    sg, logp = _categorical(model.head_g(h), cons.sg_mask(model, n), gen, temperature)
    sg = sg + 1
    h = step(model.emb_g(sg))
    max_conv = cons.max_conv(model, sg)
    elem_mask = cons.elem_mask(model, n)
    letters = torch.zeros(n, S + 1, dtype=torch.long)
    species = torch.zeros(n, S, dtype=torch.long)
    xyz = torch.zeros(n, S, 3)
    lat_y = torch.zeros(n, 6)
    n_sites = torch.full((n,), S, dtype=torch.long)
    cum = torch.zeros(n, dtype=torch.long)
    used0 = torch.zeros(n, N_LETTERS, dtype=torch.bool)
    done = torch.zeros(n, dtype=torch.bool)
    zero = torch.zeros(n)
    for i in range(S + 1):
        m = model.w_mask(sg, cum, used0, i, max_conv)
        w, lp = _categorical(model.head_w(h), m, gen, temperature)
        w = torch.where(done, torch.zeros_like(w), w)
        logp = logp + torch.where(done, zero, lp)
        letters[:, i] = w
        stop = (w == 0) & ~done
        h = step(model.emb_w(sg, w, i))
        if stop.any():
            raw = model.head_l(h[stop])
            y = gmm_sample(raw, 6, gen, temperature)
            free = model.lat_free[sg[stop] - 1]
            logp[stop] += gmm_log_prob(raw, y, free)
            lat_y[stop] = y
            n_sites[stop] = i
        done = done | stop
        if bool(done.all()) or i == S:
            break
        z, lp = _categorical(model.head_a(h), elem_mask, gen, temperature)
        logp = logp + torch.where(done, zero, lp)
        species[:, i] = torch.where(done, torch.zeros_like(z), z)
        h = step(model.emb_a(species[:, i], i))
        free = model.free[sg - 1, w]  # (n, 3)
        for ax in range(3):
            raw = model.head_x(h)
            x = vm_sample(raw, gen, temperature) * free[:, ax]
            use = free[:, ax] & ~done
            logp = logp + torch.where(use, vm_log_prob(raw, x), zero)
            xyz[:, i, ax] = x
            h = step(model.emb_coord(ax, x, free[:, ax], i))
        cum = cum + torch.where(done, torch.zeros_like(cum), model.mult[sg - 1, w])
        fixed = ~done & (model.dof[sg - 1, w] == 0)
        used0 = used0 | (F.one_hot(w, N_LETTERS).bool() & fixed[:, None])

    lattice = model.lattice_from_target(lat_y, cum)
    out = []
    for b in range(n):
        k = int(n_sites[b])
        out.append(CrystalSeq(int(sg[b]), letters[b, :k].tolist(), species[b, :k].tolist(),
                              xyz[b, :k].double().numpy().reshape(-1, 3), lattice[b].double().numpy()))
    return out, logp


def collate(seqs: list[CrystalSeq], max_sites: int) -> dict[str, torch.Tensor]:
    """Pad sequences (at most `max_sites` sites each) into the tensors `log_prob` reads."""
    b = len(seqs)
    s = max(1, min(max_sites, max(q.n_sites for q in seqs)))
    letters = torch.zeros(b, s + 1, dtype=torch.long)
    species = torch.zeros(b, s, dtype=torch.long)
    xyz = torch.zeros(b, s, 3)
    for i, q in enumerate(seqs):
        if q.n_sites > s:
            raise ValueError(f"{q.n_sites} sites > max_sites {max_sites}")
        letters[i, :q.n_sites] = torch.as_tensor(q.letters)
        species[i, :q.n_sites] = torch.as_tensor(q.species)
        xyz[i, :q.n_sites] = torch.as_tensor(np.asarray(q.xyz, np.float32).reshape(-1, 3))
    return {
        "sg": torch.as_tensor([q.sg for q in seqs], dtype=torch.long),
        "letters": letters,
        "species": species,
        "xyz": xyz,
        "lattice": torch.as_tensor(np.stack([np.asarray(q.lattice, np.float32) for q in seqs])),
        "n_sites": torch.as_tensor([q.n_sites for q in seqs], dtype=torch.long),
    }
