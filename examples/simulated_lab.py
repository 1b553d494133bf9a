"""A simulated lab: answers a campaign's lab requests after a delay, as a real lab would later.

What it "measures" for each requested candidate (deterministic, so a run repeats):

    band_gap      eV       a toy function of the structure's electronegativity spread
    made          yes/no   the "synthesis" worked: the toy e_above_hull is below 0.15 eV/atom
    lattice_a     Å        the a lattice parameter of the requested cell, as XRD would see it
    e_above_hull  eV/atom  a toy stand-in for a DFT check: grows with the distance of the
                           volume per atom from a typical oxide's 11 Å^3

A table (--table CSV with a `formula` column and quantity columns) wins over the toy
functions for the formulas it lists. Only the quantities a request asks for are answered, and
values are kept inside the request's declared range. Answers go to the HTTP API
(`xtalforge lab serve RUN`, with a token) or into RUN/lab/inbox as a results file, written
under a temporary name and then renamed, so the campaign never reads half a file.

    xtalforge run configs/lab_example.yaml --stop-after 1
    xtalforge lab token runs/lab_example           # prints TOKEN
    xtalforge lab serve runs/lab_example &
    python examples/simulated_lab.py http runs/lab_example --token TOKEN --delay 2 --polls 10
    python examples/simulated_lab.py inbox runs/lab_example --delay 2 --polls 10
    xtalforge resume runs/lab_example
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from pymatgen.core import Structure


def toy_values(structure: Structure) -> dict[str, float | bool]:
    """Deterministic stand-ins for lab measurements of `structure` (units as in the module doc)."""
    chis = [el.X for el in structure.composition.elements if not math.isnan(el.X)]
    spread = max(chis) - min(chis) if chis else 0.0
    vpa = structure.volume / len(structure)
    e_hull = round(0.02 * abs(vpa - 11.0), 4)
    return {"band_gap": round(max(0.0, 2.0 * spread - 1.0), 3), "made": e_hull < 0.15,
            "lattice_a": round(structure.lattice.a, 4), "e_above_hull": e_hull}


def load_table(path: Path) -> dict[str, dict[str, str]]:
    """formula -> {quantity: text} from a CSV with a `formula` column."""
    with open(path, newline="") as fh:
        return {row["formula"]: row for row in csv.DictReader(fh) if row.get("formula")}


class SimulatedLab:
    """Answers requests once they are `delay_s` seconds old; remembers what it answered."""

    def __init__(self, delay_s: float = 0.0, table: Mapping[str, Mapping[str, str]] | None = None):
        self.delay_s = delay_s
        self.table = dict(table or {})
        self.answered: set[str] = set()
        self.rejections: list[dict] = []

    def measure(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """A result row for `request` (candidate_id, cif, quantities)."""
        s = Structure.from_str(request["cif"], fmt="cif")
        toy = toy_values(s)
        row = self.table.get(s.composition.reduced_formula, {})
        values: dict[str, Any] = {}
        for q in request["quantities"]:
            name, kind = q["name"], q.get("kind", "float")
            v: Any = row.get(name) if row.get(name) not in (None, "") else toy.get(name)
            if kind == "bool":
                if v is not None and not isinstance(v, bool):
                    v = str(v).strip().lower() in ("1", "true", "yes")
            elif v is not None:
                v = float(v)
                lo, hi = q.get("min"), q.get("max")
                v = max(lo, v) if lo is not None else v
                v = min(hi, v) if hi is not None else v
            values[name] = v
        return {"candidate_id": request["candidate_id"], "values": values}

    def _due(self, requests: list[dict], now: float) -> list[dict]:
        return [r for r in requests if r["candidate_id"] not in self.answered
                and now - float(r["requested_at"]) >= self.delay_s]

    # -- by HTTP ---------------------------------------------------------------------------
    def answer_http(self, client: httpx.Client) -> int:
        """Answer the due open requests with one POST /results; returns how many were accepted."""
        r = client.get("/requests")
        r.raise_for_status()
        due = self._due(r.json()["requests"], time.time())
        if not due:
            return 0
        resp = client.post("/results", json={"results": [self.measure(q) for q in due], "source": "simulated lab"})
        if resp.status_code == 201:
            self.answered.update(q["candidate_id"] for q in due)
            return len(due)
        self.rejections.append(resp.json())
        return 0

    # -- by file ---------------------------------------------------------------------------
    def answer_inbox(self, export_dir: Path, inbox: Path) -> int:
        """Answer the due open requests listed in `export_dir` with one file in `inbox`."""
        index = export_dir / "requests.csv"
        if not index.is_file():
            return 0
        requests = []
        with open(index, newline="") as fh:
            for row in csv.DictReader(fh):
                meta = json.loads((export_dir / f"{Path(row['cif_file']).stem}.json").read_text())
                meta["cif"] = (export_dir / meta["cif_file"]).read_text()
                requests.append(meta)
        due = self._due(requests, time.time())
        if not due:
            return 0
        doc = json.dumps({"results": [self.measure(q) for q in due], "source": "simulated lab"})
        name = f"simlab-{time.time_ns()}-{os.getpid()}.json"
        tmp = inbox / f".{name}.tmp"
        tmp.write_text(doc)
        os.replace(tmp, inbox / name)  # complete, or not there at all
        (inbox / f"{name}.done").touch()  # and marked so: the inbox takes it at once
        self.answered.update(q["candidate_id"] for q in due)
        return len(due)

    def run(self, answer: Any, polls: int, poll_s: float, stop: threading.Event | None = None,
            until: int | None = None) -> int:
        """Call `answer()` up to `polls` times, `poll_s` apart; stop early on `stop` or once
        `until` results were sent. Returns how many were sent."""
        sent = 0
        for _ in range(polls):
            sent += answer()
            if (until is not None and sent >= until) or (stop is not None and stop.wait(poll_s)):
                break
            if stop is None:
                time.sleep(poll_s)
        return sent


def main(argv: list[str] | None = None) -> int:
    from xtalforge.config import load_config
    from xtalforge.oracles.lab.oracle import export_dir, inbox_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["http", "inbox"])
    p.add_argument("run", help="the campaign's run folder")
    p.add_argument("--url", default="http://127.0.0.1:8765")
    p.add_argument("--token", default=os.environ.get("XTALFORGE_LAB_TOKEN"))
    p.add_argument("--delay", type=float, default=2.0, help="seconds before a request is answered")
    p.add_argument("--polls", type=int, default=10)
    p.add_argument("--poll-s", type=float, default=1.0)
    p.add_argument("--table", type=Path, help="CSV: formula plus quantity columns")
    a = p.parse_args(argv)
    lab = SimulatedLab(a.delay, load_table(a.table) if a.table else None)
    run = Path(a.run)
    if a.mode == "http":
        if not a.token:
            p.error("--token (or XTALFORGE_LAB_TOKEN) is needed for http")
        with httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {a.token}"}, timeout=30) as c:
            sent = lab.run(lambda: lab.answer_http(c), a.polls, a.poll_s)
    else:
        cfg = load_config(run / "config.yaml")
        if cfg.lab is None:
            p.error(f"{run} has no lab section")
        sent = lab.run(lambda: lab.answer_inbox(export_dir(cfg.lab, run), inbox_dir(run)), a.polls, a.poll_s)
    print(f"answered {sent} request(s); {len(lab.rejections)} rejected submission(s)")
    for rej in lab.rejections:
        print(json.dumps(rej, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
