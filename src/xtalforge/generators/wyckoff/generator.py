"""The Wyckoff generator: a symmetry-aware autoregressive model as a campaign Generator.

Life cycle: weights come from the checkpoint shipped with the package (pre-trained on Materials
Project crystals of at most 20 atoms; the default), from another checkpoint (`xtalforge
pretrain`), from pre-training at construction on `pretrain_data`, or from pre-training on the
campaign's own low-energy structures (`pretrain_on_history`, in `prepare`, which the campaign
calls on the driver before proposing). Until it has weights it proposes nothing. Every round `update` fine-tunes the policy
on its evaluated proposals with a KL leash to the pre-trained reference.

The generator pickles as plain CPU state dicts, so a Ray worker gets a copy that can sample.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Element, Structure

from xtalforge.generators.wyckoff.drawing import decode_checked, draw, structure_problem
from xtalforge.generators.wyckoff.encoding import CrystalSeq, decode, encode
from xtalforge.generators.wyckoff.model import Constraints, ModelConfig, WyckoffTransformer
from xtalforge.generators.wyckoff.rl import RLConfig, kl_estimate, policy_update, reward
from xtalforge.generators.wyckoff.sampler import collate, sample
from xtalforge.generators.wyckoff.tables import wyckoff_tables
from xtalforge.generators.wyckoff.train import (CheckpointError, TrainConfig, encode_all, load_checkpoint, pretrain,
                                                quiet_stderr, read_card, read_cif_csv, shipped_checkpoint,
                                                torch_threads)
from xtalforge.types import Candidate, Measurement, RoundContext

log = logging.getLogger(__name__)

SIZES = {"tiny": ModelConfig.tiny, "small": lambda max_sites=12: ModelConfig(
    d_model=96, n_layers=3, n_heads=4, d_ff=192, max_sites=max_sites, n_vm=6, n_lattice=6),
    "base": lambda max_sites=12: ModelConfig(max_sites=max_sites)}


def load_structures(source: str | Sequence[str]) -> list[Structure]:
    """Structures from a CIF CSV, a folder of CIF files, or a list of CIF paths."""
    paths = [source] if isinstance(source, str | Path) else list(source)
    out: list[Structure] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(Structure.from_file(f) for f in sorted(p.glob("*.cif")))
        elif p.suffix == ".csv":
            out.extend(read_cif_csv(p))
        else:
            out.append(Structure.from_file(p))
    for s in out:
        s.remove_oxidation_states()
    return [s for s in out if s.is_ordered]


def check_vocabulary(folder: str | Path, elements: Sequence[str]) -> None:
    """Refuse (ValueError, one line) elements the checkpoint never saw in training: the model
    gives them near-zero probability, so sampling them would be noise. Checkpoints without an
    element list in their card accept any element."""
    card = read_card(folder).get("info", {})
    vocab = card.get("elements")
    if not vocab:
        return
    missing = sorted(set(elements) - set(vocab))
    if missing:
        raise CheckpointError(f"{Path(folder) / 'model.json'}: element(s) {', '.join(missing)} are not in this "
                              f"checkpoint's vocabulary ({len(vocab)} elements seen in training)")


def trained_systems_within(elements: Sequence[str], folder: str | Path | None = None) -> list[str]:
    """The chemical systems of at least two elements inside `elements` that the checkpoint
    (default: the shipped one) was trained on, from its card. A rediscovery benchmark on that
    system must drop the generator (or use a checkpoint from `xtalforge pretrain
    --exclude-chemsys`) when this is not empty: the model has seen the answers."""
    card = read_card(folder or shipped_checkpoint()).get("info", {})
    target = set(elements)
    return [cs for cs in card.get("chemical_systems", [])
            if len(cs.split("-")) >= 2 and set(cs.split("-")) <= target]


def _to_b64(model: WyckoffTransformer) -> str:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _from_b64(text: str) -> dict:
    return torch.load(io.BytesIO(base64.b64decode(text)), map_location="cpu", weights_only=True)


class WyckoffGenerator:
    """Options (config `generators: [{name: wyckoff, options: {...}}]`):

    checkpoint: folder from `xtalforge pretrain`, "shipped" (the default: the packaged
    Materials Project model, unless pretrain_data or pretrain_on_history is given) or none;
    pretrain_data: CIF CSV, CIF folder or list of
    CIF paths to pre-train on now; pretrain_on_history: pre-train in `prepare` on up to
    history_top evaluated structures within history_max_e_above_hull (eV/atom), once at least
    min_history exist. model_size tiny | small | base (or `model`, a ModelConfig dict);
    max_sites: Wyckoff orbits per crystal (default max_atoms). pretrain_epochs, pretrain_lr.
    Fine-tuning: beta (KL weight), lr, rl_epochs, clip, kl_samples, metric_samples (fresh samples
    scored per round), reward_terms (see `rl.reward`). Sampling: spacegroups (fix a list),
    temperature, oversample (draw rounds to fill n valid proposals), prefer_balanced (take
    charge-balanced compositions first, see `drawing`), symprec (Å, encoding).
    """

    name = "wyckoff"

    def __init__(self, elements: Sequence[str], max_atoms: int, checkpoint: str | None = "shipped",
                 pretrain_data: str | list[str] | None = None, pretrain_on_history: bool = False,
                 history_top: int = 50, history_max_e_above_hull: float = 0.2, min_history: int = 2,
                 model_size: str = "tiny", model: dict | None = None, max_sites: int | None = None,
                 pretrain_epochs: int = 150, pretrain_lr: float = 2e-3,
                 beta: float = 0.1, lr: float = 1e-4, rl_epochs: int = 4, clip: float = 0.2,
                 kl_samples: int = 32, metric_samples: int = 32, reward_terms: dict | None = None,
                 spacegroups: list[int] | None = None, temperature: float = 1.0, oversample: int = 4,
                 prefer_balanced: bool = True, symprec: float = 0.01, seed: int = 0, threads: int = 1):
        self.elements = tuple(elements)
        self.max_atoms = int(max_atoms)
        self.tables = wyckoff_tables()
        self.cons = Constraints(elements=tuple(sorted(Element(e).Z for e in self.elements)),
                                max_atoms=self.max_atoms,
                                spacegroups=tuple(spacegroups) if spacegroups else None)
        self.pretrain_on_history = pretrain_on_history
        self.history_top, self.history_max_e, self.min_history = history_top, history_max_e_above_hull, min_history
        self.train_cfg = TrainConfig(epochs=pretrain_epochs, lr=pretrain_lr, batch_size=64, seed=seed, threads=threads)
        self.rl_cfg = RLConfig(beta=beta, lr=lr, epochs=rl_epochs, clip=clip, kl_samples=kl_samples)
        self.metric_samples = metric_samples
        self.reward_terms = reward_terms
        self.temperature, self.oversample, self.symprec = temperature, oversample, symprec
        self.prefer_balanced = prefer_balanced
        self.seed, self.threads = seed, threads
        self.baseline: float | None = None
        self.updates = 0
        self.source = "none"  # where the reference weights came from
        if model is not None:
            self.model_cfg = ModelConfig(**model)
        else:
            if model_size not in SIZES:
                raise ValueError(f"model_size must be one of {', '.join(SIZES)}")
            self.model_cfg = SIZES[model_size](max_sites or self.max_atoms)
        self.policy: WyckoffTransformer | None = None
        self.ref: WyckoffTransformer | None = None
        if checkpoint == "shipped" and (pretrain_data or pretrain_on_history):
            checkpoint = None  # the caller asked for weights from data
        if checkpoint and str(checkpoint).lower() != "none":
            folder = shipped_checkpoint() if checkpoint == "shipped" else Path(checkpoint)
            check_vocabulary(folder, self.elements)
            self._set_reference(load_checkpoint(folder), f"checkpoint:{checkpoint}")
        elif pretrain_data:
            self._pretrain(load_structures(pretrain_data), f"data:{pretrain_data}")

    # -- weights ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.policy is not None

    def _set_reference(self, model: WyckoffTransformer, source: str) -> None:
        model.eval()
        self.ref = model
        self.policy = WyckoffTransformer(model.cfg, self.tables)
        self.policy.load_state_dict(model.state_dict())
        self.policy.eval()
        self.model_cfg = model.cfg
        self.source = source
        self.baseline = None

    def _pretrain(self, structures: list[Structure], source: str) -> dict[str, float]:
        seqs, _ = encode_all(structures, self.tables, tol=self.symprec, max_sites=self.model_cfg.max_sites)
        if not seqs:
            raise ValueError(f"{source}: no structure could be encoded within {self.model_cfg.max_sites} sites")
        model, metrics = pretrain(seqs, self.model_cfg, self.train_cfg)
        self._set_reference(model, source)
        return {"pretrain_structures": float(len(seqs)), "pretrain_nll": metrics["train_nll"]}

    def prepare(self, ctx: RoundContext) -> dict[str, float]:
        """Driver-side hook before proposing: pre-train on the history's low-energy structures
        once enough of them exist (the generator then amortizes what the search found)."""
        if not self.pretrain_on_history or self.source.startswith("history"):
            return {}
        good = [(c, m) for c, m in ctx.history
                if m.values.get("e_above_hull", math.inf) <= self.history_max_e][: self.history_top]
        if len(good) < self.min_history:
            return {}
        structures = [(m.relaxed or c.structure).copy() for c, m in good]
        for s in structures:
            s.remove_oxidation_states()
        with torch_threads(self.threads):
            out = self._pretrain(structures, f"history:{len(structures)}")
        log.info("wyckoff: pre-trained on %d structures from the history", len(structures))
        return out

    # -- sampling --------------------------------------------------------------------------
    def _constraints(self, ctx: RoundContext | None) -> Constraints:
        if ctx is None or (tuple(ctx.elements) == self.elements and ctx.max_atoms == self.max_atoms):
            return self.cons
        return Constraints(tuple(sorted(Element(e).Z for e in ctx.elements)), ctx.max_atoms, self.cons.spacegroups)

    def sample_structures(self, n: int, cons: Constraints, gen: torch.Generator
                          ) -> tuple[list[tuple[CrystalSeq, Structure, float]], dict[str, int]]:
        """Draw `n` sequences; return the (sequence, primitive structure, log p) that pass the
        structural checks, and the rejection counts."""
        with torch_threads(self.threads):
            seqs, logp = sample(self.policy, n, cons, gen, self.temperature)
        got, why = decode_checked(seqs, logp, self.tables, cons.max_atoms)
        return [(d.seq, d.structure, d.logp) for d in got], why

    def propose(self, n: int, ctx: RoundContext) -> list[Candidate]:
        if not self.ready:
            log.info("wyckoff: no weights yet (no checkpoint, data or history); proposing nothing")
            return []
        gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        cons = self._constraints(ctx)
        with torch_threads(self.threads):
            got, _why = draw(self.policy, n, cons, self.tables, gen, self.temperature,
                             prefer_balanced=self.prefer_balanced, oversample=self.oversample)
        out: list[Candidate] = []
        for d in got:
            c = Candidate(structure=d.structure, source=self.name, round=ctx.round,
                          meta={"spacegroup": d.seq.sg, "wyckoff": d.seq.to_json(), "logp": d.logp})
            # a structure without pymatgen's cached lattice arrays: Ray hands numpy arrays
            # back read-only, and cached LLL arrays then break distance calculations
            c.structure = Structure.from_dict(d.structure.as_dict())
            out.append(c)
        return out

    # -- learning --------------------------------------------------------------------------
    def _sequence(self, cand: Candidate) -> CrystalSeq | None:
        d = cand.meta.get("wyckoff")
        if d:
            return CrystalSeq.from_json(d)
        with quiet_stderr():
            return encode(cand.structure, self.tables, tol=self.symprec)

    def update(self, results: Sequence[tuple[Candidate, Measurement]]) -> dict[str, float]:
        """Fine-tune on this round's evaluated proposals. Returns mean_reward, kl (nats per
        crystal, to the reference), validity and uniqueness of fresh samples, and loss terms."""
        if not self.ready:
            return {"ready": 0.0}
        seqs, rewards = [], []
        for cand, m in results:
            q = self._sequence(cand)
            if q is not None and q.n_sites <= self.policy.cfg.max_sites:
                seqs.append(q)
                rewards.append(reward(cand, m, self.reward_terms))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.updates)
        metrics: dict[str, float] = {"ready": 1.0, "n_results": float(len(seqs))}
        with torch_threads(self.threads):
            if seqs:
                # only sequences the constrained policy could have drawn carry a gradient
                with torch.no_grad():
                    lp = self.policy.log_prob(collate(seqs, self.policy.cfg.max_sites), self.cons)
                keep = [i for i, v in enumerate(lp.tolist()) if math.isfinite(v)]
                seqs, rewards = [seqs[i] for i in keep], [rewards[i] for i in keep]
            if seqs:
                metrics["mean_reward"] = float(np.mean(rewards))
                upd, self.baseline = policy_update(self.policy, self.ref, seqs, rewards, self.cons,
                                                   self.baseline, self.rl_cfg, gen)
                metrics.update(upd)
                metrics["baseline"] = float(self.baseline)
                self.updates += 1
            metrics.update(self.sample_metrics(self.metric_samples, gen))
        return metrics

    def sample_metrics(self, n: int, gen: torch.Generator) -> dict[str, float]:
        """KL to the reference, structural validity and uniqueness of `n` fresh samples."""
        from pymatgen.analysis.structure_matcher import StructureMatcher

        if n <= 0:
            return {}
        kl, seqs = kl_estimate(self.policy, self.ref, self.cons, n, gen)
        valid = []
        for q in seqs:
            try:
                s = decode(q, self.tables)
            except Exception:
                continue
            if not structure_problem(s):
                valid.append(s)
        groups = StructureMatcher().group_structures(valid) if valid else []
        return {"kl": kl, "validity": len(valid) / n, "uniqueness": len(groups) / max(1, len(valid))}

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-safe: weights as base64 of torch.save'd CPU state dicts."""
        if not self.ready:
            return {"version": 1, "ready": False}
        return {"version": 1, "ready": True, "model": self.model_cfg.to_json(), "source": self.source,
                "policy": _to_b64(self.policy), "ref": _to_b64(self.ref),
                "baseline": self.baseline, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if not state.get("ready"):
            return
        cfg = ModelConfig(**state["model"])
        self.policy = WyckoffTransformer(cfg, self.tables)
        self.policy.load_state_dict(_from_b64(state["policy"]))
        self.ref = WyckoffTransformer(cfg, self.tables)
        self.ref.load_state_dict(_from_b64(state["ref"]))
        self.policy.eval()
        self.ref.eval()
        self.model_cfg = cfg
        self.source = state.get("source", "state")
        self.baseline = state.get("baseline")
        self.updates = int(state.get("updates", 0))

    # Ray ships a copy to each proposal task: send CPU tensors, rebuild the modules there
    def __getstate__(self) -> dict:
        d = self.__dict__.copy()
        for k in ("policy", "ref"):
            m = d.pop(k)
            d[f"_{k}_sd"] = None if m is None else {n: t.detach().cpu() for n, t in m.state_dict().items()}
        return d

    def __setstate__(self, d: dict) -> None:
        sds = {k: d.pop(f"_{k}_sd") for k in ("policy", "ref")}
        self.__dict__.update(d)
        for k, sd in sds.items():
            m = None
            if sd is not None:
                m = WyckoffTransformer(self.model_cfg, self.tables)
                m.load_state_dict(sd)
                m.eval()
            setattr(self, k, m)
