"""Acquisition: which pool candidates the expensive oracles evaluate next."""
