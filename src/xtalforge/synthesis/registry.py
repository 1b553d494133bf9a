"""Synthesizability models by file: the loop calls `load_model(cfg.synthesis.model)`."""

from __future__ import annotations

from pathlib import Path

from xtalforge.synthesis.model import PUSynthesizabilityModel


def load_model(path: str | Path | None):
    """The SynthesizabilityModel saved at `path` (None when no model is configured).

    One kind exists today; a second would read the header's `format` and dispatch here."""
    if path is None:
        return None
    return PUSynthesizabilityModel.load(path)
