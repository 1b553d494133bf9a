"""The MLIP oracle: CHGNet (or an ASE calculator) relaxations on a Ray actor pool."""
