"""Lab requests out as files, lab results in from an inbox folder.

Export (to the config's export_dir): per request `<id>.cif` and `<id>.json` (what is asked,
in which units and ranges, the suggested route), plus `requests.csv` (the open requests) and
`results_template.csv` (a header and one row per open request, ready to fill in) and
`results.schema.json`. Every file is written to a temporary name and renamed, so a lab never
reads half a file.

Inbox (RUN/lab/inbox): a `.csv` or `.json` results file dropped there is checked by the same
path as every other submission, then moved to `processed/` or to `rejected/` with a
`<name>.errors.txt` beside it. Write files under a temporary name (`.tmp`, `.part` or a leading
dot, all ignored) and rename them when complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

from xtalforge.oracles.lab.intake import LabStore, Outcome, results_schema_json, submit_results
from xtalforge.oracles.lab.validation import MAX_BYTES, Problem

INBOX_SUFFIXES = {".csv": "csv", ".json": "json"}


def safe_stem(s: str) -> str:
    """A file-system-safe name: candidate ids and uploaded file names reach the disk only
    through this."""
    out = re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:80].lstrip(".")
    return out or "x"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_requests(requests: list[dict], folder: Path, how_to_answer: str = "") -> None:
    """(Re)write the request files for `requests` (rows of store.lab_requests) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for r in requests:
        for q in r["quantities"]:
            if q["name"] not in names:
                names.append(q["name"])
        stem = safe_stem(r["candidate_id"])
        cif = folder / f"{stem}.cif"
        if not cif.exists():
            write_atomic(cif, r["cif"])
        meta = {
            "candidate_id": r["candidate_id"], "formula": r["formula"], "round": r["round"],
            "requested_at": r["at"], "status": "answered" if r["answered"] else "open",
            "quantities": r["quantities"], "synthesis_route": r.get("route") or "",
            "cif_file": cif.name, "answer": how_to_answer,
        }
        write_atomic(folder / f"{stem}.json", json.dumps(meta, indent=2))
    open_ = [r for r in requests if not r["answered"]]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["candidate_id", "formula", "round", "quantities", "synthesis_route", "cif_file"])
    for r in open_:
        w.writerow([r["candidate_id"], r["formula"], r["round"], " ".join(q["name"] for q in r["quantities"]),
                    r.get("route") or "", f"{safe_stem(r['candidate_id'])}.cif"])
    write_atomic(folder / "requests.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["candidate_id", *names, "status", "error"])
    for r in open_:
        w.writerow([r["candidate_id"], *[""] * len(names), "ok", ""])
    write_atomic(folder / "results_template.csv", buf.getvalue())
    write_atomic(folder / "results.schema.json", results_schema_json())


def inbox_files(inbox: Path) -> list[Path]:
    """Complete result files waiting in `inbox`, oldest name first; links are not followed."""
    if not inbox.is_dir():
        return []
    out = []
    for p in sorted(inbox.iterdir()):
        if p.is_symlink() or not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() in INBOX_SUFFIXES:
            out.append(p)
    return out


def process_inbox(store: LabStore, oracle: str, inbox: Path) -> list[tuple[Path, Outcome]]:
    """Submit every file in `inbox`; returns (where each file went, its outcome)."""
    done_dir, bad_dir = inbox / "processed", inbox / "rejected"
    done_dir.mkdir(parents=True, exist_ok=True)
    bad_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path in inbox_files(inbox):
        size = path.stat().st_size
        if size > MAX_BYTES:
            outcome = Outcome(False, problems=[Problem(None, None, f"{size} bytes; at most {MAX_BYTES} per file")])
            store.record_lab_submission(oracle, {"source": "inbox", "label": path.name, "digest": "",
                                                 "errors": [str(p) for p in outcome.problems]})
        else:
            data = path.read_bytes()
            outcome = _already_applied(store, oracle, path, data) or submit_results(
                store, oracle, data, INBOX_SUFFIXES[path.suffix.lower()], "inbox", path.name)
        dest = _move(path, done_dir if outcome.accepted else bad_dir)
        if not outcome.accepted:
            write_atomic(dest.with_name(dest.name + ".errors.txt"),
                         "".join(f"{p}\n" for p in outcome.problems))
        out.append((dest, outcome))
    return out


def _already_applied(store: LabStore, oracle: str, path: Path, data: bytes) -> Outcome | None:
    # A file accepted under this very name that is still in the inbox was committed just
    # before a crash, before it could be moved: move it now, do not judge it again.
    digest = hashlib.sha256(data).hexdigest()
    for s in store.lab_submissions(oracle, digest=digest):
        if s["accepted"] and s["source"] == "inbox" and s["label"] == path.name:
            return Outcome(True, s["pk"])
    return None


def _move(path: Path, folder: Path) -> Path:
    """Move `path` into `folder` without overwriting an earlier file of the same name."""
    dest = folder / safe_stem(path.name)
    base, k = f"{dest.stem}-{time.strftime('%Y%m%d-%H%M%S')}", 1
    while dest.exists():
        dest = folder / f"{base}-{k}{dest.suffix}"
        k += 1
    os.replace(path, dest)
    return dest
