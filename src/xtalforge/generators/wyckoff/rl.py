"""Reinforcement fine-tuning from oracle rewards (after CrystalFormer-RL, 2025).

Objective per round: maximise E[reward] - beta * KL(policy || reference), where the reference is
the pre-trained model. The reward term is a PPO-clipped policy gradient on this round's evaluated
samples. Its baseline is the leave-one-out mean of the round's other rewards (one sample: the
running mean of earlier rounds), and advantages are scaled by the rewards' spread, so a
round of 2 evaluations and one of 60 take steps of similar size. The KL term uses fresh samples
from the policy and the k2 estimator 0.5 * (log p - log q)^2, whose gradient on on-policy samples
is the gradient of the KL itself; it is Huber-clipped past `kl_huber` nats because coordinate
densities with sharp peaks make single log-ratios large.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xtalforge.generators.base import reward_from
from xtalforge.generators.wyckoff.encoding import CrystalSeq
from xtalforge.generators.wyckoff.model import Constraints, WyckoffTransformer
from xtalforge.generators.wyckoff.sampler import collate, sample
from xtalforge.types import Candidate, Measurement


@dataclass
class RLConfig:
    beta: float = 0.1  # KL weight (CrystalFormer-RL uses 0.1)
    lr: float = 1e-4
    epochs: int = 4  # gradient steps per round on the round's samples
    clip: float = 0.2  # PPO ratio clip
    kl_samples: int = 32  # fresh policy samples per round for the KL term
    baseline_decay: float = 0.7  # running-mean baseline: b <- d b + (1 - d) mean(reward)
    kl_huber: float = 2.0  # nats; the KL gradient stops growing past this log-ratio


def policy_update(policy: WyckoffTransformer, ref: WyckoffTransformer, seqs: list[CrystalSeq],
                  rewards: list[float], cons: Constraints, baseline: float | None, cfg: RLConfig,
                  gen: torch.Generator) -> tuple[dict[str, float], float]:
    """One round of fine-tuning in place. Returns metrics and the new baseline."""
    batch = collate(seqs, policy.cfg.max_sites)
    r = torch.as_tensor(rewards, dtype=torch.float32)
    n = len(r)
    if n >= 2:
        adv = r - (r.sum() - r) / (n - 1)
    else:
        adv = r - (float(r.mean()) if baseline is None else baseline)
    adv = adv / max(float(r.std()) if n >= 2 else 0.0, 0.1)
    with torch.no_grad():
        lp_old = policy.log_prob(batch, cons)
    kl_seqs, _ = sample(policy, cfg.kl_samples, cons, gen, min_distance=None)  # the policy's own draws
    kl_batch = collate(kl_seqs, policy.cfg.max_sites)
    with torch.no_grad():
        lp_ref_kl = ref.log_prob(kl_batch, cons)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    policy.train()
    pg_val = kl_val = 0.0
    for _ in range(cfg.epochs):
        lp = policy.log_prob(batch, cons)
        ratio = torch.exp(lp - lp_old)
        pg = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
        log_ratio = policy.log_prob(kl_batch, cons) - lp_ref_kl
        kl_loss = F.huber_loss(log_ratio, torch.zeros_like(log_ratio), delta=cfg.kl_huber)
        loss = pg + cfg.beta * kl_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        pg_val, kl_val = float(pg), float(kl_loss)
    policy.eval()
    mean = float(r.mean())
    new_b = mean if baseline is None else cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean
    return {"pg_loss": pg_val, "kl_loss": kl_val, "advantage_abs": float(adv.abs().mean())}, new_b


@torch.no_grad()
def kl_estimate(policy: WyckoffTransformer, ref: WyckoffTransformer, cons: Constraints, n: int,
                gen: torch.Generator) -> tuple[float, list[CrystalSeq]]:
    """KL(policy || ref) in nats per crystal (mean log-ratio over fresh policy samples), and the samples."""
    seqs, lp = sample(policy, n, cons, gen, min_distance=None)  # a KL estimate needs the policy's own draws
    lp_ref = ref.log_prob(collate(seqs, policy.cfg.max_sites), cons)
    return float((lp - lp_ref).mean()), seqs


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


DEFAULT_TERMS = {"e_above_hull": 1.0, "p_synth": {"weight": 0.5, "optional": True}}


def reward(cand: Candidate, m: Measurement, terms: dict | None = None, hull_scale: float = 0.1) -> float:
    """Weighted mean of reward terms in [0, 1].

    terms maps a value name to a weight or a spec. `e_above_hull` uses `reward_from` (1 on the
    hull, exp(-e/hull_scale) above, e in eV/atom); a plain weight reads the value as a
    probability (e.g. `p_synth`, the campaign's synthesizability score); {"weight", "target",
    "scale"} rewards closeness exp(-|v - target|/scale); {"weight", "minimize", "center",
    "scale"} a sigmoid step. Values are looked up in m.values, then cand.meta; a missing value
    scores 0, unless the spec says "optional": true, when the term is left out. The default
    adds synthesizability (weight 0.5) only in campaigns that score it."""
    terms = DEFAULT_TERMS if terms is None else terms
    total = wsum = 0.0
    for name, spec in terms.items():
        spec = spec if isinstance(spec, dict) else {"weight": float(spec)}
        w = float(spec.get("weight", 1.0))
        if name == "e_above_hull":
            total += w * reward_from(m, spec.get("scale", hull_scale))
            wsum += w
            continue
        v = m.values.get(name, cand.meta.get(name))
        if v is None or not math.isfinite(float(v)):
            wsum += 0.0 if spec.get("optional", False) else w
            continue
        v = float(v)
        wsum += w
        if "target" in spec:
            s = spec.get("scale", 1.0)
            total += w * math.exp(-abs(v - spec["target"]) / s)
        elif "center" in spec:
            z = (v - spec["center"]) / spec.get("scale", 1.0)
            total += w * _sigmoid(-z if spec.get("minimize", False) else z)
        else:
            total += w * min(1.0, max(0.0, v))
    return total / wsum if wsum > 0 else 0.0
