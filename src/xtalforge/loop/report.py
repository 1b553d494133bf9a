"""What a person reads: the terminal summary, CIFs and CSV tables, MLflow artifacts."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from xtalforge.types import Status

if TYPE_CHECKING:
    from xtalforge.loop.campaign import Campaign


def progress(total: int, desc: str, enabled: bool = True) -> tqdm:
    return tqdm(total=total, desc=f"  {desc}", disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True)


def safe_name(s: str) -> str:
    """A file-system-safe name (formulas and ids only ever reach the disk through this)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:80] or "x"


def spacegroup(structure) -> str:
    try:
        sym, num = structure.get_space_group_info(symprec=0.1)
        return f"{sym} ({num})"
    except Exception:
        return "?"


def ranked(c: Campaign) -> list[dict]:
    """Every evaluated candidate with its current e_above_hull, best first; failures last."""
    e_hull = c.hull.all_e_above_hull()
    cands = {x.id: x for x in c.store.candidates(ids=list(c.measured))}
    rows = []
    for cid, m in c.measured.items():
        cand = cands.get(cid)
        if cand is None:
            continue
        s = m.relaxed if m.relaxed is not None else cand.structure
        rows.append({
            "id": cid,
            "formula": s.composition.reduced_formula,
            "spacegroup": spacegroup(s) if m.status == Status.ok else "",
            "natoms": len(s),
            "e_above_hull": e_hull.get(cid, float("nan")),
            "e_form_per_atom": m.values.get("e_form_per_atom", float("nan")),
            "energy_per_atom": m.values.get("energy_per_atom", float("nan")),
            "source": cand.source,
            "round": cand.round,
            "status": m.status.value,
            "error": m.error,
            "_structure": s,
        })
    rows.sort(key=lambda d: (d["status"] != "ok", d["e_above_hull"]))
    return rows


def _write_csv(rows: list[dict], path: Path) -> None:
    cols = [k for k in rows[0] if not k.startswith("_")] if rows else ["id"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _write_cifs(rows: list[dict], folder: Path, k: int) -> list[Path]:
    from pymatgen.io.cif import CifWriter

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for rank, d in enumerate([x for x in rows if x["status"] == "ok"][:k], start=1):
        p = folder / safe_name(f"{rank:02d}_{d['formula']}_{d['id']}.cif")
        CifWriter(d["_structure"], symprec=0.1).write_file(str(p))
        out.append(p)
    return out


def write_round(c: Campaign, r: int, metrics: dict) -> None:
    rows = ranked(c)
    folder = c.run_dir / "rounds" / f"round_{r:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, folder / "candidates.csv")
    _write_cifs(rows, folder / "cifs", c.cfg.tracking.top_k)
    if c.tracker is not None:
        c.tracker.log_artifacts(folder, f"rounds/round_{r:03d}")


def print_round(c: Campaign, r: int, m: dict) -> None:
    best = m.get("best_e_above_hull", float("nan"))
    c.echo(
        f"  round {r + 1}: {int(m.get('evaluations_mlip', 0))} relaxed "
        f"({int(m.get('failed_mlip', 0))} failed), best e_above_hull {best:+.3f} eV/atom, "
        f"{int(m.get('sun_count', 0))} on the hull, oracle {m.get('time_oracle_s', 0):.0f} s"
    )


def write_final(c: Campaign) -> dict[str, Path]:
    rows = ranked(c)
    _write_csv(rows, c.run_dir / "candidates.csv")
    cifs = _write_cifs(rows, c.run_dir / "top_cifs", max(c.cfg.tracking.top_k, 10))
    if c.tracker is not None:
        c.tracker.log_artifact(c.run_dir / "candidates.csv")
        c.tracker.log_artifacts(c.run_dir / "top_cifs", "top_cifs")
    return {"csv": c.run_dir / "candidates.csv", "cifs": c.run_dir / "top_cifs", "n_cifs": len(cifs)}


def print_final(c: Campaign, paths: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [d for d in ranked(c) if d["status"] == "ok"][:10]
    t = Table(title=f"Best candidates, {c.cfg.chemsys} (e_above_hull vs. MP elements + this campaign, MP2020)")
    for col in ("rank", "formula", "space group", "e_above_hull (eV/atom)", "e_form (eV/atom)", "source", "round"):
        t.add_column(col)
    for i, d in enumerate(rows, 1):
        t.add_row(str(i), d["formula"], d["spacegroup"], f"{d['e_above_hull']:+.3f}",
                  f"{d['e_form_per_atom']:+.3f}", d["source"], str(d["round"] + 1))
    Console().print(t)
    c.echo(f"candidates table: {paths['csv']}")
    c.echo(f"top CIFs:         {paths['cifs']}/")
    if c.tracker is not None:
        c.echo(f"MLflow:           {c.tracker.run_url()}")
        c.echo(f"                  open it with: xtalforge ui {c.run_dir}")
