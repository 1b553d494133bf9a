"""Rendering the campaign report document as Markdown and as self-contained HTML.

The document is a plain dict built by `report.write_report`: title, facts (label, value),
plots (title, PNG path), top (candidate rows of `report.ranked`) and routes (candidate id ->
list of route dicts, or None). HTML inlines the PNGs so the one file can be mailed or opened
from the MLflow artifact viewer.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path

COLUMNS = ("rank", "formula", "space group", "e_above_hull (eV/atom)", "e_form (eV/atom)", "hit",
           "found by", "round", "parents")


def _num(v: float, spec: str = "+.3f") -> str:
    return "—" if not math.isfinite(float(v)) else format(float(v), spec)


def _cells(rank: int, d: dict) -> list[str]:
    return [str(rank), d["formula"], d["spacegroup"], _num(d["e_above_hull"]), _num(d["e_form_per_atom"]),
            "yes" if d["hit"] else "", d["source"], str(d["round"] + 1), d.get("_parents") or "—"]


def _route_text(route: dict) -> str:
    return "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                     for k, v in route.items())


def _routes_note(routes: dict | None) -> str:
    if routes is None:
        return "No synthesis routes: the synthesis planner did not run for this campaign."
    return "Routes suggested by the synthesis planner, best first."


def render_markdown(doc: dict, folder: Path) -> str:
    """Markdown with image links relative to `folder` (where the .md file is written)."""
    out = [f"# {doc['title']}", ""]
    out += [f"- **{k}**: {v}" for k, v in doc["facts"]] + [""]
    out += ["## Plots", ""]
    for title, path in doc["plots"]:
        out += [f"### {title}", "", f"![{title}]({Path(os.path.relpath(path, folder)).as_posix()})", ""]
    out += ["## Top candidates", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for i, d in enumerate(doc["top"], 1):
        out.append("| " + " | ".join(c.replace("|", "/") for c in _cells(i, d)) + " |")
    out += ["", "## Synthesis routes", "", _routes_note(doc["routes"]), ""]
    for i, d in enumerate(doc["top"], 1):
        routes = (doc["routes"] or {}).get(d["id"], [])
        if routes:
            out.append(f"**{i}. {d['formula']}** (`{d['id']}`)")
            out += [f"  {k}. {_route_text(r)}" for k, r in enumerate(routes, 1)] + [""]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.plots{display:grid;
grid-template-columns:1fr 1fr;gap:12px}.wide{grid-column:1/-1}.hit{color:#d62728;font-weight:bold}"""


def _aspect(png: bytes) -> float:
    """Width / height of a PNG, read from its IHDR chunk (bytes 16-24)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return 1.0
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    return w / h if h else 1.0


def render_html(doc: dict) -> str:
    """One self-contained HTML page: facts, the plots inline, top candidates and routes."""
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{e(doc['title'])}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(doc['title'])}</h1>", "<table>"]
    out += [f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in doc["facts"]]
    out += ["</table>", "<h2>Plots</h2>", "<div class='plots'>"]
    for title, path in doc["plots"]:
        raw = Path(path).read_bytes()
        data = base64.b64encode(raw).decode()
        wide = " class='wide'" if _aspect(raw) > 1.6 else ""  # e.g. the hull with its side panel
        out.append(f"<figure{wide}><img alt='{e(title)}' src='data:image/png;base64,{data}'>"
                   f"<figcaption>{e(title)}</figcaption></figure>")
    out += ["</div>", "<h2>Top candidates</h2>", "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>"]
    for i, d in enumerate(doc["top"], 1):
        cls = " class='hit'" if d["hit"] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in _cells(i, d)) + "</tr>")
    out += ["</table>", "<h2>Synthesis routes</h2>", f"<p>{e(_routes_note(doc['routes']))}</p>"]
    for i, d in enumerate(doc["top"], 1):
        routes = (doc["routes"] or {}).get(d["id"], [])
        if routes:
            out.append(f"<h3>{i}. {e(d['formula'])} <code>{e(d['id'])}</code></h3><ol>")
            out += [f"<li>{e(_route_text(r))}</li>" for r in routes] + ["</ol>"]
    out.append("</body></html>")
    return "\n".join(out)
