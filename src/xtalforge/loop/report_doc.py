"""Rendering the campaign report document as Markdown and as self-contained HTML.

The document is a plain dict built by `report.write_report`: title, headline, facts (label,
value, link or None), hull (lines saying what the hull holds; optional), links (text, relative href), next (what to look at next: `look`,
`spend`, `wrong`, lists of sentences), plots (title, PNG path, interactive page or None), top
(candidate rows of `report.ranked`, with `_cif`, `_picture` and `_novelty`), routes (candidate
id -> rows of synthesis.routes.routes_table, or None) and mae_definition. HTML inlines the
pictures, so the one file can be mailed or opened from the MLflow artifact viewer; its links
(CIFs, tables, interactive plots) are relative to the report's folder in the run folder.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path

COLUMNS = ("rank", "formula", "space group", "e_above_hull (eV/atom)", "e_form (eV/atom)", "hit",
           "new or known", "found by", "round", "parents", "CIF")

# route table: (column title with unit, key in a route row, format)
ROUTE_COLUMNS = (
    ("#", "rank", None),
    ("reaction", "reaction", None),
    ("ΔE at 0 K (eV/atom)", "dE_eV_per_atom", "+.3f"),
    ("ΔE at 0 K (eV per formula unit)", "dE_eV_per_fu", "+.3f"),
    ("ΔG(T) estimate (eV/atom)", "dG_T_eV_per_atom", "+.3f"),
    ("T (K)", "T_K", ".0f"),
    ("energies from", "energy_sources", None),
)

NEXT_TITLES = (("look", "Candidates worth a closer look"), ("spend", "What the loop spends on"),
               ("wrong", "What looks wrong"))


def _num(v: float, spec: str = "+.3f") -> str:
    return "—" if not math.isfinite(float(v)) else format(float(v), spec)


def _cells(rank: int, d: dict) -> list[str]:
    return [str(rank), d["formula"], d["spacegroup"], _num(d["e_above_hull"]), _num(d["e_form_per_atom"]),
            "yes" if d["hit"] else "", d.get("_novelty", ""), d["source"], str(d["round"] + 1),
            d.get("_parents") or "—", Path(d.get("_cif", "")).name]


def _route_cell(route: dict, key: str, spec: str | None) -> str:
    v = route.get(key, "")
    if spec and v not in ("", None):
        try:
            return format(float(v), spec)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def route_reading(r: dict) -> str:
    """One line saying what a synthesis route (a row of synthesis.routes.routes_table) means."""
    if r.get("reaction") in (None, ""):
        return r.get("note") or "no route"
    de, dg, t = (float(r[k]) for k in ("dE_eV_per_atom", "dG_T_eV_per_atom", "T_K"))
    text = (f"{r['precursors']} → {r['target']}: {'releases' if de < 0 else 'costs'} {abs(de):.3f} eV/atom at 0 K; "
            f"at {t:.0f} K ({t - 273.15:.0f} °C) ΔG ≈ {dg:+.3f} eV/atom, "
            f"{'favourable' if dg < 0 else 'unfavourable'}")
    return text + (f" ({r['note']})" if r.get("note") else "")


def _routes_note(routes: dict | None) -> str:
    if routes is None:
        return "No synthesis routes: the synthesis planner did not run for this campaign."
    return ("Solid-state routes from the synthesis planner, best first. ΔE: reaction energy at 0 K from "
            "the energies named in the last column; ΔG(T): ΔE with the entropy of gases released or taken "
            "up at the temperature T, an estimate; below zero means the reaction runs downhill.")


def _rel(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def render_markdown(doc: dict, folder: Path) -> str:
    """Markdown with image and file links relative to `folder` (where the .md file is written)."""
    out = [f"# {doc['title']}", "", doc["headline"], ""]
    out += [f"- **{k}**: " + (f"[{v}]({href})" if href else str(v)) for k, v, href in doc["facts"]] + [""]
    if doc.get("hull"):
        # indented lines are details of the line above: nested items
        out += ["**The hull and the references**", ""]
        out += [" " * (len(x) - len(x.lstrip())) + f"- {x.strip()}" for x in doc["hull"]] + [""]
    out += [" · ".join(f"[{t}]({h})" for t, h in doc["links"]), "", "## What to look at next", ""]
    for key, title in NEXT_TITLES:
        out += [f"**{title}**", ""] + [f"- {x}" for x in doc["next"][key]] + [""]
    out += ["## Top candidates", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for i, d in enumerate(doc["top"], 1):
        cells = [c.replace("|", "/") for c in _cells(i, d)]
        cells[-1] = f"[{cells[-1]}]({d['_cif']})" if d.get("_cif") else "—"
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for i, d in enumerate(doc["top"], 1):
        if d.get("_picture"):
            out += [f"![{i}. {d['formula']}]({_rel(d['_picture'], folder)})", ""]
    out += ["## Plots", "", doc["mae_definition"], ""]
    for title, path, page in doc["plots"]:
        out += [f"### {title}", "", f"![{title}]({_rel(path, folder)})", ""]
        if page:
            out += [f"[interactive version]({page})", ""]
    out += ["## Synthesis routes", "", _routes_note(doc["routes"]), ""]
    for i, d in enumerate(doc["top"], 1):
        routes = (doc["routes"] or {}).get(d["id"], [])
        if not routes:
            continue
        out += [f"### {i}. {d['formula']} (`{d['id']}`)", ""]
        if any(r.get("reaction") for r in routes):
            out += ["| " + " | ".join(t for t, _, _ in ROUTE_COLUMNS) + " |", "|" + "---|" * len(ROUTE_COLUMNS)]
            out += ["| " + " | ".join(_route_cell(r, k, f).replace("|", "/") for _, k, f in ROUTE_COLUMNS) + " |"
                    for r in routes if r.get("reaction")]
            out.append("")
        out += [f"- {route_reading(r)}" for r in routes] + [""]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;font-size:14px;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top}th{background:#f3f3f3;text-align:left}img{max-width:100%;border:1px solid #eee}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:12px}.wide{grid-column:1/-1}
.hit{color:#d62728;font-weight:bold}.cards{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px}.card p{margin:.3em 0;font-size:14px}
.headline{font-size:17px;background:#f7f7f2;padding:10px 14px;border-left:4px solid #d62728}
.links a{margin-right:1.2em}.reading{font-size:14px;color:#333}figcaption{font-size:13px;color:#555}
.next h3{margin-bottom:.2em}"""


def _aspect(png: bytes) -> float:
    """Width / height of a PNG, read from its IHDR chunk (bytes 16-24)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return 1.0
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    return w / h if h else 1.0


def _img(path: Path, alt: str) -> tuple[str, float]:
    raw = Path(path).read_bytes()
    return (f"<img alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{base64.b64encode(raw).decode()}'>",
            _aspect(raw))


def _a(text: str, href: str) -> str:
    return f"<a href='{html.escape(href, quote=True)}'>{html.escape(text)}</a>"


def render_html(doc: dict, folder: Path | None = None) -> str:
    """One HTML page: headline and facts, links, what to look at next, the top candidates with a
    picture of each structure and its CIF, the plots, and the synthesis routes as tables."""
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{e(doc['title'])}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(doc['title'])}</h1>",
           f"<p class='headline'>{e(doc['headline'])}</p>", "<table>"]
    out += [f"<tr><th>{e(k)}</th><td>{_a(str(v), href) if href else e(str(v))}</td></tr>" for k, v, href in doc["facts"]]
    out.append("</table>")
    if doc.get("hull"):
        # folded: it is long, and what to look at next should be on the first screen
        out += [f"<details><summary><b>The hull and the references</b>: {e(doc['hull'][0].strip())}</summary><ul>"]
        out += [f"<li>{e(x)}</li>" for x in doc["hull"][1:]] + ["</ul></details>"]
    out += ["<p class='links'>" + "".join(_a(t, h) for t, h in doc["links"]) + "</p>",
            "<h2 id='next'>What to look at next</h2><div class='next'>"]
    ids = {d["id"] for d in doc["top"]}
    for key, title in NEXT_TITLES:
        out.append(f"<h3>{e(title)}</h3><ul>")
        for line in doc["next"][key]:
            cid = next((i for i in ids if f"({i})" in line), None)  # link a candidate the report shows
            out.append(f"<li>{e(line)}" + (f" {_a('(below)', f'#cand-{cid}')}" if cid else "") + "</li>")
        out.append("</ul>")
    out += ["</div>", "<h2 id='top'>Top candidates</h2>",
            "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>"]
    for i, d in enumerate(doc["top"], 1):
        cells = [e(c) for c in _cells(i, d)]
        cells[1] = _a(d["formula"], f"#cand-{d['id']}")
        cells[-1] = _a(Path(d["_cif"]).name, d["_cif"]) if d.get("_cif") else "—"
        cls = " class='hit'" if d["hit"] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out += ["</table>", "<h3>The structures</h3><div class='cards'>"]
    for i, d in enumerate(doc["top"], 1):
        img = _img(d["_picture"], f"structure of {d['formula']}")[0] if d.get("_picture") else ""
        out.append(f"<div class='card' id='cand-{e(d['id'])}'>{img}"
                   f"<p><b>{i}. {e(d['formula'])}</b> · {e(d['spacegroup'])} · e_above_hull "
                   f"{e(_num(d['e_above_hull']))} eV/atom · <b>{e(d.get('_novelty', ''))}</b></p>"
                   f"<p>found by {e(d['source'])} in round {d['round'] + 1} · <code>{e(d['id'])}</code> · "
                   + (_a("CIF", d["_cif"]) if d.get("_cif") else "no CIF") + "</p></div>")
    out += ["</div>", "<h2 id='plots'>Plots</h2>", f"<p>{e(doc['mae_definition'])}</p>", "<div class='plots'>"]
    for title, path, page in doc["plots"]:
        img, aspect = _img(path, title)
        wide = " class='wide'" if aspect > 1.6 else ""  # e.g. the hull with its side panel
        out.append(f"<figure{wide}>{img}<figcaption>{e(title)}"
                   + (f" · {_a('interactive version', page)}" if page else "") + "</figcaption></figure>")
    out += ["</div>", "<h2 id='routes'>Synthesis routes</h2>", f"<p>{e(_routes_note(doc['routes']))}</p>"]
    for i, d in enumerate(doc["top"], 1):
        routes = (doc["routes"] or {}).get(d["id"], [])
        if not routes:
            continue
        out.append(f"<h3>{i}. {e(d['formula'])} <code>{e(d['id'])}</code></h3>")
        real = [r for r in routes if r.get("reaction")]
        if real:
            out.append("<table><tr>" + "".join(f"<th>{e(t)}</th>" for t, _, _ in ROUTE_COLUMNS) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(_route_cell(r, k, f))}</td>" for _, k, f in ROUTE_COLUMNS) + "</tr>"
                    for r in real]
            out.append("</table>")
        out.append("<ul class='reading'>" + "".join(f"<li>{e(route_reading(r))}</li>" for r in routes) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)
