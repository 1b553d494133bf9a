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
# (docs/metrics.md): the section before the '/' is where MLflow shows the chart
PLOTS = {
    "discovery_curve": "discovery/discovery_curve",
    "convex_hull": "discovery/convex_hull",
    "pareto_front": "discovery/pareto_front",
    "surrogate_parity": "discovery/surrogate_parity",
    "budget_split": "generators/budget_split",
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


def _spacegroup_of(c: CampaignResults, cid: str, s) -> str:
    """`spacegroup` of an evaluated candidate's result, found once: every round's table lists
    every result, and spglib on each was most of the round's bookkeeping."""
    if cid not in c.spacegroups:
        c.spacegroups[cid] = spacegroup(s)
    return c.spacegroups[cid]


def _second_value(cand, m) -> float:
    v = m.values.get("p_synth", cand.meta.get("p_synth") if cand.meta else None)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def novelty(d: dict) -> str:
    """"new", or "rediscovered (mp-XXXX)" for a candidate that matches a known material."""
    return f"rediscovered ({d['known_match']})" if d.get("known_match") else "new"


def ranked(c: CampaignResults) -> list[dict]:
    """Every evaluated candidate with its current e_above_hull, best first; failures last.

    Each row says how the candidate was found (generator, round, parents), whether it is a hit,
    whether it matches a known material (`known_match`: its id, or "") and what the surrogate
    predicted for it when it was picked."""
    e_hull = c.hull.all_e_above_hull()
    e_dft = c.e_above_hull_dft()
    cands = {x.id: x for x in c.store.candidates(ids=list(c.measured))}
    hits = c.hits()
    # candidate id -> id of the known material it matches ("" for a new one): novel is no match
    known = {cid: c.known_match(x) for cid, x in cands.items()}
    pred = c.predictions()
    rows = []
    for cid, m in c.measured.items():
        cand = cands.get(cid)
        if cand is None:
            continue
        s = m.relaxed if m.relaxed is not None else cand.structure
        p = pred.get(cid, (float("nan"), float("nan"), -1))
        match = str(known.get(cid) or (cand.meta or {}).get("known_match") or "")
        rows.append({
            "id": cid,
            "formula": s.composition.reduced_formula,
            "spacegroup": _spacegroup_of(c, cid, s) if m.status == Status.ok else "",
            "natoms": len(s),
            "e_above_hull": e_hull.get(cid, float("nan")),
            "e_above_hull_dft": e_dft.get(cid, float("nan")),
            "e_form_per_atom": m.values.get("e_form_per_atom", float("nan")),
            "energy_per_atom": m.values.get("energy_per_atom", float("nan")),
            "density": m.values.get("density", float("nan")),
            "p_synth": _second_value(cand, m),
            "hit": cid in hits,
            "novel": not match,
            "known_match": match,
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


def cif_name(rank: int, d: dict) -> str:
    """The file name of the rank-th best candidate's CIF (1-based rank)."""
    return safe_name(f"{rank:02d}_{d['formula']}_{d['id']}.cif")


def _write_cifs(rows: list[dict], folder: Path, k: int) -> list[Path]:
    """The top `k` successful candidates as CIFs with their values, plus top_candidates.csv."""
    from pymatgen.io.cif import CifWriter

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    top = [x for x in rows if x["status"] == "ok"][:k]
    for rank, d in enumerate(top, start=1):
        p = folder / cif_name(rank, d)
        p.write_text(_cif_header(d) + str(CifWriter(d["_structure"], symprec=0.1)))
        out.append(p)
    if top:
        _write_csv(top, folder / "top_candidates.csv")
    return out


def write_plots(c: CampaignResults, rows: list[dict], folder: Path) -> dict[str, Path]:
    """The dashboard plots from the campaign's current state, as PNGs in `folder`."""
    return render_plots(plot_inputs(c, rows), folder)


def surrogate_error(rows: list[dict]) -> dict[str, float]:
    """The surrogate's error, one definition for the report and the parity plot: over every
    evaluated pick that had a prediction, the mean |predicted - measured| e_above_hull
    (eV/atom; predicted when picked, measured against the current hull), the share measured
    within 1 predicted sigma, and n."""
    pts = [(d["pred_e_above_hull"], d["pred_e_above_hull_std"], d["e_above_hull"]) for d in rows
           if d["status"] == "ok" and math.isfinite(d["pred_e_above_hull"]) and math.isfinite(d["e_above_hull"])]
    if not pts:
        return {"mae": float("nan"), "within_1sigma": float("nan"), "n": 0}
    err = np.array([abs(p - y) for p, _, y in pts])
    sig = np.array([max(s, 1e-9) if math.isfinite(s) else 1e-9 for _, s, _ in pts])
    return {"mae": float(err.mean()), "within_1sigma": float(np.mean(err <= sig)), "n": len(pts)}


def budget_shares(c: CampaignResults) -> dict[str, list[float]]:
    """Generator -> its share of each round's proposals (round 1 first), from the store."""
    rm = c.store.round_metrics()
    names = [g.name for g in c.cfg.generators]
    return {g: [float(rm[r].get(f"budget_share_{g}", float("nan"))) for r in sorted(rm)] for g in names}


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
    hull_title = (f"Convex hull of {c.cfg.chemsys} (known phases relaxed by the MLIP + this campaign)"
                  if getattr(c.hull, "oracle", None) is not None else f"Convex hull of {c.cfg.chemsys} (known phases + this campaign)")
    pareto = _pareto_inputs(c, ok)
    parity = ([d["e_above_hull"] for d in predicted], [d["pred_e_above_hull"] for d in predicted],
              [d["pred_e_above_hull_std"] for d in predicted], [d["evaluated_round"] for d in predicted])
    err = surrogate_error(rows)
    parity_title = (f"Surrogate parity: MAE {err['mae']:.3f} eV/atom, {err['within_1sigma']:.0%} within 1σ "
                    f"(n={err['n']}, every pick with a prediction)") if err["n"] else ""
    shares = budget_shares(c)
    return {
        "discovery_curve": lambda p: plots.discovery_curve(p, *curve, thr, title),
        "convex_hull": lambda p: plots.hull_plot(p, *hull, thr, title=hull_title),
        "pareto_front": ((lambda p: plots.pareto_plot(p, *pareto[0], **pareto[1])) if pareto else
                         (lambda p: plots.message(p, "Pareto front", NO_PARETO))),
        "surrogate_parity": lambda p: plots.parity_plot(p, *parity, title=parity_title),
        "budget_split": lambda p: plots.budget_split_plot(p, shares),
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


NO_PARETO = ("This campaign has one objective (e_above_hull) and its candidates carry no\n"
             "synthesizability score: there is no trade-off, so no Pareto front. Name two\n"
             "acquisition.objectives, or a synthesis.model, to get one.")


def _pareto_inputs(c: CampaignResults, ok: list[dict]) -> tuple[tuple, dict] | None:
    """Arguments of plots.pareto_plot for the front of the campaign's objectives (see
    CampaignResults.objectives), or None when the campaign has only one (nothing trades off)."""
    names, minimize = c.objectives()
    table = c.objective_values(names, c.hull.all_e_above_hull())
    formula = {d["id"]: d["formula"] for d in ok}
    if not table:
        return None
    ids = list(table)
    cols = np.array([table[i] for i in ids])
    unit = {"e_above_hull": " (eV/atom)"}
    return ((cols[:, 0], cols[:, 1], [formula.get(i, "") for i in ids],
             names[0] + unit.get(names[0], ""), names[1] + unit.get(names[1], "")),
            {"maximize_x": not minimize[0], "maximize_y": not minimize[1]})


@dataclass
class RoundRecord:
    """Everything a round's files and MLflow artifacts are made of, copied out of the campaign
    at the end of the round, so that writing them can overlap the next round."""

    round: int
    folder: Path
    rows: list[dict]
    top_k: int
    plots: dict[str, Callable[[Path], Path]]
    summary: dict
    config: Path | None


def snapshot_round(c: CampaignResults, r: int, metrics: dict, rows: list[dict] | None = None) -> RoundRecord:
    """The round's record, from the campaign as it stands (cheap: no file is written)."""
    rows = ranked(c) if rows is None else rows
    config = c.run_dir / "config.yaml"
    return RoundRecord(r, c.run_dir / "rounds" / f"round_{r:03d}", rows, c.cfg.tracking.top_k,
                       plot_inputs(c, rows), round_summary(c, r, metrics, rows),
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
        tracker.set_description(run_description(rec.summary, tracker.experiment_id, tracker.run_id),
                                rank=(rec.round, 0))


class RecordWriter:
    """Writes each round's record: at once, or held back and written in `background` during the
    next round's oracle (`later`). Records are written in round order; a round never waits for
    the one before to finish writing unless two are already queued. Writing never raises: the
    files are derived from the store, never worth a campaign."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.tracker: Tracker | None = None
        self.background = None  # a concurrent.futures executor, set by the campaign's run()
        self._held: RoundRecord | None = None
        self._writing: list = []  # futures of the writes queued or running, oldest first

    def record(self, rec: RoundRecord, later: bool) -> None:
        if later and self.background is not None:
            if self._held is not None:  # never flushed since the last record
                self.flush()
            self._held = rec
            return
        self.flush(wait=True)
        with stage("writing tables, CIFs and plots", self.progress):
            self._write(rec)

    def flush(self, wait: bool = False) -> None:
        """Start writing the held-back record in the background, after the writes before it (or,
        with `wait`, write it and wait for every write)."""
        rec, self._held = self._held, None
        if wait or self.background is None:
            for fut in self._writing:
                fut.result()
            self._writing = []
            if rec is not None:
                self._write(rec)
            return
        if rec is None:
            return
        self._writing = [f for f in self._writing if not f.done()]
        while len(self._writing) >= 2:  # a bound on the queue: writes slower than rounds wait here
            self._writing.pop(0).result()
        before = self._writing[-1] if self._writing else None

        def write() -> None:
            if before is not None:
                before.result()
            self._write(rec)

        self._writing.append(self.background.submit(write))

    def _write(self, rec: RoundRecord) -> None:
        try:
            write_record(rec, self.tracker)
        except Exception as err:
            import logging

            logging.getLogger(__name__).warning("writing round %d's files failed: %s: %s",
                                                rec.round + 1, type(err).__name__, err)


def round_summary(c: CampaignResults, r: int, m: dict, rows: list[dict]) -> dict:
    """The numbers the run description shows, copied out of the campaign at the end of round r."""
    ok = [d for d in rows if d["status"] == "ok"]
    thr = c.cfg.hull.stable_threshold
    return {
        "chemsys": c.cfg.chemsys, "round": r, "rounds": c.cfg.rounds, "threshold": thr,
        "hits": int(m.get("sun_count", 0)), "calls": int(m.get("evaluations_total", 0)),
        "rediscovered": sum(1 for d in ok if d["known_match"] and d["e_above_hull"] <= thr + 1e-9),
        "failed": sum(1 for d in rows if d["status"] != "ok"),
        "best": m.get("best_e_above_hull", float("nan")),
        "top": [{k: d[k] for k in ("formula", "spacegroup", "e_above_hull", "hit", "known_match", "source", "round")}
                for d in ok[:5]],
        "final": False,
    }


def _artifact_link(experiment_id: str | None, run_id: str | None, path: str) -> str:
    """A link, relative to the MLflow UI's own address, to one of the run's artifacts."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{path}?workflowType=machine_learning"


def run_description(summary: dict, experiment_id: str | None, run_id: str | None) -> str:
    """Markdown for the top of the MLflow run page: the headline numbers, the best candidates
    and links to the report, the tables and this round's plots."""
    s = summary
    rate = f"{s['hits'] / s['calls']:.0%}" if s["calls"] else "—"
    red = f" (and {s['rediscovered']} known phases rediscovered)" if s["rediscovered"] else ""
    link = lambda text, path: f"[{text}]({_artifact_link(experiment_id, run_id, path)})"  # noqa: E731
    rnd = f"rounds/round_{s['round']:03d}"
    links = ([link("the report", "report/report.html"), link("all candidates (CSV)", "candidates.csv"),
              link("best structures (CIF)", "top_cifs")] if s["final"] else
             [link("this round's candidates (CSV)", f"{rnd}/candidates.csv"), link("its best CIFs", f"{rnd}/cifs"),
              link("its plots", f"{rnd}/plots")])
    # the UI shows the first lines until "Show more": the numbers and the links come first
    lines = [f"### {s['chemsys']} · round {s['round'] + 1} of {s['rounds']}" + (" · finished" if s["final"] else ""),
             "",
             f"**{s['hits']} hits**{red} in **{s['calls']} oracle calls** ({rate} of calls; "
             f"{s['failed']} failed). A hit is stable (e_above_hull ≤ {s['threshold']:g} eV/atom), "
             "unique and novel.",
             "", " · ".join(links),
             "", "| # | formula | space group | e_above_hull (eV/atom) | new or known | found by | round |",
             "|---|---|---|---|---|---|---|"]
    for i, d in enumerate(s["top"], 1):
        lines.append(f"| {i} | {d['formula']}{' ★' if d['hit'] else ''} | {d['spacegroup']} | "
                     f"{d['e_above_hull']:+.3f} | {novelty(d)} | {d['source']} | {d['round'] + 1} |")
    lines += ["", "Charts: **Model metrics**, section `discovery/` first; each image chart opens on the latest round."]
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
REPORT_TOP = 10  # candidates the report shows, each with a picture and its CIF
NEAR_HULL = 0.1  # eV/atom: within this of the hull a phase is worth a look (metastable)


def write_final(c: CampaignResults, tracker: Tracker | None,
                routes: dict[str, list[dict]] | None = None) -> dict[str, Path]:
    """candidates.csv, top_cifs/ and the report (report/report.md and .html with its plots,
    structure pictures and interactive pages) in the run folder, all copied to MLflow; the run
    description becomes the final summary. `routes` maps candidate id to synthesis routes."""
    rows = ranked(c)
    _write_csv(rows, c.run_dir / "candidates.csv")
    cifs = _write_cifs(rows, c.run_dir / "top_cifs", max(c.cfg.tracking.top_k, REPORT_TOP))
    folder = c.run_dir / "report"
    figs = write_plots(c, rows, folder / "plots")
    md, html = write_report(c, rows, figs, folder, routes, top=REPORT_TOP, tracker=tracker)
    if tracker is not None:
        tracker.log_artifact(c.run_dir / "candidates.csv")
        tracker.log_artifacts(c.run_dir / "top_cifs", "top_cifs")
        tracker.log_artifacts(folder, "report")
        m = c.store.round_metrics()
        if m:
            summary = round_summary(c, max(m), m[max(m)], rows) | {"final": True}
            tracker.set_description(run_description(summary, tracker.experiment_id, tracker.run_id),
                                    rank=(max(m), 1))
    return {"csv": c.run_dir / "candidates.csv", "cifs": c.run_dir / "top_cifs", "n_cifs": len(cifs),
            "report_md": md, "report_html": html}


def write_structures(rows: list[dict], folder: Path) -> dict[str, Path]:
    """A picture of each row's structure in `folder` (candidate id -> PNG), titled with its
    formula, space group, e_above_hull and whether it is new; a picture that fails says so."""
    out: dict[str, Path] = {}
    for rank, d in enumerate(rows, 1):
        path = folder / safe_name(f"{rank:02d}_{d['formula']}_{d['id']}.png")
        title = f"{rank}. {d['formula']} · {d['spacegroup']}"
        sub = f"e_above_hull {d['e_above_hull']:+.3f} eV/atom · {novelty(d)} · {d['id']}"
        try:
            out[d["id"]] = plots.structure_image(path, d["_structure"], title, sub)
        except Exception as err:
            out[d["id"]] = plots.message(path, title, f"picture failed: {type(err).__name__}: {err}")
    return out


def write_interactive(c: CampaignResults, rows: list[dict], folder: Path) -> dict[str, Path]:
    """The hull and the discovery curve as interactive pages (plotly, offline); a page that
    cannot be drawn is left out (the report then links the PNG only)."""
    from xtalforge.loop import plots_interactive as pi

    by_id = {d["id"]: d for d in rows}
    seq = [by_id[i] for i in c.measured if i in by_id]
    labels = {d["id"]: f"{d['formula']} {d['spacegroup']} ({d['id']}, {novelty(d)})" for d in rows}
    jobs = {
        "discovery_curve": lambda p: pi.discovery_curve_html(p, seq, c.cfg.hull.stable_threshold,
                                                             f"{c.cfg.chemsys}: discovery curve"),
        "convex_hull": lambda p: pi.hull_html(p, c.hull.phase_diagram, dict(c.hull.campaign), c.hull.all_e_above_hull(),
                                              labels, c.cfg.hull.stable_threshold,
                                              title=f"Convex hull of {c.cfg.chemsys} (hover a point)"),
    }
    out: dict[str, Path] = {}
    for name, job in jobs.items():
        try:
            out[name] = job(folder / f"{name}.html")
        except Exception as err:  # a missing interactive page must not cost the report
            import logging

            logging.getLogger(__name__).warning("interactive %s failed: %s: %s", name, type(err).__name__, err)
    return out


def next_steps(c: CampaignResults, rows: list[dict], routes: dict[str, list[dict]] | None) -> dict[str, list[str]]:
    """What an owner should look at next: candidates worth a closer look (new, near the hull,
    synthesizable), where the loop spends its oracle calls and time, and what looks wrong."""
    thr, ok = c.cfg.hull.stable_threshold, [d for d in rows if d["status"] == "ok"]
    min_p = c.cfg.synthesis.min_p_synth
    look: list[str] = []
    for d in ok:
        # a polymorph of an element is no discovery in a compound search
        if d["known_match"] or d["e_above_hull"] > thr + NEAR_HULL or len(d["_structure"].composition) < 2:
            continue
        if math.isfinite(d["p_synth"]) and d["p_synth"] < min_p:
            continue
        best = next((r for r in (routes or {}).get(d["id"], []) if r.get("reaction")), None)
        look.append(f"{d['formula']} {d['spacegroup']} ({d['id']}): {d['e_above_hull']:+.3f} eV/atom, new"
                    + (f", P(synthesizable) {d['p_synth']:.2f}" if math.isfinite(d["p_synth"]) else "")
                    + (f"; best route {best['reaction']}, ΔG ≈ {float(best['dG_T_eV_per_atom']):+.3f} eV/atom"
                       if best else ""))
        if len(look) == 5:
            break
    if not look:
        look.append(f"No new compound within {NEAR_HULL:g} eV/atom of the hull (and, where scored, "
                    f"with P(synthesizable) ≥ {min_p:g}) yet.")
    spend: list[str] = []
    n = len(rows) or 1
    for g in sorted({d["source"] for d in rows}, key=lambda g: -sum(d["source"] == g for d in rows)):
        mine = [d for d in rows if d["source"] == g]
        good = [d["e_above_hull"] for d in mine if d["status"] == "ok"]
        calls = f"{len(mine)} oracle call{'s' if len(mine) != 1 else ''}"
        spend.append(f"{g}: {calls} ({len(mine) / n:.0%}), {sum(d['hit'] for d in mine)} hits, "
                     f"best {min(good):+.3f} eV/atom" if good else f"{g}: {calls}, none succeeded")
    rm = c.store.round_metrics()
    total = sum(m.get("time_round_s", 0.0) for m in rm.values())
    if total > 0:
        parts = {k: sum(m.get(f"time_{k}_s", 0.0) for m in rm.values()) for k in ("oracle", "acquire", "generate", "record")}
        spend.append("time: " + ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items())
                     + f" of {total:.0f} s in {len(rm)} rounds")
    wrong: list[str] = []
    for g in {d["source"] for d in rows}:
        mine = [d for d in rows if d["source"] == g and d["status"] == "ok"]
        if len(mine) >= 3 and not any(d["hit"] for d in mine) and min(d["e_above_hull"] for d in mine) > thr + NEAR_HULL:
            wrong.append(f"{g} never pays: {len(mine)} relaxations, no hit, none within {NEAR_HULL:g} eV/atom of the hull")
    for g in (x.name for x in c.cfg.generators):
        made = sum(m.get(f"unique_{g}", 0.0) for m in rm.values())
        if rm and made == 0:
            wrong.append(f"{g} proposed nothing new in {len(rm)} rounds (no unique valid structure)")
    err = surrogate_error(rows)
    if err["n"] >= 5 and not 0.4 <= err["within_1sigma"] <= 0.95:
        how = "overconfident: its σ is too small" if err["within_1sigma"] < 0.4 else "underconfident: its σ is too wide"
        wrong.append(f"the surrogate is badly calibrated ({err['within_1sigma']:.0%} of {err['n']} picks within 1σ, "
                     f"68% expected): {how}")
    failed = [d for d in rows if d["status"] != "ok"]
    if failed:
        wrong.append(f"{len(failed)} of {len(rows)} relaxations failed, e.g. {failed[0]['formula']} "
                     f"({failed[0]['id']}): {str(failed[0]['error'] or '')[:120]}")
    known = [d for d in ok if d["known_match"] and d["e_above_hull"] <= thr + 1e-9]
    if known:
        wrong.append(f"{len(known)} of the stable candidates {'is a known material' if len(known) == 1 else 'are known materials'} "
                     "(rediscovered, not hits): "
                     + ", ".join(f"{d['formula']} = {d['known_match']}" for d in known[:5]))
    return {"look": look, "spend": spend, "wrong": wrong or ["nothing stands out."]}


def write_report(c: CampaignResults, rows: list[dict], figs: dict[str, Path], folder: Path,
                 routes: dict[str, list[dict]] | None = None, top: int = REPORT_TOP,
                 tracker: Tracker | None = None) -> tuple[Path, Path]:
    """The campaign report as Markdown and as self-contained HTML (pictures inline), in `folder`
    beside its plots/, structures/ and interactive/; its links are relative to the run folder.

    `routes` (candidate id -> synthesis routes, rows of synthesis.routes.routes_table) comes
    from the synthesis planner; without it the report says no routes were suggested."""
    from xtalforge.loop.report_doc import render_html, render_markdown
    from xtalforge.loop.tracking import ui_url

    folder.mkdir(parents=True, exist_ok=True)
    ok = [d for d in rows if d["status"] == "ok"]
    formulas = {d["id"]: d["formula"] for d in rows}
    for d in ok:  # parents by formula where the campaign knows them
        d["_parents"] = ", ".join(f"{formulas.get(p, '')} ({p})".strip() for p in d["parents"].split(";") if p)
    shown = ok[:top]
    pictures = write_structures(shown, folder / "structures")
    interactive = write_interactive(c, rows, folder / "interactive")
    for rank, d in enumerate(shown, 1):
        d["_cif"] = f"../top_cifs/{cif_name(rank, d)}"
        d["_picture"] = pictures[d["id"]]
        d["_novelty"] = novelty(d)
    m = c.store.round_metrics()
    last = m[max(m)] if m else {}
    thr = c.cfg.hull.stable_threshold
    hits = [d for d in rows if d["hit"]]
    known = [d for d in ok if d["known_match"] and d["e_above_hull"] <= thr + 1e-9]
    err = surrogate_error(rows)
    if tracker is not None and tracker.ok and tracker.uri.startswith("http"):
        mlflow = ("MLflow run", tracker.run_id, ui_url(tracker.uri, tracker.experiment_id, tracker.run_id))
    elif tracker is not None and tracker.ok:
        mlflow = ("MLflow run", f"{tracker.run_id}: open it with `xtalforge ui {c.run_dir}`", None)
    else:
        mlflow = ("MLflow run", "not tracked", None)
    done = sum(1 for s in c.store.stages().values() if s == "done")
    doc = {
        "title": f"xtalforge campaign {c.cfg.name}: {c.cfg.chemsys}",
        "headline": (f"{len(hits)} hits in {len(rows)} oracle calls ({c.screen}) over {done} of {c.cfg.rounds} rounds; "
                     f"a hit is stable (e_above_hull ≤ {thr:g} eV/atom on the hull described below), unique "
                     f"and not a known material. "
                     + (f"Best: {ok[0]['formula']} {ok[0]['spacegroup']} at {ok[0]['e_above_hull']:+.3f} eV/atom "
                        f"({novelty(ok[0])})." if ok else "No successful oracle call yet.")),
        "facts": [
            ("run folder", str(c.run_dir), None),
            ("rounds done", f"{done} of {c.cfg.rounds}", None),
            (f"oracle calls ({c.screen})", f"{len(rows)} ({len(rows) - len(ok)} failed)", None),
            ("hits (stable, unique, new)", str(len(hits)), None),
            ("known phases rediscovered (stable, matching a known material)",
             ", ".join(f"{d['formula']} = {d['known_match']}" for d in known) or "none", None),
            ("best e_above_hull", f"{_fmt(ok[0]['e_above_hull'], '+.3f')} eV/atom" if ok else "—", None),
            ("surrogate MAE", (f"{_fmt(err['mae'])} eV/atom over all {err['n']} picks with a prediction "
                               f"({_fmt(err['within_1sigma'], '.0%')} within 1σ); last round alone "
                               f"{_fmt(last.get('surrogate_mae_last_round'))} eV/atom") if err["n"] else
             "— (no pick had a surrogate prediction)", None),
            ("config hash", c.cfg.config_hash(), None),
            mlflow,
        ],
        "mae_definition": ("Surrogate MAE: the mean of |predicted − measured| e_above_hull (eV/atom), predicted "
                           "when the candidate was picked, measured by the oracle and placed on the current "
                           "hull; the parity plot uses the same definition and the same picks."),
        "links": [("all candidates (CSV)", "../candidates.csv"), ("best structures (CIF folder)", "../top_cifs/")]
                 + [(f"interactive {name.replace('_', ' ')}", f"interactive/{p.name}") for name, p in interactive.items()]
                 + ([("synthesis routes (CSV)", "../synthesis_routes.csv")]
                    if (c.run_dir / "synthesis_routes.csv").is_file() else []),
        "hull": list(getattr(c, "describe", list)()),  # what the hull holds, which references decided
        "next": next_steps(c, rows, routes),
        "plots": [(name.replace("_", " "), path,
                   f"interactive/{interactive[name].name}" if name in interactive else None) for name, path in figs.items()],
        "top": shown,
        "routes": routes,
    }
    md = folder / "report.md"
    md.write_text(render_markdown(doc, folder))
    html = folder / "report.html"
    html.write_text(render_html(doc, folder))
    return md, html


def print_final(c: CampaignResults, paths: dict, tracker: Tracker | None = None,
                echo: Callable[[str], None] = print) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [d for d in ranked(c) if d["status"] == "ok"][:10]
    against = ("the known phases relaxed by the MLIP" if getattr(c.hull, "oracle", None) is not None
               else "the known phases' DFT energies")
    t = Table(title=f"Best candidates, {c.cfg.chemsys} (e_above_hull vs. {against} + this campaign)")
    for col in ("rank", "formula", "space group", "e_above_hull (eV/atom)", "e_form (eV/atom)", "hit",
                "new or known", "source", "round"):
        t.add_column(col)
    for i, d in enumerate(rows, 1):
        t.add_row(str(i), d["formula"], d["spacegroup"], f"{d['e_above_hull']:+.3f}",
                  f"{d['e_form_per_atom']:+.3f}", "★" if d["hit"] else "", novelty(d), d["source"], str(d["round"] + 1))
    # a pipe or a log file gets 120 columns, not the 80 rich assumes
    Console(width=None if sys.stdout.isatty() else 120).print(t)
    echo(f"candidates table: {paths['csv']}")
    echo(f"top CIFs:         {paths['cifs']}/")
    if paths.get("report_html"):
        echo(f"report:           {paths['report_html']}")
    if tracker is not None:
        echo(f"MLflow:           {tracker.run_url()}")
        echo(f"                  open it with: xtalforge ui {c.run_dir}")


def synthesis_routes(c: CampaignResults, tracker: Tracker | None = None) -> dict[str, list[dict]] | None:
    """Solid-state routes for the best candidates: candidate id -> rows (reaction, precursors,
    by-products, reaction energy per atom), best first. Also written to synthesis_routes.csv
    and .md in the run folder, and to MLflow with a `tracker`."""
    import logging

    scfg = c.cfg.synthesis
    if scfg.routes_per_target == 0:
        return None
    from xtalforge.synthesis.routes import routes_table, targets_from_hull, write_routes_csv, write_routes_markdown

    e_hull = c.hull.all_e_above_hull()
    top = sorted(e_hull, key=e_hull.get)[: max(c.cfg.tracking.top_k, 1)]
    try:
        # one scale: targets and in-system precursors from the hull that decided stability
        hull = getattr(c.hull, "primary", c.hull)
        rows = routes_table(targets_from_hull(hull, top), hull=hull, references=hull.references,
                            precursors=scfg.precursors, per_target=scfg.routes_per_target)
    except Exception as err:  # a route planner problem must not lose the campaign's report
        logging.getLogger(__name__).warning("synthesis routes failed: %s", err)
        return None
    for writer, name in ((write_routes_csv, "synthesis_routes.csv"), (write_routes_markdown, "synthesis_routes.md")):
        path = writer(rows, c.run_dir / name)
        if tracker is not None:
            tracker.log_artifact(path)
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["candidate_id"], []).append(row)
    return out

