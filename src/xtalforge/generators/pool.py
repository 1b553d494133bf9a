"""The pool generator: a fixed set of candidates read from a CSV of CIFs (backtesting).

`propose(n)` hands out the next `n` structures of the file that it has not proposed before,
in file order (or shuffled with `seed`), so a backtest can put the whole labelled set into the
pool in round 0 (n = its size) or trickle it in. Each candidate carries its row label in
`meta["row"]`, which the table oracle uses to look its values up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xtalforge.types import Candidate, Measurement, RoundContext


class PoolGenerator:
    name = "pool"

    def __init__(self, elements: Sequence[str] = (), max_atoms: int = 0, path: str | None = None,
                 cif_column: str = "cif", limit: int | None = None, seed: int | None = None, table=None):
        import pandas as pd

        if table is None:
            if not path:
                raise ValueError("pool generator: set options.path to a CSV with a 'cif' column")
            if not Path(path).is_file():
                raise ValueError(f"pool generator: no such file {path}")
            table = pd.read_csv(path, index_col=0)
        if cif_column not in table.columns:
            raise ValueError(f"pool generator: {path or 'the table'} has no {cif_column!r} column")
        labels = list(table.index)
        if seed is not None:
            labels = [labels[i] for i in np.random.default_rng(seed).permutation(len(labels))]
        if limit is not None:
            labels = labels[:limit]
        self.cifs = table[cif_column]
        self.labels = labels
        self.cursor = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self.labels)

    def propose(self, n: int, ctx: RoundContext | None = None) -> list[Candidate]:
        """The next `n` parseable structures; unparseable CIFs are skipped and counted."""
        from pymatgen.core import Structure

        out: list[Candidate] = []
        r = ctx.round if ctx is not None else 0
        while len(out) < n and self.cursor < len(self.labels):
            lab = self.labels[self.cursor]
            self.cursor += 1
            try:
                s = Structure.from_str(self.cifs[lab], fmt="cif")
            except Exception:
                self.failed += 1
                continue
            meta_lab = lab.item() if hasattr(lab, "item") else lab
            out.append(Candidate(structure=s, source=self.name, round=r, meta={"row": meta_lab}))
        return out

    def update(self, results: Sequence[tuple[Candidate, Measurement]]) -> dict[str, float]:
        return {"remaining": float(len(self.labels) - self.cursor), "unparseable": float(self.failed)}

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "failed": self.failed}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state.get("cursor", 0))
        self.failed = int(state.get("failed", 0))
