"""Mixture densities for the continuous tokens: von Mises for fractional coordinates (periodic),
diagonal Gaussians for the lattice. Each function reads raw network outputs, so the model and
the sampler share one parameterisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KAPPA_MAX = 1e5  # a coordinate pinned to ±0.0001 of a special value; beyond adds nothing
TWO_PI = 2 * math.pi


def vm_params(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """raw (..., 3K) -> log weights (..., K), mean angle mu in radians, concentration kappa > 0."""
    logit, mu_raw, k_raw = raw.chunk(3, dim=-1)
    # mean as an angle: any real number is a valid angle, so no squashing is needed
    kappa = (F.softplus(k_raw) + 1e-3).clamp(max=KAPPA_MAX)
    return F.log_softmax(logit, dim=-1), mu_raw, kappa


def _log_i0(kappa: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.special.i0e(kappa)) + kappa


def vm_log_prob(raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Log density of a fractional coordinate x in [0, 1) (per unit of x, not of angle)."""
    logw, mu, kappa = vm_params(raw)
    theta = TWO_PI * x.unsqueeze(-1)
    # density in theta is exp(k cos(t - mu)) / (2 pi I0(k)); d theta / dx = 2 pi cancels the 2 pi
    comp = kappa * torch.cos(theta - mu) - _log_i0(kappa)
    return torch.logsumexp(logw + comp, dim=-1)


def vm_sample(raw: torch.Tensor, gen: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
    """One fractional coordinate per row of raw (N, 3K)."""
    logw, mu, kappa = vm_params(raw)
    k = torch.multinomial(torch.softmax(logw / temperature, -1), 1, generator=gen).squeeze(-1)
    mu_k = mu.gather(-1, k[:, None]).squeeze(-1)
    kap = (kappa.gather(-1, k[:, None]).squeeze(-1) / temperature).double()
    theta = _sample_von_mises(kap, gen) + mu_k.double()
    x = torch.remainder(theta / TWO_PI, 1.0)
    return x.float()


def _sample_von_mises(kappa: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Best & Fisher (1979) rejection sampler around mean 0, with a seeded generator."""
    out = torch.zeros_like(kappa)
    todo = torch.ones_like(kappa, dtype=torch.bool)
    tau = 1 + torch.sqrt(1 + 4 * kappa**2)
    rho = (tau - torch.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho**2) / (2 * rho)
    for _ in range(1000):
        n = int(todo.sum())
        if n == 0:
            break
        u1, u2, u3 = torch.rand(3, n, generator=gen, dtype=kappa.dtype)
        z = torch.cos(math.pi * u1)
        f = (1 + r[todo] * z) / (r[todo] + z)
        c = kappa[todo] * (r[todo] - f)
        ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        theta = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1, 1))
        idx = todo.nonzero().squeeze(-1)
        out[idx[ok]] = theta[ok]
        todo[idx[ok]] = False
    # kappa -> large: the normal limit avoids the sampler's round-off
    big = kappa > 1e4
    if big.any():
        out[big] = torch.randn(int(big.sum()), generator=gen, dtype=kappa.dtype) / torch.sqrt(kappa[big])
    return out


def gmm_params(raw: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """raw (..., K + 2 K dim) -> log weights (..., K), means (..., K, dim), log stdevs (..., K, dim)."""
    k = raw.shape[-1] // (1 + 2 * dim)
    logit = raw[..., :k]
    mean = raw[..., k:k + k * dim].unflatten(-1, (k, dim))
    log_std = raw[..., k + k * dim:].unflatten(-1, (k, dim)).clamp(-7.0, 2.0)
    return F.log_softmax(logit, dim=-1), mean, log_std


def gmm_log_prob(raw: torch.Tensor, y: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Log density of y (..., dim) over the dimensions where `free` (..., dim) is True."""
    logw, mean, log_std = gmm_params(raw, y.shape[-1])
    z = (y.unsqueeze(-2) - mean) / log_std.exp()
    per_dim = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)
    comp = (per_dim * free.unsqueeze(-2).to(per_dim.dtype)).sum(-1)
    return torch.logsumexp(logw + comp, dim=-1)


def gmm_sample(raw: torch.Tensor, dim: int, gen: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
    logw, mean, log_std = gmm_params(raw, dim)
    k = torch.multinomial(torch.softmax(logw / temperature, -1), 1, generator=gen).squeeze(-1)
    idx = k[:, None, None].expand(-1, 1, dim)
    m = mean.gather(1, idx).squeeze(1)
    s = log_std.gather(1, idx).squeeze(1).exp() * math.sqrt(temperature)
    return m + s * torch.randn(m.shape, generator=gen)
