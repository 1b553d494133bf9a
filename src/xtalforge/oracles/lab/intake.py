"""Where lab results enter: parse, check against the open requests, commit all or nothing.

`submit_results` is the one path for `xtalforge lab submit`, the inbox folder and the HTTP API,
so a result is judged the same way whichever way it came. An accepted submission is committed
(measurements and audit row in one transaction) before the caller is told "accepted"; a
rejected one leaves only its audit row.

Results are one `Measurement` per candidate and lab (oracle = the lab's name, fidelity 2)
holding every requested quantity: the store keeps one final result per candidate and oracle,
so a partial answer would block the rest forever. A quantity that could not be measured is
sent as null and named in the measurement's `error` ("not measured: band_gap").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from xtalforge.oracles.lab.validation import (
    MAX_BYTES,
    LabResult,
    Problem,
    QuantitySpec,
    rows_from_csv,
    rows_from_json,
    validate,
)
from xtalforge.types import Candidate, Fidelity, Measurement, Status

TOKEN_KEY = "lab_token_sha256"
Source = Literal["cli", "inbox", "http"]


class LabStore(Protocol):
    """The part of the campaign store (loop/store.py) a lab needs."""

    def get(self, key: str, default: str | None = None) -> str | None: ...
    def put(self, key: str, value: str) -> None: ...
    def candidates(self, round: int | None = None, ids: Any = None) -> list[Candidate]: ...
    def measurements(self, oracle: str | None = None, status: Any = None) -> list[Measurement]: ...
    def add_lab_requests(self, rows: Sequence[dict]) -> int: ...
    def lab_requests(self, oracle: str, open_only: bool = False) -> list[dict]: ...
    def apply_lab_submission(self, oracle: str, results: Sequence[Measurement],
                             audit: dict) -> tuple[int | None, list[str]]: ...
    def record_lab_submission(self, oracle: str, audit: dict) -> int: ...
    def lab_submissions(self, oracle: str | None = None, digest: str | None = None) -> list[dict]: ...


@dataclass
class Outcome:
    """What became of one submission. An inbox entry that was not judged (yet) is not
    accepted either: `waiting` (not complete yet, taken on a later look) or `skipped` (never
    read: not a regular results file), with the reason in `note`."""

    accepted: bool
    submission_id: int | None = None
    candidates: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    state: Literal["judged", "waiting", "skipped"] = "judged"
    note: str = ""

    def summary(self) -> str:
        if self.state != "judged":
            return f"{self.state}: {self.note}"
        if self.accepted:
            return f"accepted: {len(self.candidates)} result(s) stored (submission {self.submission_id})"
        return f"rejected: {len(self.problems)} problem(s); nothing was applied"


# -- tokens ----------------------------------------------------------------------------------
def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def issue_token(store: LabStore) -> str:
    """A new bearer token for the lab API, replacing any earlier one. Only its SHA-256 is
    stored (the token is 256 random bits, so an unsalted hash cannot be guessed back)."""
    token = secrets.token_urlsafe(32)
    store.put(TOKEN_KEY, _sha256(token))
    return token


def token_ok(store: LabStore, presented: str | None) -> bool:
    """True when `presented` is the current token; constant-time in the comparison."""
    want = store.get(TOKEN_KEY)
    if not want or not presented:
        return False
    return hmac.compare_digest(_sha256(presented), want)


# -- the one path ----------------------------------------------------------------------------
def quantity_specs(store: LabStore, oracle: str) -> dict[str, QuantitySpec]:
    """Every quantity asked of `oracle` in any request (these name the CSV columns)."""
    out: dict[str, QuantitySpec] = {}
    for r in store.lab_requests(oracle):
        for q in r["quantities"]:
            out[q["name"]] = QuantitySpec.from_dict(q)
    return out


def submit_results(store: LabStore, oracle: str, payload: str | bytes, fmt: Literal["csv", "json"],
                   source: Source, label: str = "") -> Outcome:
    """Check a CSV or JSON submission against `oracle`'s requests and commit it if sound."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    audit: dict[str, Any] = {"source": source, "label": label, "digest": hashlib.sha256(raw).hexdigest(),
                             "n_rows": 0, "errors": []}
    requests = store.lab_requests(oracle)
    if len(raw) > MAX_BYTES:
        rows, problems = [], [Problem(None, None, f"{len(raw)} bytes; send at most {MAX_BYTES} per submission")]
    elif fmt == "csv":
        rows, problems = rows_from_csv(raw, quantity_specs(store, oracle))
    else:
        rows, problems = rows_from_json(raw)
    audit["n_rows"] = len(rows)
    results: list[LabResult] = []
    if not problems:
        specs = {r["candidate_id"]: [QuantitySpec.from_dict(q) for q in r["quantities"]] for r in requests}
        answered = {r["candidate_id"] for r in requests if r["answered"]}
        results, problems = validate(rows, specs, answered)
    if problems:
        return _reject(store, oracle, audit, problems)
    at = {r["candidate_id"]: r for r in requests}
    now = time.time()
    ms = [to_measurement(res, oracle, at[res.candidate_id], now) for res in results]
    sid, taken = store.apply_lab_submission(oracle, ms, audit)
    if sid is None:  # another writer got there between our check and our commit
        rows_of = {res.candidate_id: res.row for res in results}
        return _reject(store, oracle, audit, [
            Problem(rows_of.get(c), c, "already has a result from this lab; results are final") for c in taken])
    return Outcome(True, sid, [m.candidate_id for m in ms])


def _reject(store: LabStore, oracle: str, audit: dict, problems: list[Problem]) -> Outcome:
    audit["errors"] = [str(p) for p in problems]
    store.record_lab_submission(oracle, audit)
    return Outcome(False, problems=problems)


def to_measurement(res: LabResult, oracle: str, request: dict, now: float) -> Measurement:
    """A checked row as a fidelity-2 measurement; cost_s is the lab's turnaround in seconds."""
    error = res.error
    if res.not_measured:
        note = f"not measured: {', '.join(res.not_measured)}"
        error = f"{note}; {error}" if error else note
    return Measurement(
        candidate_id=res.candidate_id, oracle=oracle, fidelity=int(Fidelity.lab),
        values=dict(res.values), stdev=dict(res.stdev),
        status=Status.ok if res.status == "ok" else Status.failed, error=error,
        cost_s=max(0.0, now - float(request["at"])), at=now, round=int(request["round"]),
    )


def results_schema(max_rows: int = 10_000) -> dict[str, Any]:
    """JSON Schema of a results document (the HTTP body and a .json inbox file)."""
    number = {"type": "number"}
    value = {"anyOf": [number, {"type": "boolean"}, {"type": "null"}]}
    row = {
        "type": "object",
        "additionalProperties": False,
        "required": ["candidate_id", "values"],
        "properties": {
            "candidate_id": {"type": "string", "minLength": 1, "maxLength": 128},
            "values": {"type": "object", "additionalProperties": value,
                       "description": "quantity -> value in the request's unit; null: not measured"},
            "stdev": {"type": "object", "additionalProperties": {"anyOf": [number, {"type": "null"}]}},
            "status": {"type": "string", "enum": ["ok", "failed"], "default": "ok"},
            "error": {"type": "string", "maxLength": 2000},
        },
    }
    return {
        "title": "LabResults",
        "type": "object",
        "additionalProperties": False,
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": row, "minItems": 1, "maxItems": max_rows},
                       "source": {"type": "string", "maxLength": 200}},
    }


def results_schema_json() -> str:
    return json.dumps(results_schema(), indent=2)
