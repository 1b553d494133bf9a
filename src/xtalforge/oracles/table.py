"""The table oracle: looks measured values up in a labelled CSV, for backtesting the loop.

CAMD's after-the-fact sampler in the Oracle role: `submit` queues candidates, `collect` hands
back what is "done", `pending` lists what is not. With `delay` > 0 a result only comes back
after that many `collect` calls, which lets a backtest exercise the pending-point machinery the
way a slow lab would. Values that are NaN or infinite come back as a failed measurement that
names the column, never as a number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xtalforge.types import Candidate, Fidelity, Measurement, Status


class TableError(ValueError):
    """A table that cannot serve as an oracle; the message names the file and column."""


def read_table(path: str | Path) -> pd.DataFrame:
    """A CDVAE-style CSV (first column the row index, a `cif` column, value columns)."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: no such file")
    return pd.read_csv(p, index_col=0)


class TableOracle:
    """Oracle role over a DataFrame. A candidate is found by `candidate.meta[key]` (the pool
    generator sets it to the row label) or, failing that, by its canonical id among the table's
    CIFs (built once, on first need)."""

    def __init__(self, table: pd.DataFrame | str | Path, columns: Sequence[str] | None = None,
                 name: str = "table", fidelity: int = int(Fidelity.lab), key: str = "row",
                 cif_column: str = "cif", delay: int = 0):
        df = table if isinstance(table, pd.DataFrame) else read_table(table)
        if columns is None:
            columns = [c for c in df.columns if c != cif_column and pd.api.types.is_numeric_dtype(df[c])]
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise TableError(f"column(s) {', '.join(missing)} not in the table (have: {', '.join(map(str, df.columns))})")
        if not columns:
            raise TableError("the table has no numeric value column to serve")
        self.df = df
        self.columns = list(columns)
        self.name, self.fidelity, self.key = name, int(fidelity), key
        self.cif_column, self.delay = cif_column, delay
        self._by_id: dict[str, object] | None = None
        self._queue: list[tuple[Candidate, int, float, int]] = []  # (candidate, collects left, submitted at, round)

    def _row(self, c: Candidate):
        label = c.meta.get(self.key)
        if label is not None:
            for lab in (label, str(label)):
                if lab in self.df.index:
                    return lab
            try:
                if int(label) in self.df.index:
                    return int(label)
            except (TypeError, ValueError):
                pass
        if self._by_id is None:
            from pymatgen.core import Structure

            from xtalforge.types import canonical_id

            if self.cif_column not in self.df.columns:
                self._by_id = {}
            else:
                self._by_id = {}
                for lab, cif in self.df[self.cif_column].items():
                    try:
                        self._by_id.setdefault(canonical_id(Structure.from_str(cif, fmt="cif")), lab)
                    except Exception:
                        continue
        return self._by_id.get(c.id)

    def _measure(self, c: Candidate, submitted: float, round: int) -> Measurement:
        base = dict(candidate_id=c.id, oracle=self.name, fidelity=self.fidelity, round=round,
                    cost_s=time.time() - submitted)
        lab = self._row(c)
        if lab is None:
            return Measurement(**base, status=Status.failed, error="not in the table")
        row = self.df.loc[lab]
        values, bad = {}, []
        for col in self.columns:
            try:
                v = float(row[col])
            except (TypeError, ValueError):
                v = math.nan
            (values.__setitem__(col, v) if math.isfinite(v) else bad.append(col))
        if bad:
            return Measurement(**base, values=values, status=Status.failed,
                               error=f"non-finite value in the table for {', '.join(bad)} (row {lab})")
        return Measurement(**base, values=values, status=Status.ok)

    role = "screen"

    # -- Oracle role -----------------------------------------------------------------------
    def submit(self, candidates: Sequence[Candidate], round: int = -1) -> None:
        now = time.time()
        for c in candidates:
            self._queue.append((c, self.delay, now, round if round >= 0 else c.round))

    def collect(self, timeout_s: float = 0.0) -> list[Measurement]:
        """What is due now; each call brings every queued item one call closer to due."""
        done, keep = [], []
        for c, left, at, rnd in self._queue:
            if left <= 0:
                done.append(self._measure(c, at, rnd))
            else:
                keep.append((c, left - 1, at, rnd))
        self._queue = keep
        return done

    def pending(self) -> list[str]:
        return [c.id for c, *_ in self._queue]

    def shutdown(self) -> None:
        self._queue = []

    def values(self, column: str) -> np.ndarray:
        """Every finite value of `column` in the table (for backtest bookkeeping)."""
        v = pd.to_numeric(self.df[column], errors="coerce").to_numpy(dtype=float)
        return v[np.isfinite(v)]
