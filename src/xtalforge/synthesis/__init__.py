"""Validity filters, synthesizability models and synthesis-route suggestions.

- validity.check / filter_checked: structural + compositional hard filter (SMACT, pymatgen);
- model.PUSynthesizabilityModel: PU-bagged trees on composition features (`score`, `score_formulas`);
- metrics.synth_metrics, feasible_mask, weighted_acquisition: how the loop uses P(synthesizable);
- routes.routes_table: ranked solid-state routes from common precursors, with writers.
"""
