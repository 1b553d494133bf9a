"""The lab oracle: measurements made by people, requested now and answered days later.

`submit` turns picked candidates into durable requests (rows in the campaign store, files in
the export folder); `collect` takes in what came back since the last look (files dropped into
RUN/lab/inbox are checked here; results posted to `xtalforge lab serve` or given to
`xtalforge lab submit` are already in the store) and `pending` names what is still out. The
loop never blocks on it unless the config says `wait`, and then at most `wait_timeout_s`.

Results are fidelity-2 `Measurement`s under the lab's name, one per candidate; see
`lab_intake` for the rules a submission must pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from xtalforge.config import LabConfig
from xtalforge.oracles.lab.files import export_requests, process_inbox
from xtalforge.oracles.lab.intake import LabStore, Outcome
from xtalforge.types import Candidate, Fidelity, Measurement, Status


def lab_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "lab"


def inbox_dir(run_dir: Path) -> Path:
    return lab_dir(run_dir) / "inbox"


def export_dir(cfg: LabConfig, run_dir: Path) -> Path:
    """The config's export_dir; a relative one lives inside the run folder, so it moves with it."""
    p = Path(cfg.export_dir).expanduser()
    return p if p.is_absolute() else Path(run_dir) / p


def suggested_route(c: Candidate) -> str:
    """A synthesis route a generator or synthesis model left in the candidate's meta, as text."""
    route = c.meta.get("synthesis_route") or c.meta.get("route") or ""
    return route if isinstance(route, str) else json.dumps(route, default=str)


class LabOracle:
    """Oracle role (confirm) over a durable request queue; the store is the queue. Each round it
    gets the `requests_per_round` most promising screened candidates it has not been asked about."""

    fidelity = int(Fidelity.lab)
    role = "confirm"

    def __init__(self, cfg: LabConfig, store: LabStore, run_dir: Path, poll_s: float = 1.0):
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.run_dir = Path(run_dir)
        self.inbox = inbox_dir(self.run_dir)
        self.export_dir = export_dir(cfg, self.run_dir)
        self.poll_s = poll_s
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Measurement] = {}  # every lab result seen, by candidate id
        self.last_inbox: list[tuple[Path, Outcome]] = []
        self.per_round = cfg.requests_per_round
        self.wait_timeout_s = cfg.wait_timeout_s if cfg.wait else None
        # a lab quantity that measures the campaign's e_above_hull objective stands in for it
        self.trains = {"e_above_hull": cfg.trains} if cfg.trains else {}
        self.last_new = 0
        self._waited: dict[str, float] = {}

    # -- requests out ----------------------------------------------------------------------
    def submit(self, candidates: Sequence[Candidate], round: int = -1) -> None:
        """Store a request per candidate (idempotent: a candidate is asked once) and export the
        request files; `last_new` says how many requests were new."""
        from pymatgen.io.cif import CifWriter

        specs = [q.model_dump() for q in self.cfg.quantities]
        rows = [
            dict(oracle=self.name, candidate_id=c.id, round=round if round >= 0 else c.round,
                 formula=c.formula, cif=str(CifWriter(c.structure)), quantities=specs,
                 route=suggested_route(c))
            for c in candidates
        ]
        self.last_new = self.store.add_lab_requests(rows)
        self.export()

    def export(self) -> None:
        """Rewrite the request files from the store (the store is the truth; files are a view)."""
        how = (f"post to `xtalforge lab serve {self.run_dir}` (POST /results), run `xtalforge lab submit "
               f"{self.run_dir} FILE`, or drop a .csv/.json file into {self.inbox}")
        export_requests(self.store.lab_requests(self.name), self.export_dir, how)

    def pending(self) -> list[str]:
        """Ids requested and not yet answered."""
        return [r["candidate_id"] for r in self.store.lab_requests(self.name, open_only=True)]

    # -- results in ------------------------------------------------------------------------
    def collect(self, timeout_s: float = 0.0) -> list[Measurement]:
        """Results that arrived since the last call, waiting up to `timeout_s` seconds for one.

        Reads the inbox, then the store (where the HTTP API and `lab submit` commit). The first
        call after a restart returns every stored result: the caller's view is rebuilt."""
        deadline = time.monotonic() + timeout_s
        while True:
            new = self._collect_once()
            left = deadline - time.monotonic()
            if new or left <= 0:
                return new
            # the inbox is a plain folder and the API runs in another process: nothing to wait
            # on but the clock, so poll at a bounded interval
            time.sleep(min(self.poll_s, left))

    def wait_for(self, ids: Iterable[str], timeout_s: float) -> list[Measurement]:
        """Collect until every id in `ids` has a result or `timeout_s` seconds pass."""
        want = set(ids)
        got: list[Measurement] = []
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while True:
            got.extend(self._collect_once())
            left = deadline - time.monotonic()
            if want <= set(self.results) or left <= 0:
                self._waited = {"time_lab_wait_s": time.monotonic() - t0, "lab_results_waited": float(len(got))}
                return got
            time.sleep(min(self.poll_s, left))

    def shutdown(self) -> None:
        """Nothing runs in the background: requests and results live in the store."""

    def notes(self) -> list[str]:
        """What the last look at the inbox did, a line per file."""
        return [f"  lab inbox: {path.name}: {out.summary()}" for path, out in self.last_inbox]

    def metrics_after_collect(self, previous: Mapping[str, float]) -> dict[str, float]:
        """lab_results_new, counted against the previous round's total (not this process's
        view), so it reads the same after a resume."""
        return {"lab_results_new": max(0.0, len(self.results) - previous.get("lab_results_total", 0.0))}

    def metrics_after_submit(self) -> dict[str, float]:
        out = {"lab_requests_new": float(self.last_new), **self._waited,
               "lab_requests_open": float(len(self.pending())), "lab_results_total": float(len(self.results))}
        self.last_new, self._waited = 0, {}
        return out

    def _collect_once(self) -> list[Measurement]:
        self.last_inbox = process_inbox(self.store, self.name, self.inbox)
        new = [m for m in self.store.measurements(oracle=self.name) if m.candidate_id not in self.results]
        for m in new:
            self.results[m.candidate_id] = m
        if new and self.store.lab_requests(self.name):
            self.export()  # the open-request index shrinks as answers arrive
        return new

    def values(self, quantity: str) -> dict[str, float]:
        """`quantity` from every ok lab result that has it, by candidate id."""
        return {cid: m.values[quantity] for cid, m in self.results.items()
                if m.status == Status.ok and quantity in m.values}
