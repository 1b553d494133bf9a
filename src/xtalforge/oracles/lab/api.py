"""The lab's HTTP API, served by uvicorn: `xtalforge lab serve RUN`.

    GET  /health         is the server up, and for which lab
    GET  /requests       the lab's requests (open ones unless include_answered=true)
    POST /results        a results document (see lab_validation); 201 with counts when
                         accepted, 422 with one message per problem when not, nothing applied
    GET  /openapi.json   the OpenAPI spec of all this

/requests and /results need `Authorization: Bearer <token>` (`xtalforge lab token RUN`
prints one); without it, or with a wrong one, 401. /health and /openapi.json need none (they
hold nothing of the campaign's). There is no /docs or /redoc page: FastAPI's load their
JavaScript from a CDN, which a lab network often cannot reach; open /openapi.json in any
OpenAPI viewer instead. A 201 is sent only after the results are committed to the campaign
store. The app holds no state of its own: `create_app` closes over the store, and the token is
checked against the store on every call, so a new token takes effect at once.

A token belongs in the Authorization header, never in the URL: the access log (`log_config`)
blanks the value of any query parameter whose name looks like a secret, in case one is sent.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from xtalforge.oracles.lab.intake import LabStore, results_schema, submit_results, token_ok
from xtalforge.oracles.lab.validation import MAX_BYTES, MAX_ROWS


class Health(BaseModel):
    status: str
    lab: str


class QuantityOut(BaseModel):
    name: str
    unit: str = ""
    kind: str = "float"
    min: float | None = None
    max: float | None = None


class RequestOut(BaseModel):
    candidate_id: str
    formula: str
    round: int
    quantities: list[QuantityOut]
    synthesis_route: str = ""
    cif: str
    requested_at: float = Field(description="Unix time, seconds")
    answered: bool


class RequestsOut(BaseModel):
    lab: str
    requests: list[RequestOut]


class Accepted(BaseModel):
    accepted: bool = True
    submission_id: int
    results: int = Field(description="measurements stored")
    candidates: list[str]


class ProblemOut(BaseModel):
    row: int | None = Field(description="1-based index into results; null: the whole submission")
    candidate_id: str | None
    message: str


class Rejected(BaseModel):
    detail: str
    errors: list[ProblemOut]


class Detail(BaseModel):
    detail: str


_AUTH = {401: {"model": Detail, "description": "missing or wrong bearer token"}}
_BAD = {422: {"model": Rejected, "description": "one message per problem; nothing was applied"}}


def create_app(store: LabStore, lab_name: str) -> FastAPI:
    """The API of one campaign's lab `lab_name`, over that campaign's store."""
    app = FastAPI(title="xtalforge lab API", version="1", docs_url=None, redoc_url=None,
                  description="Lab requests out, measured results in, for one xtalforge campaign.")
    bearer = HTTPBearer(auto_error=False, description="a token printed by `xtalforge lab token RUN`")

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if creds is None or not token_ok(store, creds.credentials):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def known_query(*names: str):
        # a misspelt option (include_answerd=true) is refused, not silently ignored
        def check(request: Request) -> None:
            extra = sorted(set(request.query_params) - set(names))
            if extra:
                raise RequestValidationError([{"loc": ("query", k), "msg": "unknown query parameter",
                                               "type": "extra_forbidden"} for k in extra])
        return check

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [ProblemOut(row=None, candidate_id=None,
                           message=f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}")
                for e in exc.errors()]
        return JSONResponse(Rejected(detail="invalid request", errors=errs).model_dump(), status_code=422)

    @app.get("/health", response_model=Health, tags=["lab"])
    def health() -> Health:
        return Health(status="ok", lab=lab_name)

    @app.get("/requests", response_model=RequestsOut, responses={**_AUTH, **_BAD},
             dependencies=[Depends(authorized), Depends(known_query("include_answered"))], tags=["lab"])
    def requests(include_answered: bool = Query(False, description="also list answered requests")) -> RequestsOut:
        rows = store.lab_requests(lab_name, open_only=not include_answered)
        return RequestsOut(lab=lab_name, requests=[
            RequestOut(candidate_id=r["candidate_id"], formula=r["formula"], round=r["round"],
                       quantities=[QuantityOut(**q) for q in r["quantities"]],
                       synthesis_route=r.get("route") or "", cif=r["cif"], requested_at=r["at"],
                       answered=r["answered"])
            for r in rows])

    @app.post(
        "/results", status_code=201, response_model=Accepted, tags=["lab"],
        responses={**_AUTH, **_BAD, 413: {"model": Detail, "description": f"body over {MAX_BYTES} bytes"}},
        dependencies=[Depends(authorized), Depends(known_query())],
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": results_schema(MAX_ROWS)}}}},
    )
    async def results(request: Request) -> Any:
        body = await _read_capped(request, MAX_BYTES)
        if body is None:
            return JSONResponse({"detail": f"body over {MAX_BYTES} bytes"}, status_code=413)
        client = request.client.host if request.client else "?"
        # the store is synchronous (SQLite): keep it off the event loop
        out = await run_in_threadpool(submit_results, store, lab_name, body, "json", "http", f"http {client}")
        if not out.accepted:
            return JSONResponse(Rejected(
                detail=f"rejected: {len(out.problems)} problem(s); nothing was applied",
                errors=[ProblemOut(**p.to_dict()) for p in out.problems]).model_dump(), status_code=422)
        return Accepted(submission_id=out.submission_id or 0, results=len(out.candidates), candidates=out.candidates)

    return app


_SECRET_PARAM = re.compile(r"token|key|secret|pass|auth|sig", re.IGNORECASE)


def redact_query(path: str) -> str:
    """`path` with the value of every secret-looking query parameter blanked
    ("/requests?token=abc" -> "/requests?token=REDACTED")."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    return base + "?" + urlencode([(k, "REDACTED" if _SECRET_PARAM.search(k) else v) for k, v in pairs])


class RedactQuery(logging.Filter):
    """For uvicorn's access log, whose records carry the request path (query included) as the
    third argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def log_config() -> dict:
    """uvicorn's default logging, with secret query values blanked in the access log."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["redact_query"] = {"()": RedactQuery}
    cfg["handlers"]["access"]["filters"] = ["redact_query"]
    return cfg


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over `limit` bytes (read no further than that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class ServerThread:
    """A real uvicorn server on a loopback socket, in a background thread (tests, examples).

    `with ServerThread(app) as srv: httpx.get(srv.url + "/health")`; the socket is bound
    before uvicorn starts, so port 0 gives a free port without a race."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 20.0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.start_timeout_s = start_timeout_s

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.sock.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
