"""Oracles: the things that measure candidates (the MLIP, a lab, a table)."""
