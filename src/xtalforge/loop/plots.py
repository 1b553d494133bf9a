"""The campaign's figures as PNG files: discovery curve, convex hull, Pareto front, parity.

Matplotlib's object-oriented API on the Agg canvas only: no pyplot, so no global figure state
is shared with a notebook or another thread, and nothing needs a display. Each function takes
plain data and a path, writes one PNG and returns its path; with no data it still writes a
figure that says why, so a dashboard never shows a broken image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram, uniquelines

DPI = 110
HIT = "#d62728"  # new stable phases, wherever they appear
REF = "#4d4d4d"


def _figure(w: float = 7.0, h: float = 5.0) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _round_colors(rounds: np.ndarray, n_rounds: int) -> dict:
    """Scatter keywords colouring 0-based `rounds` (shown 1-based), one colour per round."""
    from matplotlib import colormaps

    return dict(c=rounds + 1, cmap=colormaps["viridis"].resampled(n_rounds), vmin=0.5, vmax=n_rounds + 0.5)


def _round_colorbar(fig: Figure, sc, ax, label: str, n_rounds: int) -> None:
    cb = fig.colorbar(sc, ax=ax, label=label, pad=0.01)
    cb.set_ticks(np.unique(np.linspace(1, n_rounds, min(n_rounds, 10)).round().astype(int)))


def message(path: Path, title: str, text: str) -> Path:
    """A figure holding only a title and a sentence: what a plot shows before it has data."""
    fig = _figure(7, 3)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=13)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11, transform=ax.transAxes)
    return _save(fig, path)


# -- discovery curve ----------------------------------------------------------------------
def discovery_curve(path: Path, e_above_hull: Sequence[float], is_hit: Sequence[bool],
                    rounds: Sequence[int], threshold: float, title: str = "") -> Path:
    """Hits found against oracle calls (top) and each call's e_above_hull (bottom).

    The three sequences are per oracle call, in the order the results landed; failed calls
    carry NaN energy. Energies in eV/atom.
    """
    e = np.asarray(e_above_hull, dtype=float)
    if not len(e):
        return message(path, "Discovery curve", "No oracle results yet.")
    calls = np.arange(1, len(e) + 1)
    found = np.cumsum(np.asarray(is_hit, dtype=int))
    rnd = np.asarray(rounds, dtype=int)
    fig = _figure(7.5, 6)
    top, bot = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.2])
    top.step(calls, found, where="post", color=HIT, lw=2.2)
    top.plot(calls[np.asarray(is_hit, bool)], found[np.asarray(is_hit, bool)], "*", color=HIT, ms=12)
    top.set_ylabel("hits found (stable, unique, novel)")
    top.set_ylim(bottom=0, top=max(1, found[-1]) * 1.25 + 0.5)
    top.set_title(title or "Discovery curve")
    top.grid(alpha=0.3)
    ok = np.isfinite(e)
    n_rounds = int(rnd.max()) + 1
    sc = bot.scatter(calls[ok], e[ok], s=28, zorder=3, **_round_colors(rnd[ok], n_rounds))
    _round_colorbar(fig, sc, bot, "round", n_rounds)
    if (~ok).any():
        lo = np.nanmin(e) if ok.any() else 0.0
        bot.plot(calls[~ok], np.full((~ok).sum(), lo), "x", color="grey", label="failed")
    best = np.fmin.accumulate(np.where(ok, e, np.inf))
    shown = np.isfinite(best)
    bot.step(calls[shown], best[shown], where="post", color="black", lw=1.5, label="best so far")
    bot.axhline(threshold, color=HIT, ls="--", lw=1, label=f"hit threshold ({threshold:g} eV/atom)")
    if ok.any():
        # random structures can sit eV above the hull; keep the interesting range readable and
        # mark the calls beyond it at the top edge
        hi = min(np.nanmax(e[ok]), max(1.0, np.nanpercentile(e[ok], 90))) + 0.1
        bot.set_ylim(min(np.nanmin(e[ok]), threshold) - 0.05, hi)
        far = ok & (e > hi)
        if far.any():
            bot.plot(calls[far], np.full(far.sum(), hi), "^", color="grey", ms=7, clip_on=False,
                     label=f"above {hi:.1f} eV/atom")
    bot.xaxis.set_major_locator(MaxNLocator(integer=True))
    for k in np.flatnonzero(np.diff(rnd)) + 1:  # round boundaries
        for ax in (top, bot):
            ax.axvline(k + 0.5, color="grey", lw=0.8, ls=":")
    bot.set_xlabel("oracle calls (MLIP relaxations)")
    bot.set_ylabel("e_above_hull (eV/atom)")
    bot.legend(loc="best", fontsize=8)
    bot.grid(alpha=0.3)
    return _save(fig, path)


# -- convex hull --------------------------------------------------------------------------
def _simplex_vertices(n: int) -> np.ndarray:
    """Corners of the composition simplex drawn for n = 3 (triangle) or 4 (tetrahedron)."""
    if n == 3:
        return np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    return np.array([[0, 0, 0], [1, 0, 0], [0.5, np.sqrt(3) / 2, 0],
                     [0.5, np.sqrt(3) / 6, np.sqrt(2 / 3)]], dtype=float)


def _fractions(pd: PhaseDiagram, entry: PDEntry) -> np.ndarray:
    comp = entry.composition
    return np.array([comp.get_atomic_fraction(el) for el in pd.elements])


def hull_plot(path: Path, pd: PhaseDiagram, campaign: Mapping[str, PDEntry],
              e_above_hull: Mapping[str, float], threshold: float = 0.0,
              show_above: float = 0.3, title: str = "") -> Path:
    """The convex hull of the chemical system with the campaign's phases on it.

    Left, 2 elements: formation energy against composition with the hull line; 3 and 4
    elements: the Gibbs triangle or tetrahedron with the hull's tie lines. Reference phases are
    grey, the campaign's phases on the hull red stars, its phases within `show_above` eV/atom
    coloured by e_above_hull. Right: every campaign phase's e_above_hull by formula, since
    polymorphs share one point of the composition diagram. Other element counts get only the
    right-hand panel."""
    n = len(pd.elements)
    chemsys = "-".join(el.symbol for el in pd.elements)
    title = title or f"Convex hull of {chemsys}"
    if not 2 <= n <= 4:
        fig = _figure(7.5, 6)
        if not _ladder(fig.add_subplot(), campaign, e_above_hull, threshold):
            return message(path, title, "No campaign phases yet.")
        fig.suptitle(f"{title}\n(a hull diagram needs 2-4 elements; e_above_hull per phase instead)", fontsize=11)
        return _save(fig, path)
    fig = _figure(13, 6.2)
    grid = fig.add_gridspec(1, 2, width_ratios=[1.45, 1])
    ax = fig.add_subplot(grid[0], projection="3d" if n == 4 else None)
    _hull_diagram(fig, ax, pd, campaign, e_above_hull, threshold, show_above)
    _ladder(fig.add_subplot(grid[1]), campaign, e_above_hull, threshold)
    n_far = sum(1 for k in campaign if e_above_hull.get(k, np.inf) > show_above)
    fig.suptitle(f"{title}: {len(campaign)} campaign phases, {n_far} of them more than "
                 f"{show_above:g} eV/atom above the hull (not in the diagram)", fontsize=11)
    return _save(fig, path)


def _hull_diagram(fig: Figure, ax, pd: PhaseDiagram, campaign: Mapping[str, PDEntry],
                  e_above_hull: Mapping[str, float], threshold: float, show_above: float) -> None:
    n = len(pd.elements)
    entries = pd.qhull_entries
    ours = {id(e) for e in campaign.values()}

    def xy(entry: PDEntry) -> np.ndarray:
        f = _fractions(pd, entry)
        if n == 2:
            return np.array([f[1], pd.get_form_energy_per_atom(entry)])
        return f @ _simplex_vertices(n)

    if n > 2:  # outline of the simplex, corners named
        v = _simplex_vertices(n)
        for i in range(n):
            for j in range(i + 1, n):
                ax.plot(*np.array([v[i], v[j]]).T, color="lightgrey", lw=1, zorder=1)
        for i, el in enumerate(pd.elements):
            ax.text(*(v[i] + (v[i] - v.mean(0)) * 0.09), el.symbol, fontsize=14, ha="center",
                    va="center", weight="bold")
    for a, b in uniquelines(pd.facets):
        ax.plot(*np.array([xy(entries[a]), xy(entries[b])]).T, color="black", lw=1.2, zorder=2)
    near = [(k, e) for k, e in campaign.items() if k in e_above_hull and threshold < e_above_hull[k] <= show_above]
    if near:
        pts = np.array([xy(e) for _, e in near])
        vals = np.array([e_above_hull[k] for k, _ in near])
        sc = ax.scatter(*pts.T, c=vals, cmap="plasma_r", vmin=0, vmax=show_above, s=30, zorder=4,
                        edgecolors="black", linewidths=0.3)
        fig.colorbar(sc, ax=ax, label="campaign phase: e_above_hull (eV/atom)", shrink=0.6, pad=0.02)
    for entry in pd.stable_entries:
        p, mine = xy(entry), id(entry) in ours
        ax.scatter(*p, s=170 if mine else 45, marker="*" if mine else "o", color=HIT if mine else REF,
                   zorder=5, edgecolors="black", linewidths=0.5)
        if mine or len(entry.composition) > 1:  # the corners are named already
            ax.text(*(p + (np.array([0.0, 0.02]) if n == 2 else 0.0)), f" {entry.composition.reduced_formula}",
                    fontsize=9, color=HIT if mine else REF, zorder=6)
    ax.scatter([], [], marker="*", s=120, color=HIT, edgecolors="black", label="campaign phase on the hull")
    ax.scatter([], [], marker="o", s=40, color=REF, label="reference phase on the hull")
    if n == 2:
        e0, e1 = (el.symbol for el in pd.elements)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1], [e0, "0.25", "0.5", "0.75", e1])
        ax.set_xlabel(f"fraction of {e1}")
        ax.set_ylabel("formation energy (eV/atom)")
        ax.grid(alpha=0.3)
    elif n == 3:
        ax.set_axis_off()
        ax.set_aspect("equal")
        ax.set_xlim(-0.1, 1.1)
        ax.set_ylim(-0.1, 0.98)
    else:
        ax.set_axis_off()
        ax.view_init(elev=18, azim=-70)
        ax.set_box_aspect(None, zoom=1.2)
    ax.legend(loc="upper left" if n == 3 else "best", fontsize=8, framealpha=0.8)


def _ladder(ax, campaign: Mapping[str, PDEntry], e_above_hull: Mapping[str, float],
            threshold: float, max_formulas: int = 20, x_max: float = 1.0) -> bool:
    """Every campaign phase's e_above_hull (eV/atom), one row per formula, lowest rows first;
    phases beyond `x_max` sit at the edge as '>'. False when there is nothing to draw."""
    by_formula: dict[str, list[float]] = {}
    for k, entry in campaign.items():
        if k in e_above_hull and np.isfinite(e_above_hull[k]):
            by_formula.setdefault(entry.composition.reduced_formula, []).append(e_above_hull[k])
    if not by_formula:
        return False
    rows = sorted(by_formula.items(), key=lambda t: min(t[1]))[:max_formulas]
    lo = min(min(v) for _, v in rows)
    for y, (_, vals) in enumerate(rows):
        v = np.asarray(vals)
        hit, far = v <= threshold + 1e-9, v > x_max
        mid = ~hit & ~far
        ax.scatter(v[mid], np.full(mid.sum(), y), s=30, color="#1f77b4", alpha=0.8, zorder=3)
        ax.scatter(v[hit], np.full(hit.sum(), y), s=150, marker="*", color=HIT, edgecolors="black",
                   linewidths=0.5, zorder=4)
        ax.scatter(np.full(far.sum(), x_max), np.full(far.sum(), y), marker=">", s=30, color="grey", zorder=3)
    ax.axvline(threshold, color=HIT, ls="--", lw=1, label=f"hit threshold ({threshold:g} eV/atom)")
    ax.set_yticks(range(len(rows)), [f for f, _ in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(min(lo, threshold) - 0.03, x_max + 0.03)
    ax.set_xlabel(f"e_above_hull (eV/atom); > at {x_max:g}: further above")
    ax.set_title("campaign phases by formula (polymorphs in one row)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    return True


# -- Pareto front -------------------------------------------------------------------------
def pareto_plot(path: Path, x: Sequence[float], y: Sequence[float], labels: Sequence[str] = (),
                x_label: str = "e_above_hull (eV/atom)", y_label: str = "p_synth",
                maximize_x: bool = False, maximize_y: bool = True, title: str = "") -> Path:
    """Two objectives of the evaluated candidates, the Pareto front highlighted and labelled."""
    from xtalforge.loop.metrics import pareto_mask

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return message(path, "Pareto front", "No evaluated candidates with both objectives yet.")
    names = np.asarray(list(labels) if len(labels) else [""] * len(ok), dtype=object)[ok]
    x, y = x[ok], y[ok]
    front = pareto_mask(np.column_stack([-x if maximize_x else x, -y if maximize_y else y]))
    fig = _figure(7, 5)
    ax = fig.add_subplot()
    ax.scatter(x[~front], y[~front], s=25, color="#9ecae1", edgecolors="#3182bd", label="dominated")
    order = np.argsort(x[front])
    # the staircase a front makes, stepping the way the objectives trade off
    ax.step(x[front][order], y[front][order], where="post" if maximize_y != maximize_x else "pre",
            color=HIT, lw=1.5, zorder=3)
    ax.scatter(x[front], y[front], s=60, color=HIT, edgecolors="black", zorder=4, label="Pareto front")
    for xi, yi, name in zip(x[front], y[front], names[front]):
        ax.annotate(str(name), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{x_label}, {'higher' if maximize_x else 'lower'} is better")
    ax.set_ylabel(f"{y_label}, {'higher' if maximize_y else 'lower'} is better")
    ax.set_title(title or f"Pareto front: {x_label.split(' (')[0]} vs {y_label.split(' (')[0]}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# -- surrogate parity ---------------------------------------------------------------------
def parity_plot(path: Path, measured: Sequence[float], predicted: Sequence[float],
                predicted_std: Sequence[float], rounds: Sequence[int], title: str = "") -> Path:
    """The surrogate's e_above_hull at pick time against the oracle's, with 1-sigma bars (eV/atom)."""
    m, p, s = (np.asarray(v, float) for v in (measured, predicted, predicted_std))
    ok = np.isfinite(m) & np.isfinite(p)
    if not ok.any():
        return message(path, "Surrogate parity",
                       "No evaluated pick had a surrogate prediction yet:\n"
                       "the first picks are model-free, the GP predicts from the next round on.")
    m, p, s, r = m[ok], p[ok], np.nan_to_num(s[ok]), np.asarray(rounds, int)[ok]
    fig = _figure(6, 5.5)
    ax = fig.add_subplot()
    ax.errorbar(m, p, yerr=s, fmt="none", ecolor="grey", alpha=0.6, zorder=2)
    sc = ax.scatter(m, p, s=35, edgecolors="black", linewidths=0.4, zorder=3,
                    **_round_colors(r, int(r.max()) + 1))
    _round_colorbar(fig, sc, ax, "round picked", int(r.max()) + 1)
    lo, hi = float(min(m.min(), p.min())), float(max(m.max(), p.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="predicted = measured")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    mae = float(np.mean(np.abs(p - m)))
    cover = float(np.mean(np.abs(p - m) <= np.maximum(s, 1e-9)))
    ax.set_title(title or f"Surrogate parity: MAE {mae:.3f} eV/atom, {cover:.0%} within 1σ (n={len(m)})",
                 fontsize=10)
    ax.set_xlabel("measured e_above_hull (eV/atom, MLIP)")
    ax.set_ylabel("predicted e_above_hull at pick time (eV/atom)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# -- budget split -------------------------------------------------------------------------
def budget_split_plot(path: Path, shares: Mapping[str, Sequence[float]], title: str = "") -> Path:
    """Each generator's share of the proposals, round by round, stacked on a fixed 0-1 axis:
    one line per generator on an auto-scaled axis makes 0.31 vs 0.35 look like a swing.
    `shares` maps generator -> share per round (round 1 first)."""
    if not shares or not any(len(v) for v in shares.values()):
        return message(path, "Budget split", "No rounds yet.")
    names = list(shares)
    n = max(len(v) for v in shares.values())
    data = np.array([list(shares[g]) + [np.nan] * (n - len(shares[g])) for g in names], dtype=float)
    data = np.nan_to_num(data)
    rounds = np.arange(1, n + 1)
    fig = _figure(7, 3.6)
    ax = fig.add_subplot()
    bottom = np.zeros(n)
    for g, row in zip(names, data):
        ax.bar(rounds, row, bottom=bottom, label=g, width=0.7, edgecolor="white")
        for x, b, h in zip(rounds, bottom, row):
            if h >= 0.08:
                ax.text(x, b + h / 2, f"{h:.0%}", ha="center", va="center", fontsize=8, color="white")
        bottom += row
    ax.set_ylim(0, 1)
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("share of the round's proposals")
    ax.set_title(title or "Budget split between generators")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


# -- a crystal structure ------------------------------------------------------------------
def structure_image(path: Path, structure, title: str = "", subtitle: str = "") -> Path:
    """A static picture of one crystal structure: its unit cell seen along two directions (ASE's
    matplotlib renderer, so it works offline and needs no display), atoms in Jmol colours with
    a legend of the elements. `structure` is a pymatgen Structure."""
    from ase.data import atomic_numbers
    from ase.data.colors import jmol_colors
    from ase.visualize.plot import plot_atoms
    from matplotlib.patches import Patch
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(_with_boundary_images(structure))
    fig = _figure(6.4, 3.9)
    axes = fig.subplots(1, 2)
    for ax, rotation, label in zip(axes, ("10x,-10y,0z", "-80x,5y,0z"), ("near the c axis", "near the b axis")):
        plot_atoms(atoms, ax, rotation=rotation, radii=0.3, show_unit_cell=2)
        ax.set_axis_off()
        ax.set_title(label, fontsize=8, color="#555")
    els = sorted({s.symbol for s in atoms}, key=lambda e: atomic_numbers[e])
    fig.legend(handles=[Patch(facecolor=jmol_colors[atomic_numbers[e]], edgecolor="black", label=e) for e in els],
               loc="outside lower center", ncol=len(els), fontsize=8, frameon=False)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    return _save(fig, path)


def _with_boundary_images(structure, tol: float = 0.02):
    """The structure with the periodic copies of atoms that sit on a face, edge or corner of
    the cell added, so a drawing of one cell shows its whole coordination (a corner atom at
    all eight corners)."""
    import itertools

    from pymatgen.core import Structure

    species, coords = [], []
    for site in structure:
        f = np.mod(site.frac_coords, 1.0)
        f[f > 1 - tol] -= 1.0  # 0.999 is 0
        for shift in itertools.product((0, 1), repeat=3):
            g = f + np.array(shift)
            if np.all(g <= 1 + tol) and (not any(shift) or np.all(np.abs(f[np.array(shift) == 1]) < tol)):
                species.append(site.species)
                coords.append(g)
    return Structure(structure.lattice, species, coords, coords_are_cartesian=False)
