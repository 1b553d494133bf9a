"""Checking lab results: one path for CSV files, JSON files and HTTP bodies.

A submission is all or nothing. Every row is checked against the lab's requests, every problem
is reported (one message each, naming the row and candidate), and only a submission without
problems is applied. What is checked:

- the candidate id has a request to this lab, appears once in the submission, and has no
  result yet (results are final: the store keeps one result per candidate and oracle);
- each quantity was requested, has the declared kind (a number or a yes/no), is finite and
  lies within the declared [min, max];
- a row reports every requested quantity. `null` (an empty CSV cell) says "could not be
  measured"; at least one value must be given, or the row says status "failed" with an error.

Format (JSON; the HTTP body and a .json file are the same document)::

    {"results": [{"candidate_id": "3f2a...", "values": {"band_gap": 1.2, "made": true},
                  "stdev": {"band_gap": 0.1}, "status": "ok", "error": ""}]}

CSV: a header `candidate_id,<quantity>...[,<quantity>_stdev...][,status][,error]`, one row per
candidate; booleans as yes/no, true/false or 1/0.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MAX_ROWS = 10_000  # results per submission
MAX_BYTES = 5_000_000  # bytes per submission (file or HTTP body)
MAX_ERROR_CHARS = 2_000
ROW_FIELDS = ("candidate_id", "values", "stdev", "status", "error")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


@dataclass(frozen=True)
class QuantitySpec:
    """What a request asks for: a named value, its unit, its kind and its accepted range."""

    name: str
    unit: str = ""
    kind: Literal["float", "bool"] = "float"
    min: float | None = None
    max: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantitySpec:
        return cls(name=str(d["name"]), unit=str(d.get("unit") or ""), kind=d.get("kind", "float"),
                   min=d.get("min"), max=d.get("max"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Problem:
    """One reason a submission was rejected. `row` is 1-based (the first result or CSV data
    line); None means the submission as a whole (unreadable, a bad CSV header)."""

    row: int | None
    candidate_id: str | None
    message: str

    def __str__(self) -> str:
        where = "submission" if self.row is None else f"row {self.row}"
        if self.candidate_id:
            where += f" ({self.candidate_id})"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabResult:
    """A checked row: float values (a yes/no is 1.0/0.0) in the units of the request."""

    row: int
    candidate_id: str
    values: dict[str, float] = field(default_factory=dict)
    stdev: dict[str, float] = field(default_factory=dict)
    status: Literal["ok", "failed"] = "ok"
    error: str = ""
    not_measured: list[str] = field(default_factory=list)


class _Bad:
    """A CSV cell that could not be read; carried to `validate` so it reports it in order."""

    def __init__(self, message: str):
        self.message = message


def _show(v: Any, n: int = 60) -> str:
    # repr keeps control characters out of logs and error files; long input is cut
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# -- reading ---------------------------------------------------------------------------------
def rows_from_json(text: str | bytes) -> tuple[list[Any], list[Problem]]:
    """The `results` list of a JSON document (a bare list is accepted too)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:
        return [], [Problem(None, None, f"not valid JSON ({str(err)[:120]})")]
    if isinstance(doc, dict):
        extra = sorted(set(doc) - {"results", "source"})
        if extra:
            return [], [Problem(None, None, f"unknown top-level field(s) {', '.join(map(_show, extra))}; "
                                            "use {\"results\": [...]}")]
        doc = doc.get("results")
    if not isinstance(doc, list):
        return [], [Problem(None, None, "expected {\"results\": [...]}, a list of results")]
    return doc, []


def rows_from_csv(text: str | bytes, specs: Mapping[str, QuantitySpec]) -> tuple[list[Any], list[Problem]]:
    """Rows as the JSON form, cells parsed by the kind of the quantity their column names."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            return [], [Problem(None, None, "not UTF-8 text")]
    text = text.lstrip("\ufeff")
    try:
        lines = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    except csv.Error as err:
        return [], [Problem(None, None, f"not readable as CSV ({err})")]
    if not lines:
        return [], [Problem(None, None, "empty file: expected a header and one row per candidate")]
    header = [h.strip() for h in lines[0]]
    problems = []
    known = {"candidate_id", "status", "error"} | set(specs) | {f"{q}_stdev" for q in specs}
    if "candidate_id" not in header:
        problems.append(Problem(None, None, "the header has no candidate_id column"))
    for h in header:
        if h not in known:
            problems.append(Problem(None, None, f"column {_show(h)} is not a requested quantity "
                                                f"(requested: {', '.join(sorted(specs)) or 'none'})"))
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        problems.append(Problem(None, None, f"column(s) {', '.join(dup)} appear more than once"))
    if problems:
        return [], problems
    rows: list[Any] = []
    for cells in lines[1:]:
        if len(cells) != len(header):
            rows.append(_Bad(f"{len(cells)} cells for {len(header)} columns"))
            continue
        cell = {h: c.strip() for h, c in zip(header, cells)}
        row: dict[str, Any] = {"candidate_id": cell["candidate_id"], "values": {}, "stdev": {}}
        for h, c in cell.items():
            if h in specs:
                row["values"][h] = _parse_cell(c, specs[h])
            elif h.endswith("_stdev"):
                if c:
                    row["stdev"][h.removesuffix("_stdev")] = _parse_cell(c, QuantitySpec(h))
            elif h in ("status", "error") and c:
                row[h] = c
        rows.append(row)
    return rows, []


def _parse_cell(c: str, spec: QuantitySpec) -> Any:
    if c == "":
        return None
    if spec.kind == "bool":
        low = c.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return _Bad(f"{spec.name}: {_show(c)} is not yes/no")
    try:
        return float(c)
    except ValueError:
        return _Bad(f"{spec.name}: {_show(c)} is not a number")


# -- checking --------------------------------------------------------------------------------
def validate(
    rows: Sequence[Any],
    requests: Mapping[str, Sequence[QuantitySpec]],
    answered: set[str],
) -> tuple[list[LabResult], list[Problem]]:
    """Check every row; returns (results, []) or ([], every problem found).

    `requests` maps each requested candidate id to the quantities asked of it; `answered`
    holds the ids that already have a result."""
    if len(rows) > MAX_ROWS:
        return [], [Problem(None, None, f"{len(rows)} results; send at most {MAX_ROWS} per submission")]
    if not rows:
        return [], [Problem(None, None, "no results in this submission")]
    out: list[LabResult] = []
    problems: list[Problem] = []
    first_row: dict[str, int] = {}
    for k, raw in enumerate(rows, start=1):
        res, bad = _check_row(k, raw, requests, answered, first_row)
        problems.extend(bad)
        if res is not None and not bad:
            out.append(res)
    return ([], problems) if problems else (out, [])


def _check_row(k: int, raw: Any, requests: Mapping[str, Sequence[QuantitySpec]], answered: set[str],
               first_row: dict[str, int]) -> tuple[LabResult | None, list[Problem]]:
    if isinstance(raw, _Bad):
        return None, [Problem(k, None, raw.message)]
    if not isinstance(raw, dict):
        return None, [Problem(k, None, "a result must be an object with candidate_id and values")]
    cid = raw.get("candidate_id")
    if not isinstance(cid, str) or not cid.strip() or len(cid) > 128:
        return None, [Problem(k, None, f"candidate_id must be a non-empty string, got {_show(cid)}")]
    label = cid if cid.isprintable() and len(cid) <= 64 else _show(cid, 64)
    p: list[str] = []
    extra = sorted(str(x) for x in set(raw) - set(ROW_FIELDS))
    if extra:
        p.append(f"unknown field(s) {', '.join(map(_show, extra))} (use {', '.join(ROW_FIELDS)})")
    specs = requests.get(cid)
    if specs is None:
        p.append("unknown candidate id: this lab has no request for it")
    if cid in first_row:
        p.append(f"appears twice in this submission (first at row {first_row[cid]}); send one result per candidate")
    else:
        first_row[cid] = k
    if cid in answered:
        p.append("already has a result from this lab; results are final")
    status = raw.get("status", "ok")
    if status not in ("ok", "failed"):
        p.append(f"status must be 'ok' or 'failed', got {_show(status)}")
    error = raw.get("error") or ""
    if not isinstance(error, str) or len(error) > MAX_ERROR_CHARS:
        p.append(f"error must be text of at most {MAX_ERROR_CHARS} characters")
        error = ""
    values = raw.get("values", {})
    stdev = raw.get("stdev", {}) or {}
    if not isinstance(values, dict) or not isinstance(stdev, dict):
        p.append("values and stdev must be objects mapping quantity names to values")
        values, stdev = {}, {}
    res = LabResult(row=k, candidate_id=cid, status=status if status in ("ok", "failed") else "ok", error=error)
    if specs is not None:
        by_name = {s.name: s for s in specs}
        _check_values(res, values, by_name, p)
        _check_stdev(res, stdev, by_name, p)
    return res, [Problem(k, label, m) for m in p]


def _check_values(res: LabResult, values: dict, specs: Mapping[str, QuantitySpec], p: list[str]) -> None:
    for name in values:
        if name not in specs:
            p.append(f"quantity {_show(name)} was not requested (requested: {', '.join(specs)})")
    if res.status == "failed":
        if any(v is not None for v in values.values()):
            p.append("a failed result carries no values (give them with status 'ok')")
        if not res.error.strip():
            p.append("a failed result needs an error saying why")
        return
    for name, spec in specs.items():
        if name not in values:
            p.append(f"{name}: missing (give null if it could not be measured)")
            continue
        v = values[name]
        if v is None:
            res.not_measured.append(name)
            continue
        msg, num = _check_value(v, spec)
        if msg:
            p.append(msg)
        else:
            res.values[name] = num
    if res.not_measured and len(res.not_measured) == len(specs):
        p.append("no quantity has a value; report status 'failed' with an error instead")


def _check_value(v: Any, spec: QuantitySpec) -> tuple[str, float]:
    if isinstance(v, _Bad):
        return v.message, 0.0
    unit = f" {spec.unit}" if spec.unit else ""
    if spec.kind == "bool":
        if not isinstance(v, bool):
            return f"{spec.name}: expected true/false, got {_show(v)}", 0.0
        return "", float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{spec.name}: expected a number, got {_show(v)}", 0.0
    try:
        x = float(v)
    except OverflowError:
        return f"{spec.name}: {_show(v)} is too large", 0.0
    if not math.isfinite(x):
        return f"{spec.name}: {x} is not a measurement (NaN and infinity are refused)", 0.0
    if spec.min is not None and x < spec.min:
        return f"{spec.name}: {x:g}{unit} is below the minimum {spec.min:g}{unit}", 0.0
    if spec.max is not None and x > spec.max:
        return f"{spec.name}: {x:g}{unit} is above the maximum {spec.max:g}{unit}", 0.0
    return "", x


def _check_stdev(res: LabResult, stdev: dict, specs: Mapping[str, QuantitySpec], p: list[str]) -> None:
    for name, v in stdev.items():
        spec = specs.get(name)
        if spec is None or spec.kind != "float":
            p.append(f"stdev for {_show(name)}: not a requested number quantity")
            continue
        if v is None:
            continue
        if name not in res.values:
            p.append(f"stdev for {name}: given without a value")
            continue
        if isinstance(v, _Bad):
            p.append(v.message)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            p.append(f"stdev for {name}: expected a number, got {_show(v)}")
            continue
        try:
            x = float(v)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x) or x < 0:
            p.append(f"stdev for {name}: {x} must be a finite number >= 0")
            continue
        res.stdev[name] = x
