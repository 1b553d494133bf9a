"""Validity filters, synthesizability models and synthesis-route suggestions."""
