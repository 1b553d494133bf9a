"""Oracles: the MLIP (CHGNet relaxation), the convex hull, the GP surrogate, labs and tables."""
