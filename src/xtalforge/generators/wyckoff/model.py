"""The autoregressive Wyckoff transformer (after CrystalFormer, Cao et al. 2024).

Token layout of a crystal with n sites, padded to S sites (position: token):
    0: BOS   1: G   then per site i: 2+5i: W_i  3+5i: A_i  4+5i: X_i  5+5i: Y_i  6+5i: Z_i
    2+5n: W_n = stop
The output at position p parameterises token p+1; the output at the stop token holds the
lattice. Coordinates are generator values of the Wyckoff position (axes without a free
parameter are fed as 0 and carry no likelihood).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xtalforge.generators.wyckoff.distributions import gmm_log_prob, vm_log_prob
from xtalforge.generators.wyckoff.encoding import MAX_Z
from xtalforge.generators.wyckoff.tables import N_LETTERS, N_SG, WyckoffTables

# token types
BOS, G, W, A, X, Y, Z = range(7)
N_FOURIER = 4


@dataclass
class ModelConfig:
    """Network size. ~0.4 M parameters at the defaults; `tiny()` is for tests and campaigns."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256
    max_sites: int = 12
    n_vm: int = 8  # von Mises components per coordinate
    n_lattice: int = 8  # Gaussian components for the lattice
    dropout: float = 0.0

    @classmethod
    def tiny(cls, max_sites: int = 8) -> ModelConfig:
        return cls(d_model=48, n_layers=2, n_heads=4, d_ff=96, max_sites=max_sites, n_vm=4, n_lattice=4)

    def to_json(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm causal self-attention block with an optional key/value cache for sampling."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.h = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # one new token attends to everything cached; a full sequence needs the causal mask
        att = F.scaled_dot_product_attention(q, k, v, is_causal=(t > 1))
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class WyckoffTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, tables: WyckoffTables):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.type_emb = nn.Embedding(7, d)
        self.site_emb = nn.Embedding(cfg.max_sites + 1, d)
        self.sg_emb = nn.Embedding(N_SG + 1, d)
        self.letter_emb = nn.Embedding(N_LETTERS, d)
        self.wp_feat = nn.Linear(8, d)
        self.elem_emb = nn.Embedding(MAX_Z + 1, d)
        self.coord_proj = nn.Linear(2 * N_FOURIER + 1, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head_g = nn.Linear(d, N_SG)
        self.head_w = nn.Linear(d, N_LETTERS)
        self.head_a = nn.Linear(d, MAX_Z + 1)
        self.head_x = nn.Linear(d, 3 * cfg.n_vm)
        self.head_l = nn.Linear(d, cfg.n_lattice * 13)
        with torch.no_grad():  # start the lattice means near typical values (ln 2.2, 90°)
            k = cfg.n_lattice
            bias = self.head_l.bias.view(-1)
            bias[k:k + 6 * k].view(k, 6).copy_(torch.tensor([0.8, 0.8, 0.8, math.pi / 2, math.pi / 2, math.pi / 2]))
            bias[k + 6 * k:].fill_(-1.5)
        # Wyckoff tables as buffers (not parameters, not saved: they come from PyXtal)
        t = tables
        mult = torch.as_tensor(t.mult, dtype=torch.float32)
        cell = torch.as_tensor(t.cellsize, dtype=torch.float32)[:, None]
        dof = torch.as_tensor(t.dof)
        feats = torch.cat([torch.log1p(mult / cell)[..., None], F.one_hot(dof, 4).float(),
                           torch.as_tensor(t.free, dtype=torch.float32)], dim=-1)  # (230, 28, 8)
        self.register_buffer("wp_feats", feats, persistent=False)
        self.register_buffer("mult", torch.as_tensor(t.mult), persistent=False)
        self.register_buffer("dof", dof, persistent=False)
        self.register_buffer("free", torch.as_tensor(t.free), persistent=False)
        self.register_buffer("valid", torch.as_tensor(t.mult > 0), persistent=False)
        self.register_buffer("cellsize", torch.as_tensor(t.cellsize), persistent=False)
        self.register_buffer("lat_free", torch.as_tensor(t.lattice_free()), persistent=False)

    # -- embeddings of single tokens (shared by teacher forcing and sampling) ----------------
    def _typed(self, kind: int, site: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        site_t = torch.as_tensor(site, device=x.device).clamp(max=self.cfg.max_sites)
        return x + self.type_emb.weight[kind] + self.site_emb(site_t)

    def emb_bos(self, b: int) -> torch.Tensor:
        return self.type_emb.weight[BOS].expand(b, -1)

    def emb_g(self, sg: torch.Tensor) -> torch.Tensor:
        return self.sg_emb(sg) + self.type_emb.weight[G]

    def emb_w(self, sg: torch.Tensor, w: torch.Tensor, site) -> torch.Tensor:
        return self._typed(W, site, self.letter_emb(w) + self.wp_feat(self.wp_feats[sg - 1, w]))

    def emb_a(self, z: torch.Tensor, site) -> torch.Tensor:
        return self._typed(A, site, self.elem_emb(z))

    def emb_coord(self, axis: int, x: torch.Tensor, free: torch.Tensor, site) -> torch.Tensor:
        k = torch.arange(1, N_FOURIER + 1, device=x.device, dtype=x.dtype)
        ang = 2 * math.pi * x.unsqueeze(-1) * k
        f = free.to(x.dtype).unsqueeze(-1)
        feats = torch.cat([torch.cos(ang) * f, torch.sin(ang) * f, f], dim=-1)
        return self._typed(X + axis, site, self.coord_proj(feats))

    def run(self, x: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if caches is None else caches[i])
        return self.ln_f(x)

    # -- masks shared by the likelihood and the sampler --------------------------------------
    def w_mask(self, sg: torch.Tensor, cum: torch.Tensor, used0: torch.Tensor, i: int,
               max_conv: torch.Tensor) -> torch.Tensor:
        """Allowed Wyckoff letters (B, 28) for site i: existing in the group, a fixed position
        (no free coordinate) at most once, within the atom limit; stop from site 1 on, or when
        nothing else fits."""
        mult = self.mult[sg - 1]
        ok = self.valid[sg - 1] & ~used0 & (cum[:, None] + mult <= max_conv[:, None])
        if i >= self.cfg.max_sites:
            ok = torch.zeros_like(ok)
        ok[:, 0] = (i >= 1) | ~ok[:, 1:].any(-1)
        return ok

    def lattice_target(self, lattice: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """(a, b, c [Å], angles [deg]) -> (ln of length per atom^(1/3), angles [rad])."""
        scale = n_atoms.to(lattice.dtype).clamp(min=1).pow(1 / 3)[:, None]
        return torch.cat([torch.log(lattice[:, :3] / scale), torch.deg2rad(lattice[:, 3:])], dim=-1)

    def lattice_from_target(self, y: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        scale = n_atoms.to(y.dtype).clamp(min=1).pow(1 / 3)[:, None]
        return torch.cat([torch.exp(y[:, :3]) * scale, torch.rad2deg(y[:, 3:])], dim=-1)

    # -- teacher forcing ----------------------------------------------------------------------
    def log_prob(self, batch: dict[str, torch.Tensor], constraints: Constraints | None = None,
                 parts: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """Log-likelihood (B,) of padded sequences under the masks of `constraints`.

        batch: sg (B,), letters (B, S+1) with 0 at and after the stop, species (B, S),
        xyz (B, S, 3), lattice (B, 6) as a, b, c [Å], alpha, beta, gamma [deg], n_sites (B,).
        With parts=True returns the per-token-kind sums (g, w, a, xyz, lattice)."""
        sg, letters, species, xyz = batch["sg"], batch["letters"], batch["species"], batch["xyz"]
        n = batch["n_sites"]
        b, s = species.shape
        dev = sg.device
        sites = torch.arange(s, device=dev)
        blocks = torch.stack([
            self.emb_w(sg[:, None].expand(-1, s), letters[:, :s], sites),
            self.emb_a(species, sites),
            *[self.emb_coord(ax, xyz[..., ax], self.free[sg[:, None] - 1, letters[:, :s], ax], sites)
              for ax in range(3)],
        ], dim=2).reshape(b, 5 * s, -1)
        seq = torch.cat([self.emb_bos(b)[:, None], self.emb_g(sg)[:, None], blocks,
                         self.emb_w(sg, letters[:, s], s)[:, None]], dim=1)
        h = self.run(seq)
        cons = constraints or Constraints()
        active = sites[None] < n[:, None]  # (B, S)

        lg = self.head_g(h[:, 0]).masked_fill(~cons.sg_mask(self, b), -torch.inf)
        lp_g = F.log_softmax(lg, -1).gather(1, sg[:, None] - 1).squeeze(1)

        # W_0 from position 1, W_i (i >= 1) from the Z token of site i-1 at 6 + 5(i-1)
        hw = torch.cat([h[:, 1:2], h[:, 6:6 + 5 * s:5]], dim=1)  # (B, S+1, d)
        logits_w = self.head_w(hw)
        max_conv = cons.max_conv(self, sg)
        cum = torch.zeros(b, device=dev, dtype=torch.long)
        used0 = torch.zeros(b, N_LETTERS, dtype=torch.bool, device=dev)
        lp_w = torch.zeros(b, device=dev)
        for i in range(s + 1):
            live = i <= n  # site i is a letter (i < n) or the stop (i == n)
            m = self.w_mask(sg, cum, used0, i, max_conv)
            lw = F.log_softmax(logits_w[:, i].masked_fill(~m, -torch.inf), -1)
            tok = letters[:, i]
            lp_w = lp_w + torch.where(live, lw.gather(1, tok[:, None]).squeeze(1), torch.zeros_like(lp_w))
            if i < s:
                inc = (i < n)
                cum = cum + torch.where(inc, self.mult[sg - 1, tok], torch.zeros_like(cum))
                fixed = inc & (self.dof[sg - 1, tok] == 0)
                used0 = used0 | (F.one_hot(tok, N_LETTERS).bool() & fixed[:, None])

        la = self.head_a(h[:, 2:2 + 5 * s:5]).masked_fill(~cons.elem_mask(self, b)[:, None], -torch.inf)
        lp_a_tok = F.log_softmax(la, -1).gather(2, species[..., None]).squeeze(-1)
        lp_a = torch.where(active, lp_a_tok, torch.zeros_like(lp_a_tok)).sum(1)

        lp_x = torch.zeros(b, device=dev)
        for ax in range(3):
            raw = self.head_x(h[:, 3 + ax:3 + ax + 5 * s:5])
            lpx = vm_log_prob(raw, xyz[..., ax])
            use = active & self.free[sg[:, None] - 1, letters[:, :s], ax]
            lp_x = lp_x + torch.where(use, lpx, torch.zeros_like(lpx)).sum(1)

        h_stop = h[torch.arange(b, device=dev), 2 + 5 * n]
        n_atoms = (self.mult[sg[:, None] - 1, letters[:, :s]] * active).sum(1)
        y = self.lattice_target(batch["lattice"], n_atoms)
        lp_l = gmm_log_prob(self.head_l(h_stop), y, self.lat_free[sg - 1])
        if parts:
            return {"g": lp_g, "w": lp_w, "a": lp_a, "xyz": lp_x, "lattice": lp_l}
        return lp_g + lp_w + lp_a + lp_x + lp_l


@dataclass
class Constraints:
    """What a sample may be: element symbols' atomic numbers, the most atoms in the primitive
    cell, allowed space groups. None means unconstrained."""

    elements: tuple[int, ...] | None = None
    max_atoms: int | None = None
    spacegroups: tuple[int, ...] | None = None

    def elem_mask(self, model: WyckoffTransformer, b: int) -> torch.Tensor:
        m = torch.zeros(MAX_Z + 1, dtype=torch.bool, device=model.mult.device)
        if self.elements is None:
            m[1:] = True
        else:
            m[list(self.elements)] = True
        return m[None].expand(b, -1)

    def max_conv(self, model: WyckoffTransformer, sg: torch.Tensor) -> torch.Tensor:
        """Most atoms in the conventional cell: centred cells hold `cellsize` primitive cells."""
        if self.max_atoms is None:
            return torch.full_like(sg, 10**6)
        return self.max_atoms * model.cellsize[sg - 1]

    def sg_mask(self, model: WyckoffTransformer, b: int) -> torch.Tensor:
        m = torch.ones(N_SG, dtype=torch.bool, device=model.mult.device)
        if self.spacegroups is not None:
            m[:] = False
            m[[g - 1 for g in self.spacegroups]] = True
        if self.max_atoms is not None:  # a group whose smallest orbit does not fit is useless
            smallest = torch.where(model.valid[:, 1:], model.mult[:, 1:], 10**6).min(1).values
            m &= smallest <= self.max_atoms * model.cellsize
        return m[None].expand(b, -1)
