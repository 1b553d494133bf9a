"""Symmetry-aware autoregressive crystal generator (space group -> Wyckoff sites -> coordinates
-> lattice), pre-trained by likelihood and fine-tuned each round from oracle rewards."""

from xtalforge.generators.wyckoff.encoding import CrystalSeq, decode, encode
from xtalforge.generators.wyckoff.generator import WyckoffGenerator
from xtalforge.generators.wyckoff.model import Constraints, ModelConfig, WyckoffTransformer

__all__ = ["Constraints", "CrystalSeq", "ModelConfig", "WyckoffGenerator", "WyckoffTransformer", "decode", "encode"]
