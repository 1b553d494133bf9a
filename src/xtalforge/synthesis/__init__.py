"""Synthesizability models, compositional validity and synthesis-route suggestions."""
