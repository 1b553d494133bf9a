"""Known materials: reference entries, the convex hulls, novelty against known structures.

- `snapshot`: the shipped Materials Project snapshot's file format (`build_snapshot` makes it);
- `known`: `load_known(chemsys, sources=...)`, the known phases of a system and its subsystems;
- `hull`: `Hull`, MP2020 corrections of MLIP energies, reference-entry files, mp-api fetches;
- `relaxed`: known phases relaxed by the campaign's MLIP, cached per (material id, model, settings);
- `hulls`: `build_reference_hulls`, the DFT reference hull and the oracle-consistent hull together;
- `novelty`: `known_match`, StructureMatcher against the known structures.
"""
