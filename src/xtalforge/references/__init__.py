"""Known materials: reference entries, the convex hull, novelty against known structures."""
