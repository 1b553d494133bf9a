"""The shipped oracle kinds, registered in one place. A new kind is one module plus one line
here (or one `register_oracle` call from the user's own module)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from xtalforge.config import LabConfig, MLIPConfig
from xtalforge.oracles.base import Oracle, OracleContext, register_oracle


class TableOptions(BaseModel):
    """A labelled CSV as the screening oracle (backtests): CDVAE-style, a `cif` column and
    numeric value columns."""

    model_config = ConfigDict(extra="forbid")
    name: str = "table"
    path: str = Field(description="the CSV file")
    columns: list[str] | None = Field(None, description="value columns served (default: every numeric one)")
    key: str = Field("row", description="candidate.meta key holding the row label")
    delay: int = Field(0, ge=0, description="collect calls before a result comes back")


def _mlip(opts: MLIPConfig, ctx: OracleContext) -> Oracle:
    from xtalforge.oracles.mlip.oracle import MLIPOracle, resolve_workers

    return MLIPOracle(None, name=opts.name, workers=resolve_workers(opts.workers), fmax=opts.fmax, max_steps=opts.max_steps,
                      relax_cell=opts.relax_cell, timeout_s=opts.timeout_s,
                      apply_mp2020=ctx.config.hull.mp2020_for(opts.model), model=opts.model,
                      model_options=opts.model_options, batched=opts.batched, max_batch=opts.max_batch,
                      device=opts.device, properties=opts.properties)


def _lab(opts: LabConfig, ctx: OracleContext) -> Oracle:
    from xtalforge.oracles.lab.oracle import LabOracle

    return LabOracle(opts, ctx.store, ctx.run_dir)


def _table(opts: TableOptions, ctx: OracleContext) -> Oracle:
    from xtalforge.oracles.table import TableOracle

    return TableOracle(opts.path, columns=opts.columns, name=opts.name, fidelity=1, key=opts.key, delay=opts.delay)


register_oracle("mlip", MLIPConfig, _mlip, role="screen")
register_oracle("lab", LabConfig, _lab, role="confirm")
register_oracle("table", TableOptions, _table, role="screen")
