"""Lab requests out as files, lab results in from an inbox folder.

Export (to the config's export_dir): per request `<id>.cif` and `<id>.json` (what is asked,
in which units and ranges, the suggested route), plus `requests.csv` (the open requests) and
`results_template.csv` (a header and one row per open request, ready to fill in) and
`results.schema.json`. Every file is written to a temporary name and renamed, so a lab never
reads half a file.

Inbox (RUN/lab/inbox): a `.csv` or `.json` results file dropped there is checked by the same
path as every other submission, then moved to `processed/` or to `rejected/` with a
`<name>.errors.txt` beside it. A file is taken only once it is complete:

- it has not changed (size and modification time) for `SETTLE_S` seconds, and did not change
  while it was read, and it looks whole (a CSV ends with a line break, a JSON document
  parses); a file that still does not look whole after `STALE_S` seconds is judged as it is;
- or a marker `<name>.done` stands beside it: taken at the next look, as it is.

Files being written may also carry a temporary name (`.tmp`, `.part` or a leading dot) and be
renamed when complete. Every entry that is not taken is reported with the reason (waiting for
completeness, or skipped: links, hard links, FIFOs, folders, other extensions are never read);
one file that cannot be processed is moved to `rejected/` with its reason and never stops the
campaign.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xtalforge.oracles.lab.intake import LabStore, Outcome, results_schema_json, submit_results
from xtalforge.oracles.lab.validation import MAX_BYTES, Problem

log = logging.getLogger(__name__)

INBOX_SUFFIXES = {".csv": "csv", ".json": "json"}
DONE_SUFFIX = ".done"  # `<name>.done` beside a results file: the writer says it is complete
TEMP_SUFFIXES = (".tmp", ".part")
SETTLE_S = 2.0  # seconds a file must stay unchanged before it is taken
STALE_S = 600.0  # seconds after which a file that does not look whole is judged as it is
_OWN_FOLDERS = ("processed", "rejected")


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


def display_name(name: str) -> str:
    """A file name as storable, printable text: bytes that are not UTF-8 (a name from another
    system's encoding) become `\\xNN` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class InboxEntry:
    """One entry of the inbox and what to do with it now."""

    path: Path
    state: Literal["ready", "waiting", "skipped"]
    note: str = ""
    done_marker: bool = False


def scan_inbox(inbox: Path, now: float | None = None, settle_s: float = SETTLE_S) -> list[InboxEntry]:
    """Every entry of `inbox` but its own folders and `.done` markers, in name order: `ready`
    (a complete-looking results file), `waiting` (being written) or `skipped` (never read).
    Links are not followed."""
    if not inbox.is_dir():
        return []
    now = time.time() if now is None else now
    out: list[InboxEntry] = []
    for p in sorted(inbox.iterdir()):
        name = p.name
        if (name in _OWN_FOLDERS and p.is_dir() and not p.is_symlink()) or name.endswith(DONE_SUFFIX):
            continue
        try:
            st = os.lstat(p)
        except FileNotFoundError:  # renamed away while we looked
            continue
        shown = display_name(name)
        if name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES):
            out.append(InboxEntry(p, "waiting", f"{shown}: a temporary name; taken once renamed"))
        elif stat.S_ISLNK(st.st_mode):
            out.append(InboxEntry(p, "skipped", f"{shown}: a symbolic link; links are not followed"))
        elif stat.S_ISDIR(st.st_mode):
            out.append(InboxEntry(p, "skipped", f"{shown}: a folder; only .csv and .json files are read"))
        elif not stat.S_ISREG(st.st_mode):
            out.append(InboxEntry(p, "skipped", f"{shown}: not a regular file (FIFO, socket or device)"))
        elif p.suffix.lower() not in INBOX_SUFFIXES:
            out.append(InboxEntry(p, "skipped", f"{shown}: not a .csv or .json file"))
        elif st.st_nlink > 1:
            out.append(InboxEntry(p, "skipped", f"{shown}: a hard link ({st.st_nlink} names for one file); "
                                                "copy the file into the inbox instead"))
        else:
            done = p.with_name(name + DONE_SUFFIX).is_file()
            age = now - st.st_mtime
            if not done and age < settle_s:
                out.append(InboxEntry(p, "waiting", f"{shown}: changed {max(age, 0.0):.1f} s ago; taken once "
                                                    f"unchanged for {settle_s:g} s (or with {shown}{DONE_SUFFIX})"))
            else:
                out.append(InboxEntry(p, "ready", done_marker=done))
    return out


def inbox_files(inbox: Path, now: float | None = None, settle_s: float = SETTLE_S) -> list[Path]:
    """Complete result files waiting in `inbox`, oldest name first; links are not followed."""
    return [e.path for e in scan_inbox(inbox, now, settle_s) if e.state == "ready"]


def looks_whole(data: bytes, fmt: str) -> bool:
    """A CSV whose last line is ended, a JSON document that parses."""
    if fmt == "csv":
        return data.endswith((b"\n", b"\r"))
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


class _Unfinished(Exception):
    """The file is not complete yet: look again later."""


def read_complete(path: Path, fmt: str, now: float | None = None, trust: bool = False) -> bytes:
    """The bytes of a regular, single-named file that did not change while read and looks
    whole (`trust`: a done marker says it is complete). Raises _Unfinished to wait, OSError
    or ValueError to reject."""
    now = time.time() if now is None else now
    # O_NOFOLLOW and the fstat below close the gap between the scan and the read: a file
    # swapped for a link or a FIFO meanwhile is refused, not followed or blocked on
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        before = os.fstat(fh.fileno())
        if not stat.S_ISREG(before.st_mode) or before.st_nlink > 1:
            raise ValueError("not a regular file with a single name")
        if before.st_size > MAX_BYTES:
            raise ValueError(f"{before.st_size} bytes; at most {MAX_BYTES} per file")
        data = fh.read(MAX_BYTES + 1)
        after = os.fstat(fh.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise _Unfinished("changed while it was read")
    if not trust and not looks_whole(data, fmt) and now - after.st_mtime < STALE_S:
        ends = "ends mid-line" if fmt == "csv" else "is not a whole JSON document yet"
        raise _Unfinished(f"{ends}; judged as it is once unchanged for {STALE_S:g} s")
    return data


def process_inbox(store: LabStore, oracle: str, inbox: Path, settle_s: float = SETTLE_S,
                  now: float | None = None) -> list[tuple[Path, Outcome]]:
    """Submit every complete file in `inbox`; returns (where each entry is, its outcome) for
    every entry, including those waiting or skipped. One file that cannot be processed goes to
    `rejected/` with its reason; it never stops the others, or the campaign."""
    if not inbox.is_dir():
        return []
    done_dir, bad_dir = inbox / "processed", inbox / "rejected"
    done_dir.mkdir(parents=True, exist_ok=True)
    bad_dir.mkdir(parents=True, exist_ok=True)
    out: list[tuple[Path, Outcome]] = []
    for entry in scan_inbox(inbox, now, settle_s):
        if entry.state != "ready":
            out.append((entry.path, Outcome(False, state=entry.state, note=entry.note)))
            continue
        try:
            out.append(_take(store, oracle, entry, done_dir, bad_dir, now))
        except Exception as err:  # one bad file must not stop the campaign, now or on resume
            label = display_name(entry.path.name)
            log.warning("lab inbox: %s could not be processed: %s: %s", label, type(err).__name__, err)
            problem = Problem(None, None, f"could not be processed: {type(err).__name__}: {err}")
            out.append((_reject_file(store, oracle, entry.path, bad_dir, [problem]), Outcome(False, problems=[problem])))
    return out


def _take(store: LabStore, oracle: str, entry: InboxEntry, done_dir: Path, bad_dir: Path,
          now: float | None) -> tuple[Path, Outcome]:
    path = entry.path
    label = display_name(path.name)
    fmt = INBOX_SUFFIXES[path.suffix.lower()]
    try:
        data = read_complete(path, fmt, now, trust=entry.done_marker)
    except _Unfinished as why:
        return path, Outcome(False, state="waiting", note=f"{label}: {why}")
    except (OSError, ValueError) as err:
        problem = Problem(None, None, str(err) if isinstance(err, ValueError) else f"unreadable: {err}")
        return _reject_file(store, oracle, path, bad_dir, [problem]), Outcome(False, problems=[problem])
    outcome = _already_applied(store, oracle, label, data) or submit_results(store, oracle, data, fmt, "inbox", label)
    dest = _move(path, done_dir if outcome.accepted else bad_dir)
    if not outcome.accepted:
        write_atomic(dest.with_name(dest.name + ".errors.txt"), "".join(f"{p}\n" for p in outcome.problems))
    path.with_name(path.name + DONE_SUFFIX).unlink(missing_ok=True)
    return dest, outcome


def _reject_file(store: LabStore, oracle: str, path: Path, bad_dir: Path, problems: list[Problem]) -> Path:
    """Record the rejection, move the file to `bad_dir` with its reasons; where it ended up."""
    label = display_name(path.name)
    try:
        store.record_lab_submission(oracle, {"source": "inbox", "label": label, "digest": "",
                                             "errors": [str(p) for p in problems]})
    except Exception as err:
        log.warning("lab inbox: could not record the rejection of %s: %s", label, err)
    try:
        dest = _move(path, bad_dir)
        write_atomic(dest.with_name(dest.name + ".errors.txt"), "".join(f"{p}\n" for p in problems))
        path.with_name(path.name + DONE_SUFFIX).unlink(missing_ok=True)
        return dest
    except OSError as err:
        log.warning("lab inbox: could not move %s to %s: %s", label, bad_dir, err)
        return path


def _already_applied(store: LabStore, oracle: str, label: str, data: bytes) -> Outcome | None:
    # A file accepted under this very name that is still in the inbox was committed just
    # before a crash, before it could be moved: move it now, do not judge it again.
    digest = hashlib.sha256(data).hexdigest()
    for s in store.lab_submissions(oracle, digest=digest):
        if s["accepted"] and s["source"] == "inbox" and s["label"] == label:
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
