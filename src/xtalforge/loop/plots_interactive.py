"""Interactive versions of the hull and the discovery curve (plotly HTML) for the report.

Each page loads plotly.min.js from its own folder (written once beside the pages), so the
pages work offline and from a copied run folder. The static PNGs in plots.py stay the figures
MLflow shows; these add what a PNG cannot: hover a point to see which candidate it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

HIT = "#d62728"
REF = "#4d4d4d"


def _write(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "directory": a <script src="plotly.min.js">, and the bundle copied beside the page once
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def discovery_curve_html(path: Path, rows: Sequence[Mapping], threshold: float, title: str = "") -> Path:
    """Hits against oracle calls and each call's e_above_hull (eV/atom), one point per call in
    the order results landed; hovering a point names the candidate. `rows` are report rows
    (formula, id, e_above_hull, hit, evaluated_round, source, status)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.4, 0.6], vertical_spacing=0.06)
    calls = np.arange(1, len(rows) + 1)
    found = np.cumsum([bool(d["hit"]) for d in rows]) if rows else np.array([])
    fig.add_trace(go.Scatter(x=calls, y=found, mode="lines", line_shape="hv", line_color=HIT,
                             name="hits found"), row=1, col=1)
    ok = [(i + 1, d) for i, d in enumerate(rows) if d["status"] == "ok" and np.isfinite(d["e_above_hull"])]
    fig.add_trace(go.Scatter(
        x=[i for i, _ in ok], y=[d["e_above_hull"] for _, d in ok], mode="markers", name="oracle call",
        marker=dict(color=[d["evaluated_round"] + 1 for _, d in ok], colorscale="Viridis", size=9,
                    symbol=["star" if d["hit"] else "circle" for _, d in ok],
                    colorbar=dict(title="round", len=0.55, y=0.3)),
        customdata=[[d["formula"], d["id"], d["source"], d["evaluated_round"] + 1] for _, d in ok],
        hovertemplate="%{customdata[0]} (%{customdata[1]})<br>e_above_hull %{y:+.3f} eV/atom"
                      "<br>found by %{customdata[2]}, round %{customdata[3]}<extra></extra>"), row=2, col=1)
    fig.add_hline(y=threshold, line_dash="dash", line_color=HIT, row=2, col=1,
                  annotation_text=f"hit threshold {threshold:g} eV/atom")
    fig.update_yaxes(title_text="hits found", row=1, col=1)
    fig.update_yaxes(title_text="e_above_hull (eV/atom)", row=2, col=1)
    fig.update_xaxes(title_text="oracle calls", row=2, col=1)
    fig.update_layout(title=title or "Discovery curve", height=650, showlegend=False, template="plotly_white")
    return _write(fig, path)


def hull_html(path: Path, pd, campaign: Mapping[str, object], e_above_hull: Mapping[str, float],
              labels: Mapping[str, str], threshold: float = 0.0, show_above: float = 0.3, title: str = "") -> Path:
    """The hull's phases to hover over: 3 elements on the Gibbs triangle, 2 as formation energy
    against composition, otherwise e_above_hull by formula. Reference phases on the hull grey,
    the campaign's phases within `show_above` eV/atom coloured by e_above_hull; `labels` maps a
    campaign id to the text its point shows (formula, new or rediscovered)."""
    import plotly.graph_objects as go

    els = [el.symbol for el in pd.elements]
    ours = [(k, e) for k, e in campaign.items() if e_above_hull.get(k, np.inf) <= show_above]
    refs = [e for e in pd.stable_entries if all(e is not x for x in campaign.values())]

    def frac(entry) -> list[float]:
        return [entry.composition.get_atomic_fraction(el) for el in pd.elements]

    hover_c = [f"{labels.get(k, '')}<br>e_above_hull {e_above_hull[k]:+.3f} eV/atom" for k, _ in ours]
    hover_r = [f"{e.composition.reduced_formula} (reference, on the hull)" for e in refs]
    colour = dict(color=[e_above_hull[k] for k, _ in ours], colorscale="Plasma_r", cmin=0, cmax=show_above,
                  size=[16 if e_above_hull[k] <= threshold + 1e-9 else 9 for k, _ in ours],
                  symbol=["star" if e_above_hull[k] <= threshold + 1e-9 else "circle" for k, _ in ours],
                  colorbar=dict(title="e_above_hull<br>(eV/atom)"), line=dict(width=0.5, color="black"))
    if len(els) == 3:
        fig = go.Figure()
        for data, hover, marker, name in ((refs, hover_r, dict(color=REF, size=10), "reference on the hull"),
                                          ([e for _, e in ours], hover_c, colour, "campaign phase")):
            f = np.array([frac(e) for e in data]).reshape(-1, 3)
            fig.add_trace(go.Scatterternary(a=f[:, 0], b=f[:, 1], c=f[:, 2], mode="markers", marker=marker,
                                            text=hover, hoverinfo="text", name=name))
        fig.update_layout(ternary=dict(aaxis_title=els[0], baxis_title=els[1], caxis_title=els[2]))
    elif len(els) == 2:
        fig = go.Figure()
        for data, hover, marker, name in ((refs, hover_r, dict(color=REF, size=10), "reference on the hull"),
                                          ([e for _, e in ours], hover_c, colour, "campaign phase")):
            fig.add_trace(go.Scatter(x=[frac(e)[1] for e in data], y=[pd.get_form_energy_per_atom(e) for e in data],
                                     mode="markers", marker=marker, text=hover, hoverinfo="text", name=name))
        fig.update_xaxes(title_text=f"fraction of {els[1]}")
        fig.update_yaxes(title_text="formation energy (eV/atom)")
    else:
        fig = go.Figure(go.Scatter(x=[e_above_hull[k] for k, _ in ours], y=[labels.get(k, k) for k, _ in ours],
                                   mode="markers", marker=colour, text=hover_c, hoverinfo="text"))
        fig.update_xaxes(title_text="e_above_hull (eV/atom)")
    fig.update_layout(title=title or f"Convex hull of {'-'.join(els)}", height=650, template="plotly_white",
                      legend=dict(orientation="h", y=-0.08))
    return _write(fig, path)
