"""What a person reads: the terminal summary, CIFs and CSV tables, plots, MLflow artifacts and
the final report.

Every file lands in the run folder first and is then copied to MLflow, so the run folder alone
is a complete record even when the tracking server is unreachable.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from xtalforge.loop import plots
from xtalforge.types import Status

if TYPE_CHECKING:
    from xtalforge.loop.results import CampaignResults
    from xtalforge.loop.tracking import Tracker

# plot file stem -> MLflow image key; the keys are part of the dashboard's contract
PLOTS = {
    "discovery_curve": "discovery_curve",
    "convex_hull": "convex_hull",
    "pareto_front": "pareto_front",
    "surrogate_parity": "surrogate_parity",
}


def progress(total: int, desc: str, enabled: bool = True) -> tqdm:
    return tqdm(total=total, desc=f"  {desc}", disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True)


@contextlib.contextmanager
def stage(desc: str, enabled: bool = True) -> Iterator[None]:
    """A spinner on stderr while a stage without a natural count runs (only on a terminal)."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(f"  {desc}…", spinner="dots"):
        yield


def safe_name(s: str) -> str:
    """A file-system-safe name (formulas and ids only ever reach the disk through this)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:80] or "x"


def spacegroup(structure) -> str:
    try:
        sym, num = structure.get_space_group_info(symprec=0.1)
        return f"{sym} ({num})"
    except Exception:
        return "?"


def _second_value(cand, m) -> float:
    v = m.values.get("p_synth", cand.meta.get("p_synth") if cand.meta else None)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def ranked(c: CampaignResults) -> list[dict]:
    """Every evaluated candidate with its current e_above_hull, best first; failures last.

    Each row says how the candidate was found (generator, round, parents), whether it is a hit,
    and what the surrogate predicted for it when it was picked."""
    e_hull = c.hull.all_e_above_hull()
    cands = {x.id: x for x in c.store.candidates(ids=list(c.measured))}
    hits = c.hits()
    novel = c.novel(list(cands.values()))
    pred = c.predictions()
    rows = []
    for cid, m in c.measured.items():
        cand = cands.get(cid)
        if cand is None:
            continue
        s = m.relaxed if m.relaxed is not None else cand.structure
        p = pred.get(cid, (float("nan"), float("nan"), -1))
        rows.append({
            "id": cid,
            "formula": s.composition.reduced_formula,
            "spacegroup": spacegroup(s) if m.status == Status.ok else "",
            "natoms": len(s),
            "e_above_hull": e_hull.get(cid, float("nan")),
            "e_form_per_atom": m.values.get("e_form_per_atom", float("nan")),
            "energy_per_atom": m.values.get("energy_per_atom", float("nan")),
            "density": m.values.get("density", float("nan")),
            "p_synth": _second_value(cand, m),
            "hit": cid in hits,
            "novel": cid in novel,
            "pred_e_above_hull": p[0],
            "pred_e_above_hull_std": p[1],
            "source": cand.source,
            "round": cand.round,
            "evaluated_round": m.round,
            "parents": ";".join(cand.parents),
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


def _cif_header(d: dict) -> str:
    """CIF comment lines with the candidate's values: a CIF file read alone still says what it is."""
    lines = [f"# xtalforge candidate {d['id']} ({d['formula']}, {d['spacegroup']})",
             f"# e_above_hull {d['e_above_hull']:+.4f} eV/atom; e_form {d['e_form_per_atom']:+.4f} eV/atom"
             f"; hit: {'yes' if d['hit'] else 'no'}",
             f"# found by {d['source']} in round {d['round'] + 1}"
             + (f" from parents {d['parents']}" if d["parents"] else "")]
    if math.isfinite(d["pred_e_above_hull"]):
        lines.append(f"# surrogate predicted {d['pred_e_above_hull']:+.4f} ± {d['pred_e_above_hull_std']:.4f} eV/atom")
    return "\n".join(lines) + "\n"


def _write_cifs(rows: list[dict], folder: Path, k: int) -> list[Path]:
    """The top `k` successful candidates as CIFs with their values, plus top_candidates.csv."""
    from pymatgen.io.cif import CifWriter

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    top = [x for x in rows if x["status"] == "ok"][:k]
    for rank, d in enumerate(top, start=1):
        p = folder / safe_name(f"{rank:02d}_{d['formula']}_{d['id']}.cif")
        p.write_text(_cif_header(d) + str(CifWriter(d["_structure"], symprec=0.1)))
        out.append(p)
    if top:
        _write_csv(top, folder / "top_candidates.csv")
    return out


def write_plots(c: CampaignResults, rows: list[dict], folder: Path) -> dict[str, Path]:
    """The four dashboard plots from the campaign's current state, as PNGs in `folder`."""
    return render_plots(plot_inputs(c, rows), folder)


def plot_inputs(c: CampaignResults, rows: list[dict]) -> dict[str, Callable[[Path], Path]]:
    """One drawing job per dashboard plot, holding copies of the data it draws: the jobs read
    nothing from the campaign, so they can run in a thread while the campaign moves on."""
    thr = c.cfg.hull.stable_threshold
    order = list(c.measured)  # insertion order: the order results landed
    by_id = {d["id"]: d for d in rows}
    seq = [by_id[i] for i in order if i in by_id]
    ok = [d for d in rows if d["status"] == "ok"]
    predicted = [d for d in ok if math.isfinite(d["pred_e_above_hull"])]
    title = f"{c.cfg.chemsys}: {sum(d['hit'] for d in rows)} hits in {len(rows)} oracle calls"
    curve = ([d["e_above_hull"] if d["status"] == "ok" else float("nan") for d in seq],
             [d["hit"] for d in seq], [d["evaluated_round"] for d in seq])
    # the hull replaces (never edits) its PhaseDiagram when an entry arrives: a reference is a snapshot
    hull = (c.hull.phase_diagram, dict(c.hull.campaign), c.hull.all_e_above_hull())
    hull_title = f"Convex hull of {c.cfg.chemsys} (MP elements + this campaign)"
    pareto_args, pareto_kw = _pareto_inputs(c, ok)
    parity = ([d["e_above_hull"] for d in predicted], [d["pred_e_above_hull"] for d in predicted],
              [d["pred_e_above_hull_std"] for d in predicted], [d["evaluated_round"] for d in predicted])
    return {
        "discovery_curve": lambda p: plots.discovery_curve(p, *curve, thr, title),
        "convex_hull": lambda p: plots.hull_plot(p, *hull, thr, title=hull_title),
        "pareto_front": lambda p: plots.pareto_plot(p, *pareto_args, **pareto_kw),
        "surrogate_parity": lambda p: plots.parity_plot(p, *parity),
    }


def render_plots(jobs: dict[str, Callable[[Path], Path]], folder: Path) -> dict[str, Path]:
    """Draw each job to `folder`/<name>.png. A plot that fails is replaced by a figure naming the
    error: a figure must never stop a campaign, and a missing image in the dashboard would
    hide that something went wrong."""
    out: dict[str, Path] = {}
    for name, job in jobs.items():
        path = folder / f"{name}.png"
        try:
            out[name] = job(path)
        except Exception as err:
            out[name] = plots.message(path, name.replace("_", " "), f"plot failed: {type(err).__name__}: {err}")
    return out


def _pareto_inputs(c: CampaignResults, ok: list[dict]) -> tuple[tuple, dict]:
    """Arguments of plots.pareto_plot for the front of the campaign's objectives (see
    CampaignResults.objectives); with one objective and no synthesizability scores, e_above_hull
    against density so the plot still informs."""
    names, minimize = c.objectives()
    table = c.objective_values(names, c.hull.all_e_above_hull())
    formula = {d["id"]: d["formula"] for d in ok}
    if table:
        ids = list(table)
        cols = np.array([table[i] for i in ids])
        unit = {"e_above_hull": " (eV/atom)"}
        return ((cols[:, 0], cols[:, 1], [formula.get(i, "") for i in ids],
                 names[0] + unit.get(names[0], ""), names[1] + unit.get(names[1], "")),
                {"maximize_x": not minimize[0], "maximize_y": not minimize[1]})
    return (([d["e_above_hull"] for d in ok], [d["density"] for d in ok], [d["formula"] for d in ok]),
            {"y_label": "density (g/cm³)",
             "title": "e_above_hull vs density (one objective, no synthesizability scores)"})


@dataclass
class RoundRecord:
    """Everything a round's files and MLflow artifacts are made of, copied out of the campaign
    at the end of the round, so that writing them can overlap the next round."""

    round: int
    folder: Path
    rows: list[dict]
    top_k: int
    plots: dict[str, Callable[[Path], Path]]
    description: str
    config: Path | None


def snapshot_round(c: CampaignResults, r: int, metrics: dict, rows: list[dict] | None = None) -> RoundRecord:
    """The round's record, from the campaign as it stands (cheap: no file is written)."""
    rows = ranked(c) if rows is None else rows
    config = c.run_dir / "config.yaml"
    return RoundRecord(r, c.run_dir / "rounds" / f"round_{r:03d}", rows, c.cfg.tracking.top_k,
                       plot_inputs(c, rows), run_description(c, r, metrics, rows),
                       config if config.is_file() else None)


def write_record(rec: RoundRecord, tracker: Tracker | None) -> None:
    """The round's candidates.csv, top CIFs and plots in rounds/round_NNN/, copied to MLflow
    with the plots as images at the round's step."""
    rec.folder.mkdir(parents=True, exist_ok=True)
    _write_csv(rec.rows, rec.folder / "candidates.csv")
    _write_cifs(rec.rows, rec.folder / "cifs", rec.top_k)
    figs = render_plots(rec.plots, rec.folder / "plots")
    if tracker is not None:
        tracker.log_artifacts(rec.folder, f"rounds/round_{rec.round:03d}")
        if rec.config is not None:
            tracker.log_artifact(rec.config)
        for name, path in figs.items():
            tracker.log_image(path, key=PLOTS[name], step=rec.round)
        tracker.set_description(rec.description)


class RecordWriter:
    """Writes each round's record: at once, or held back and written in `background` during the
    next round's oracle (`later`). Writing never raises: the files are derived from the store,
    never worth a campaign."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.tracker: Tracker | None = None
        self.background = None  # a concurrent.futures executor, set by the campaign's run()
        self._held: RoundRecord | None = None
        self._writing = None

    def record(self, rec: RoundRecord, later: bool) -> None:
        self.flush(wait=True)
        if later:
            self._held = rec
            return
        with stage("writing tables, CIFs and plots", self.progress):
            self._write(rec)

    def flush(self, wait: bool = False) -> None:
        """Start writing the held-back record in the background (or, with `wait`, write it and
        wait for it and any write still running)."""
        rec, self._held = self._held, None
        if self._writing is not None:
            self._writing.result()
            self._writing = None
        if rec is None:
            return
        if wait or self.background is None:
            self._write(rec)
            return
        self._writing = self.background.submit(self._write, rec)

    def _write(self, rec: RoundRecord) -> None:
        try:
            write_record(rec, self.tracker)
        except Exception as err:
            import logging

            logging.getLogger(__name__).warning("writing round %d's files failed: %s: %s",
                                                rec.round + 1, type(err).__name__, err)


def run_description(c: CampaignResults, r: int, m: dict, rows: list[dict]) -> str:
    """Markdown for the top of the MLflow run page: where the campaign stands, its best finds."""
    lines = [f"**{c.cfg.chemsys}**, round {r + 1} of {c.cfg.rounds}: "
             f"{int(m.get('sun_count', 0))} hits in {int(m.get('evaluations_total', 0))} oracle calls, "
             f"best e_above_hull {m.get('best_e_above_hull', float('nan')):+.3f} eV/atom.", "",
             "| # | formula | space group | e_above_hull (eV/atom) | found by | round |",
             "|---|---|---|---|---|---|"]
    for i, d in enumerate([x for x in rows if x["status"] == "ok"][:5], 1):
        lines.append(f"| {i} | {d['formula']} | {d['spacegroup']} | {d['e_above_hull']:+.3f} "
                     f"| {d['source']} | {d['round'] + 1} |")
    lines += ["", "Plots: artifacts `rounds/round_NNN/plots/`; final report: `report/report.html`."]
    return "\n".join(lines)


def _fmt(v: float, spec: str = ".3f") -> str:
    return "—" if v is None or not math.isfinite(float(v)) else format(float(v), spec)


def print_round(c: CampaignResults, generators: list[str], r: int, m: dict, rows: list[dict] | None = None,
                echo: Callable[[str], None] = print) -> None:
    """A one-screen summary of the round: per generator, then results, surrogate and timings."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"round {r + 1}/{c.cfg.rounds} · {c.cfg.chemsys}", title_justify="left")
    for col in ("generator", "proposed", "valid", "unique", "novel", "evaluated", "hits so far"):
        t.add_column(col, justify="left" if col == "generator" else "right")
    rows = {d["id"]: d for d in (ranked(c) if rows is None else rows)}
    for g in generators:
        mine = [d for d in rows.values() if d["source"] == g]
        t.add_row(g, *(str(int(m.get(f"{k}_{g}", 0))) for k in ("proposals", "valid", "unique", "novel")),
                  str(sum(d["evaluated_round"] == r for d in mine)), str(sum(d["hit"] for d in mine)))
    t.add_row("[b]all[/b]", *(str(int(m.get(k, 0))) for k in ("proposals", "valid", "unique", "novel")),
              str(int(m.get(f"evaluations_{c.screen}", 0))), str(int(m.get("sun_count", 0))))
    stages = ("generate", "oracle_startup", "featurize", "acquire", "oracle", "update", "record")
    lines = [
        f"best e_above_hull {_fmt(m.get('best_e_above_hull'), '+.3f')} eV/atom · hits {int(m.get('sun_count', 0))} "
        f"({_fmt(m.get('sun_rate'), '.1%')} of {int(m.get('evaluations_total', 0))} calls) · "
        f"failed {int(m.get(f'failed_{c.screen}', 0))} · oracle use {_fmt(m.get('oracle_utilization'), '.0%')}",
        f"surrogate MAE {_fmt(m.get('surrogate_mae_last_round'))} eV/atom, within 1σ "
        f"{_fmt(m.get('surrogate_within_1sigma'), '.0%')} · pool {int(m.get('pool_size', 0))}",
        "time (s): " + " · ".join(f"{s.replace('oracle_', '')} {_fmt(m.get(f'time_{s}_s'), '.1f')}"
                                  + (" (ahead)" if s == "generate" and m.get("generated_ahead") else "")
                                  for s in stages
                                  if s in ("generate", "oracle") or (m.get(f"time_{s}_s") or 0.0) >= 0.05)
        + f" · round {_fmt(m.get('time_round_s'), '.0f')}",
    ]
    buf = io.StringIO()
    con = Console(file=buf, width=110, force_terminal=sys.stdout.isatty())
    con.print(t)
    for line in lines:
        con.print("  " + line, highlight=False)
    echo(buf.getvalue().rstrip("\n"))


# -- the end of a campaign ----------------------------------------------------------------
def write_final(c: CampaignResults, tracker: Tracker | None,
                routes: dict[str, list[dict]] | None = None) -> dict[str, Path]:
    """candidates.csv, top_cifs/ and the report (report/report.md and .html) in the run folder,
    all copied to MLflow. `routes` maps candidate id to synthesis routes for the report."""
    rows = ranked(c)
    _write_csv(rows, c.run_dir / "candidates.csv")
    cifs = _write_cifs(rows, c.run_dir / "top_cifs", max(c.cfg.tracking.top_k, 10))
    figs = write_plots(c, rows, c.run_dir / "report" / "plots")
    md, html = write_report(c, rows, figs, c.run_dir / "report", routes,
                            run_url=tracker.run_url() if tracker else "—")
    if tracker is not None:
        tracker.log_artifact(c.run_dir / "candidates.csv")
        tracker.log_artifacts(c.run_dir / "top_cifs", "top_cifs")
        tracker.log_artifacts(c.run_dir / "report", "report")
    return {"csv": c.run_dir / "candidates.csv", "cifs": c.run_dir / "top_cifs", "n_cifs": len(cifs),
            "report_md": md, "report_html": html}


def write_report(c: CampaignResults, rows: list[dict], figs: dict[str, Path], folder: Path,
                 routes: dict[str, list[dict]] | None = None, top: int = 10, run_url: str = "—") -> tuple[Path, Path]:
    """The campaign report as Markdown (links to the PNGs) and self-contained HTML (PNGs inline).

    `routes` (candidate id -> list of route dicts, e.g. precursors, temperature, score) comes
    from the synthesis planner; without it the report says no routes were suggested."""
    from xtalforge.loop.report_doc import render_html, render_markdown

    folder.mkdir(parents=True, exist_ok=True)
    ok = [d for d in rows if d["status"] == "ok"]
    formulas = {d["id"]: d["formula"] for d in rows}
    for d in ok:  # parents by formula where the campaign knows them
        d["_parents"] = ", ".join(f"{formulas.get(p, '')} ({p})".strip() for p in d["parents"].split(";") if p)
    m = c.store.round_metrics()
    last = m[max(m)] if m else {}
    doc = {
        "title": f"xtalforge campaign {c.cfg.name}: {c.cfg.chemsys}",
        "facts": [
            ("run folder", str(c.run_dir)),
            ("rounds done", f"{sum(1 for s in c.store.stages().values() if s == 'done')} of {c.cfg.rounds}"),
            (f"oracle calls ({c.screen})", str(len(rows))),
            ("hits (stable, unique, novel)", f"{sum(d['hit'] for d in rows)} "
                                             f"(threshold {c.cfg.hull.stable_threshold:g} eV/atom)"),
            ("best e_above_hull", f"{_fmt(ok[0]['e_above_hull'], '+.3f')} eV/atom" if ok else "—"),
            ("surrogate MAE, last round", f"{_fmt(last.get('surrogate_mae_last_round'))} eV/atom"),
            ("config hash", c.cfg.config_hash()),
            ("MLflow run", run_url),
        ],
        "plots": [(name.replace("_", " "), path) for name, path in figs.items()],
        "top": ok[:top],
        "routes": routes,
    }
    md = folder / "report.md"
    md.write_text(render_markdown(doc, folder))
    html = folder / "report.html"
    html.write_text(render_html(doc))
    return md, html


def print_final(c: CampaignResults, paths: dict, tracker: Tracker | None = None,
                echo: Callable[[str], None] = print) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [d for d in ranked(c) if d["status"] == "ok"][:10]
    t = Table(title=f"Best candidates, {c.cfg.chemsys} (e_above_hull vs. MP elements + this campaign)")
    for col in ("rank", "formula", "space group", "e_above_hull (eV/atom)", "e_form (eV/atom)", "hit", "source", "round"):
        t.add_column(col)
    for i, d in enumerate(rows, 1):
        t.add_row(str(i), d["formula"], d["spacegroup"], f"{d['e_above_hull']:+.3f}",
                  f"{d['e_form_per_atom']:+.3f}", "★" if d["hit"] else "", d["source"], str(d["round"] + 1))
    # a pipe or a log file gets 120 columns, not the 80 rich assumes
    Console(width=None if sys.stdout.isatty() else 120).print(t)
    echo(f"candidates table: {paths['csv']}")
    echo(f"top CIFs:         {paths['cifs']}/")
    if paths.get("report_html"):
        echo(f"report:           {paths['report_html']}")
    if tracker is not None:
        echo(f"MLflow:           {tracker.run_url()}")
        echo(f"                  open it with: xtalforge ui {c.run_dir}")


def synthesis_routes(c: CampaignResults, written: list[Path] | None = None) -> dict[str, list[dict]] | None:
    """Solid-state routes for the best candidates: candidate id -> rows (reaction, precursors,
    by-products, reaction energy per atom), best first. Also written to synthesis_routes.csv
    and .md in the run folder (their paths appended to `written`)."""
    import logging

    scfg = c.cfg.synthesis
    if scfg.routes_per_target == 0:
        return None
    from xtalforge.synthesis.routes import routes_table, targets_from_hull, write_routes_csv, write_routes_markdown

    e_hull = c.hull.all_e_above_hull()
    top = sorted(e_hull, key=e_hull.get)[: max(c.cfg.tracking.top_k, 1)]
    try:
        rows = routes_table(targets_from_hull(c.hull, top), hull=c.hull, references=c.hull.references,
                            precursors=scfg.precursors, per_target=scfg.routes_per_target)
    except Exception as err:  # a route planner problem must not lose the campaign's report
        logging.getLogger(__name__).warning("synthesis routes failed: %s", err)
        return None
    for writer, name in ((write_routes_csv, "synthesis_routes.csv"), (write_routes_markdown, "synthesis_routes.md")):
        path = writer(rows, c.run_dir / name)
        if written is not None:
            written.append(path)
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["candidate_id"], []).append(row)
    return out

