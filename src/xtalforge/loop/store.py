"""The campaign store: the source of truth, append-only, one transaction per write.

SQLite by default (any SQLAlchemy URL works). Every candidate and every finished measurement
is committed before the loop moves on, so a campaign killed at any moment resumes without
losing or recomputing a finished oracle result.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure
from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from xtalforge.types import Candidate, Measurement, Status

SCHEMA_VERSION = 1

_meta = MetaData()

kv = Table("kv", _meta, Column("key", String, primary_key=True), Column("value", Text))

candidates = Table(
    "candidates",
    _meta,
    Column("id", String, primary_key=True),
    Column("round", Integer, nullable=False),
    Column("source", String, nullable=False),
    Column("formula", String, nullable=False),
    Column("parents", Text, default="[]"),
    Column("structure", Text, nullable=False),  # pymatgen JSON
    Column("meta", Text, default="{}"),
    Column("features", LargeBinary),  # float64 bytes; recomputable, stored to skip rework
    Column("at", Float, nullable=False),
)

measurements = Table(
    "measurements",
    _meta,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("candidate_id", String, nullable=False, index=True),
    Column("oracle", String, nullable=False),
    Column("fidelity", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("status", String, nullable=False),
    Column("values_json", Text, default="{}"),
    Column("stdev_json", Text, default="{}"),
    Column("error", Text, default=""),
    Column("relaxed", Text),
    Column("cost_s", Float, default=0.0),
    Column("at", Float, nullable=False),
    # One final result per candidate and oracle: a retried or resumed evaluation cannot
    # write a second one.
    UniqueConstraint("candidate_id", "oracle", name="one_result_per_oracle"),
)

selections = Table(
    "selections",
    _meta,
    Column("round", Integer, nullable=False),
    Column("candidate_id", String, nullable=False),
    Column("oracle", String, nullable=False),
    Column("acq_value", Float),
    Column("at", Float, nullable=False),
    UniqueConstraint("candidate_id", "oracle", name="one_selection_per_oracle"),
)

rounds = Table(
    "rounds",
    _meta,
    Column("round", Integer, primary_key=True),
    Column("stage", String, nullable=False),  # generated | selected | done
    Column("metrics", Text, default="{}"),
    Column("at", Float, nullable=False),
)

events = Table(
    "events",
    _meta,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("kind", String, nullable=False),  # submit
    Column("candidate_id", String, nullable=False),
    Column("oracle", String, nullable=False),
    Column("round", Integer, nullable=False),
    Column("at", Float, nullable=False),
)

states = Table(
    "states",
    _meta,
    Column("name", String, primary_key=True),
    Column("round", Integer, nullable=False),
    Column("state", Text, nullable=False),
)


def _sqlite_pragmas(dbapi_conn: Any, _rec: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL + synchronous=FULL: a commit survives kill -9 and power loss; readers (status, UI)
    # never block the running campaign.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def store_problem(path: Path) -> str | None:
    """Why the SQLite file at `path` is not a campaign store that can be opened, or None.

    Reads only (never creates a table, so a 0-byte or foreign file stays as it is): a file that
    is empty, not SQLite, damaged, or has no campaign tables is refused with one line."""
    path = Path(path)
    if not path.is_file():
        return f"{path}: no such file"
    if path.stat().st_size == 0:
        return f"{path} is empty: not a campaign store"
    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            return f"{path} is not an SQLite database: not a campaign store"
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                return f"{path} is damaged (sqlite quick_check: {check})"
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            version = con.execute("SELECT value FROM kv WHERE key='schema_version'").fetchone() \
                if "kv" in tables else None
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        return f"{path} cannot be read as a campaign store ({err})"
    missing = sorted({"kv", "candidates", "measurements"} - tables)
    if missing or version is None:
        return f"{path} is not a campaign store (no {', '.join(missing) or 'schema_version'})"
    if int(version[0]) > SCHEMA_VERSION:
        return f"{path} was written by a newer xtalforge (store schema {version[0]}, this one reads {SCHEMA_VERSION})"
    return None


class CampaignStore:
    """Durable record of one campaign."""

    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _meta.create_all(self.engine)
        with self.engine.begin() as c:
            row = c.execute(select(kv.c.value).where(kv.c.key == "schema_version")).first()
            if row is None:
                c.execute(insert(kv).values(key="schema_version", value=str(SCHEMA_VERSION)))

    def close(self) -> None:
        self.engine.dispose()

    # -- key/value -------------------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        with self.engine.connect() as c:
            row = c.execute(select(kv.c.value).where(kv.c.key == key)).first()
        return default if row is None else row[0]

    def put(self, key: str, value: str) -> None:
        with self.engine.begin() as c:
            if c.execute(select(kv.c.key).where(kv.c.key == key)).first():
                c.execute(update(kv).where(kv.c.key == key).values(value=value))
            else:
                c.execute(insert(kv).values(key=key, value=value))

    # -- candidates ------------------------------------------------------------------------
    def add_candidates(self, cands: Sequence[Candidate]) -> int:
        """Insert the candidates not already stored; returns how many were new."""
        if not cands:
            return 0
        with self.engine.begin() as c:
            return self._insert_candidates(c, cands)

    def add_generated(self, round: int, cands: Sequence[Candidate], metrics: dict) -> int:
        """Round `round`'s new candidates and its 'generated' mark in one transaction: a kill
        leaves either both or neither. Returns how many candidates were new."""
        with self.engine.begin() as c:
            n = self._insert_candidates(c, cands) if cands else 0
            self._set_stage(c, round, "generated", metrics)
        return n

    @staticmethod
    def _insert_candidates(c: Any, cands: Sequence[Candidate]) -> int:
        now = time.time()
        have = {
            r[0]
            for r in c.execute(
                select(candidates.c.id).where(candidates.c.id.in_([x.id for x in cands]))
            )
        }
        rows, seen = [], set(have)
        for x in cands:
            if x.id in seen:
                continue
            seen.add(x.id)
            rows.append(dict(
                id=x.id,
                round=x.round,
                source=x.source,
                formula=x.formula,
                parents=json.dumps(x.parents),
                structure=x.structure.to_json(),
                meta=json.dumps(x.meta, default=float),
                at=now,
            ))
        if rows:
            c.execute(insert(candidates), rows)
        return len(rows)

    def set_features(self, feats: dict[str, np.ndarray], meta: dict[str, dict] | None = None) -> None:
        """Store feature rows and merge `meta` ({id: {name: value}}) into the candidates' meta,
        in one transaction."""
        with self.engine.begin() as c:
            for cid, f in feats.items():
                c.execute(
                    update(candidates)
                    .where(candidates.c.id == cid)
                    .values(features=np.asarray(f, dtype=np.float64).tobytes())
                )
            if meta:
                rows = c.execute(select(candidates.c.id, candidates.c.meta).where(candidates.c.id.in_(list(meta))))
                for cid, old in list(rows):
                    merged = {**json.loads(old or "{}"), **meta[cid]}
                    c.execute(update(candidates).where(candidates.c.id == cid)
                              .values(meta=json.dumps(merged, default=float)))

    def _cand(self, r: Any) -> Candidate:
        return Candidate(
            id=r.id,
            structure=Structure.from_str(r.structure, fmt="json"),
            source=r.source,
            round=r.round,
            parents=json.loads(r.parents or "[]"),
            meta=json.loads(r.meta or "{}"),
        )

    def candidates(self, round: int | None = None, ids: Iterable[str] | None = None) -> list[Candidate]:
        q = select(candidates).order_by(candidates.c.at, candidates.c.id)
        if round is not None:
            q = q.where(candidates.c.round == round)
        if ids is not None:
            q = q.where(candidates.c.id.in_(list(ids)))
        with self.engine.connect() as c:
            return [self._cand(r) for r in c.execute(q)]

    def candidate_ids(self) -> set[str]:
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(select(candidates.c.id))}

    def features(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(candidates.c.id, candidates.c.features).where(candidates.c.id.in_(list(ids)))
            )
            return {r[0]: np.frombuffer(r[1], dtype=np.float64) for r in rows if r[1] is not None}

    # -- measurements ----------------------------------------------------------------------
    def add_measurement(self, m: Measurement) -> bool:
        """Commit one result; False when this candidate already has a result from this oracle."""
        with self.engine.begin() as c:
            exists = c.execute(
                select(measurements.c.pk).where(
                    (measurements.c.candidate_id == m.candidate_id) & (measurements.c.oracle == m.oracle)
                )
            ).first()
            if exists:
                return False
            c.execute(
                insert(measurements).values(
                    candidate_id=m.candidate_id,
                    oracle=m.oracle,
                    fidelity=int(m.fidelity),
                    round=m.round,
                    status=Status(m.status).value,
                    values_json=json.dumps(m.values),
                    stdev_json=json.dumps(m.stdev),
                    error=m.error,
                    relaxed=m.relaxed.to_json() if m.relaxed is not None else None,
                    cost_s=m.cost_s,
                    at=m.at,
                )
            )
        return True

    def measurements(self, oracle: str | None = None, status: Status | None = None) -> list[Measurement]:
        q = select(measurements).order_by(measurements.c.pk)
        if oracle:
            q = q.where(measurements.c.oracle == oracle)
        if status:
            q = q.where(measurements.c.status == Status(status).value)
        with self.engine.connect() as c:
            return [
                Measurement(
                    candidate_id=r.candidate_id,
                    oracle=r.oracle,
                    fidelity=r.fidelity,
                    values=json.loads(r.values_json),
                    stdev=json.loads(r.stdev_json),
                    status=Status(r.status),
                    error=r.error or "",
                    relaxed=Structure.from_str(r.relaxed, fmt="json") if r.relaxed else None,
                    cost_s=r.cost_s,
                    at=r.at,
                    round=r.round,
                )
                for r in c.execute(q)
            ]

    def measured_ids(self, oracle: str) -> set[str]:
        with self.engine.connect() as c:
            return {
                r[0]
                for r in c.execute(
                    select(measurements.c.candidate_id).where(measurements.c.oracle == oracle)
                )
            }

    # -- selections and rounds -------------------------------------------------------------
    def add_selection(self, round: int, oracle: str, picks: Sequence[tuple[str, float]]) -> None:
        now = time.time()
        with self.engine.begin() as c:
            for cid, val in picks:
                c.execute(
                    insert(selections).values(
                        round=round, candidate_id=cid, oracle=oracle, acq_value=float(val), at=now
                    )
                )

    def selected(self, oracle: str, round: int | None = None) -> list[str]:
        q = select(selections.c.candidate_id).where(selections.c.oracle == oracle)
        if round is not None:
            q = q.where(selections.c.round == round)
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(q.order_by(selections.c.at))]

    def set_stage(self, round: int, stage: str, metrics: dict | None = None,
                  states: dict[str, dict] | None = None) -> None:
        """Move a round to `stage`, saving `states` (name -> state dict) in the same transaction."""
        with self.engine.begin() as c:
            for name, state in (states or {}).items():
                self._put_state(c, name, round, state)
            self._set_stage(c, round, stage, metrics)

    @staticmethod
    def _set_stage(c: Any, round: int, stage: str, metrics: dict | None) -> None:
        row = c.execute(select(rounds.c.round).where(rounds.c.round == round)).first()
        vals = dict(stage=stage, at=time.time())
        if metrics is not None:
            vals["metrics"] = json.dumps(metrics, default=float)
        if row:
            c.execute(update(rounds).where(rounds.c.round == round).values(**vals))
        else:
            c.execute(insert(rounds).values(round=round, **vals))

    def stages(self) -> dict[int, str]:
        with self.engine.connect() as c:
            return {r.round: r.stage for r in c.execute(select(rounds).order_by(rounds.c.round))}

    def round_metrics(self) -> dict[int, dict]:
        with self.engine.connect() as c:
            return {
                r.round: json.loads(r.metrics or "{}")
                for r in c.execute(select(rounds).order_by(rounds.c.round))
            }

    # -- generator / acquisition state -----------------------------------------------------
    def save_state(self, name: str, round: int, state: dict) -> None:
        with self.engine.begin() as c:
            self._put_state(c, name, round, state)

    @staticmethod
    def _put_state(c: Any, name: str, round: int, state: dict) -> None:
        if c.execute(select(states.c.name).where(states.c.name == name)).first():
            c.execute(update(states).where(states.c.name == name).values(round=round, state=json.dumps(state)))
        else:
            c.execute(insert(states).values(name=name, round=round, state=json.dumps(state)))

    def log_event(self, kind: str, candidate_ids: Sequence[str], round: int, oracle: str) -> None:
        """An audit trail of oracle submissions: lets a test prove nothing finished was rerun."""
        now = time.time()
        if not candidate_ids:
            return
        with self.engine.begin() as c:
            c.execute(insert(events), [dict(kind=kind, candidate_id=i, oracle=oracle, round=round, at=now)
                                       for i in candidate_ids])

    def events(self, kind: str | None = None) -> list[dict]:
        q = select(events).order_by(events.c.pk)
        if kind:
            q = q.where(events.c.kind == kind)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def load_state(self, name: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(states.c.state).where(states.c.name == name)).first()
        return None if row is None else json.loads(row[0])

    def integrity_problems(self) -> list[str]:
        """Cross-table checks a resumed campaign relies on; empty when the store is sound."""
        problems = []
        with self.engine.connect() as c:
            if self.url.startswith("sqlite"):
                res = c.exec_driver_sql("PRAGMA integrity_check").scalar()
                if res != "ok":
                    problems.append(f"sqlite integrity_check: {res}")
            cids = {r[0] for r in c.execute(select(candidates.c.id))}
            for (mid,) in c.execute(select(measurements.c.candidate_id)):
                if mid not in cids:
                    problems.append(f"measurement for unknown candidate {mid}")
            for (sid,) in c.execute(select(selections.c.candidate_id)):
                if sid not in cids:
                    problems.append(f"selection of unknown candidate {sid}")
        return problems

    # -- lab requests and submissions (issue #8) -------------------------------------------
    # A request is open while its candidate has no measurement from that lab: the answer is
    # derived, never a flag to update, so a request and its result cannot disagree.
    def add_lab_requests(self, rows: Sequence[dict]) -> int:
        """Insert lab requests not already stored (one per candidate and lab); returns how many
        were new. A row holds oracle, candidate_id, round, formula, cif, quantities (a list of
        quantity specs: name, unit, kind, min, max) and route (free text, may be empty)."""
        if not rows:
            return 0
        now, new = time.time(), 0
        with self.engine.begin() as c:
            for row in rows:
                have = c.execute(select(lab_requests.c.pk).where(
                    (lab_requests.c.candidate_id == row["candidate_id"])
                    & (lab_requests.c.oracle == row["oracle"]))).first()
                if have:
                    continue
                c.execute(insert(lab_requests).values(
                    oracle=row["oracle"], candidate_id=row["candidate_id"], round=int(row["round"]),
                    formula=row["formula"], cif=row["cif"], quantities=json.dumps(row["quantities"]),
                    route=row.get("route") or "", at=now))
                new += 1
        return new

    def lab_requests(self, oracle: str, open_only: bool = False) -> list[dict]:
        """Requests to `oracle`, oldest first, each with `answered` (bool) and its fields."""
        answered = select(measurements.c.candidate_id).where(measurements.c.oracle == oracle)
        q = select(lab_requests).where(lab_requests.c.oracle == oracle).order_by(lab_requests.c.pk)
        with self.engine.connect() as c:
            done = {r[0] for r in c.execute(answered)}
            out = []
            for r in c.execute(q):
                d = dict(r._mapping)
                d["quantities"] = json.loads(d["quantities"])
                d["answered"] = d["candidate_id"] in done
                if not (open_only and d["answered"]):
                    out.append(d)
        return out

    def apply_lab_submission(self, oracle: str, results: Sequence[Measurement],
                             audit: dict) -> tuple[int | None, list[str]]:
        """All or nothing, in one transaction: every measurement and the submission's audit row.

        Returns (submission id, []) when committed, or (None, ids that already have a result
        from `oracle`) with nothing written. The unique (candidate, oracle) constraint settles
        a race between two writers (the HTTP server and a campaign reading its inbox)."""
        ids = [m.candidate_id for m in results]
        try:
            with self.engine.begin() as c:
                taken = {r[0] for r in c.execute(select(measurements.c.candidate_id).where(
                    (measurements.c.oracle == oracle) & measurements.c.candidate_id.in_(ids)))}
                if taken or len(set(ids)) != len(ids):
                    raise _Conflict(sorted(taken) or ids)
                for m in results:
                    c.execute(insert(measurements).values(**_measurement_row(m)))
                pk = c.execute(insert(lab_submissions).values(
                    **_submission_row(oracle, audit, accepted=True))).inserted_primary_key[0]
        except _Conflict as err:
            return None, err.ids
        except IntegrityError:
            return None, sorted(set(ids) & self.measured_ids(oracle))
        return int(pk), []

    def record_lab_submission(self, oracle: str, audit: dict) -> int:
        """The audit row of a rejected submission (source, label, digest, n_rows, errors)."""
        with self.engine.begin() as c:
            res = c.execute(insert(lab_submissions).values(**_submission_row(oracle, audit, accepted=False)))
            return int(res.inserted_primary_key[0])

    def lab_submissions(self, oracle: str | None = None, digest: str | None = None) -> list[dict]:
        """Audit rows, oldest first: pk, oracle, source, label, digest, accepted, n_rows, errors."""
        q = select(lab_submissions).order_by(lab_submissions.c.pk)
        if oracle:
            q = q.where(lab_submissions.c.oracle == oracle)
        if digest:
            q = q.where(lab_submissions.c.digest == digest)
        with self.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(q)]
        for d in rows:
            d["accepted"] = bool(d["accepted"])
            d["errors"] = json.loads(d["errors"] or "[]")
        return rows


# -- lab oracle tables (issue #8) -----------------------------------------------------------
lab_requests = Table(
    "lab_requests",
    _meta,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("oracle", String, nullable=False),
    Column("candidate_id", String, nullable=False, index=True),
    Column("round", Integer, nullable=False),
    Column("formula", String, nullable=False),
    Column("cif", Text, nullable=False),
    Column("quantities", Text, nullable=False),  # JSON list of {name, unit, kind, min, max}
    Column("route", Text, default=""),
    Column("at", Float, nullable=False),
    UniqueConstraint("candidate_id", "oracle", name="one_lab_request_per_oracle"),
)

lab_submissions = Table(
    "lab_submissions",
    _meta,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("oracle", String, nullable=False),
    Column("source", String, nullable=False),  # cli | inbox | http
    Column("label", Text, default=""),  # a file name or an HTTP client
    Column("digest", String, nullable=False, index=True),  # sha256 of the payload
    Column("accepted", Integer, nullable=False),
    Column("n_rows", Integer, nullable=False),
    Column("errors", Text, default="[]"),  # JSON list of messages, one per problem
    Column("at", Float, nullable=False),
)


class _Conflict(Exception):
    def __init__(self, ids: list[str]):
        super().__init__(", ".join(ids))
        self.ids = ids


def _measurement_row(m: Measurement) -> dict:
    return dict(
        candidate_id=m.candidate_id, oracle=m.oracle, fidelity=int(m.fidelity), round=m.round,
        status=Status(m.status).value, values_json=json.dumps(m.values), stdev_json=json.dumps(m.stdev),
        error=m.error, relaxed=m.relaxed.to_json() if m.relaxed is not None else None,
        cost_s=m.cost_s, at=m.at,
    )


def _submission_row(oracle: str, audit: dict, accepted: bool) -> dict:
    return dict(
        oracle=oracle, source=str(audit.get("source", "")), label=str(audit.get("label", ""))[:500],
        digest=str(audit.get("digest", "")), accepted=int(accepted), n_rows=int(audit.get("n_rows", 0)),
        errors=json.dumps([str(e) for e in audit.get("errors", [])][:1000]), at=time.time(),
    )
