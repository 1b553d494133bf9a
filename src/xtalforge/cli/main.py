"""xtalforge run | resume | status | report | ui | lab

Exit codes (README, "Exit codes"): 0 done; 2 bad input: the config (unreadable, invalid, an
element without data, a model that is not an ASE calculator) or a command-line argument or
input file; 1 any other failure: a folder that is not a campaign, a damaged store, a campaign
already running, a rejected lab submission, a Ray cluster that cannot be joined, an unexpected
error. Every failure is one line on stderr, `error: ...`, and is found before anything is
written where it can be.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path


def _quiet() -> None:
    # pymatgen, spglib and torch warn about things a user of the CLI cannot act on
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # spinning idle OpenMP threads slow torch badly on a busy machine (set before torch loads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TQDM_MININTERVAL", "0.5")


from xtalforge.cli.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK  # noqa: E402
from xtalforge.cli.errors import fail as _fail  # noqa: E402


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def cmd_run(a: argparse.Namespace) -> int:
    from xtalforge.config import ConfigError, load_config

    try:
        cfg = load_config(a.config)
        overrides = {}
        if a.ray_address:
            overrides["ray"] = {**cfg.ray.model_dump(), "address": a.ray_address}
        if a.tracking_uri:
            overrides["tracking"] = {**cfg.tracking.model_dump(), "uri": a.tracking_uri}
        if a.output_dir:
            overrides["output_dir"] = a.output_dir
        if overrides:
            from xtalforge.config import parse_config

            cfg = parse_config({**cfg.model_dump(), **overrides})
    except ConfigError as err:
        return _fail(err.problems)
    from xtalforge.generators.compositions import NoCompositionError

    try:
        from xtalforge.generators.registry import build_generator
        from xtalforge.loop.proposals import generator_options

        for g in cfg.generators:  # fail fast on a system no generator can serve
            build_generator(g.name, cfg.elements, cfg.max_atoms, generator_options(cfg, g))
    except (NoCompositionError, ValueError, TypeError, KeyError) as err:
        return _fail([f"generators: {err}"])
    owns_ray = False
    if cfg.ray.address:
        # join the cluster before the run folder exists: one that cannot be joined leaves nothing
        from xtalforge.loop.executor import RayConnectError, start_ray

        try:
            owns_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus, runtime_env=cfg.ray.runtime_env)
        except RayConnectError as err:
            return _fail([str(err)], EXIT_FAILED)
    from xtalforge.loop.campaign import Campaign

    try:
        # the campaign records its config (as config.yaml names files) when it starts running
        camp = Campaign.create(cfg, progress=not a.no_progress)
        print(f"campaign {cfg.name} in {camp.run_dir}  ({cfg.chemsys}, {cfg.rounds} rounds x "
              f"{cfg.acquisition.batch_size} relaxations)")
        camp.run(stop_after=a.stop_after)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    return EXIT_OK


def _resolve_run(run: str) -> Path:
    p = Path(run)
    if not p.exists() and (Path("runs") / run).exists():
        p = Path("runs") / run
    return p


def _campaign_folder_problem(run: Path) -> tuple[str, int] | None:
    """(why `run` cannot be opened as a campaign, exit code), or None. Reads only."""
    from xtalforge.loop.store import store_problem

    if not run.is_dir():
        return f"{run}: no such folder", EXIT_FAILED
    if not (run / "config.yaml").is_file() or not (run / "store.db").exists():
        return f"{run} is not a campaign folder (no config.yaml and store.db)", EXIT_FAILED
    why = store_problem(run / "store.db")
    return (why, EXIT_FAILED) if why else None


def _run_config(run: Path):
    """The run folder's config, or raises ConfigError with the file named in each line."""
    from xtalforge.config import ConfigError, load_config

    try:
        return load_config(run / "config.yaml", relative_to=run)
    except ConfigError as err:
        raise ConfigError([f"{run / 'config.yaml'}: {p}" for p in err.problems]) from None


def cmd_resume(a: argparse.Namespace) -> int:
    from xtalforge.config import ConfigError
    from xtalforge.loop.config_guard import guard_resume
    from xtalforge.loop.lock import CampaignLocked, lock_holder
    from xtalforge.loop.run_paths import portable_config
    from xtalforge.loop.store import CampaignStore

    run = _resolve_run(a.run)
    # the lock first, before anything reads the store or starts Ray: a second resume of a
    # running campaign is refused at once
    holder = lock_holder(run) if (run / "config.yaml").is_file() else None
    if holder:
        return _fail([f"campaign {run} is already running (pid {holder}); wait for it or stop it first"],
                     EXIT_FAILED)
    problem = _campaign_folder_problem(run)
    if problem:
        return _fail([problem[0]], problem[1])
    try:
        cfg = _run_config(run)
    except ConfigError as err:
        return _fail(err.problems)
    st = CampaignStore(f"sqlite:///{(run / 'store.db').resolve()}")
    try:
        done = sum(1 for s in st.stages().values() if s == "done")
        try:  # before anything starts: a refused edit costs no Ray, no model load
            changes = guard_resume(st, portable_config(cfg.model_dump(mode="json"), run), done,
                                   a.allow_config_change or [])
        except ConfigError as err:
            return _fail([f"{run / 'config.yaml'}: {line}" for line in err.problems])
        for path, (old, new) in changes.items():
            print(f"config change from round {done + 1}: {path}: {old!r} -> {new!r}")
    finally:
        st.close()
    from xtalforge.loop.campaign import Campaign

    owns_ray = False
    try:
        if cfg.ray.address:
            from xtalforge.loop.executor import RayConnectError, start_ray

            try:
                owns_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus, runtime_env=cfg.ray.runtime_env)
            except RayConnectError as err:
                return _fail([str(err)], EXIT_FAILED)
        camp = Campaign.open(run, progress=not a.no_progress)
        print(f"resuming {camp.run_dir}")
        camp.run(stop_after=a.stop_after)
    except CampaignLocked as err:
        return _fail([str(err)], EXIT_FAILED)
    except (FileNotFoundError, ConfigError) as err:
        return _fail([str(err)])
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    return EXIT_OK


def cmd_status(a: argparse.Namespace) -> int:
    from xtalforge.config import ConfigError
    from xtalforge.loop.store import CampaignStore
    from xtalforge.types import Status

    run = _resolve_run(a.run)
    problem = _campaign_folder_problem(run)  # checked read-only: status never writes a schema
    if problem:
        return _fail([problem[0]], problem[1])
    try:
        cfg = _run_config(run)
    except ConfigError as err:
        return _fail(err.problems)
    st = CampaignStore(f"sqlite:///{(run / 'store.db').resolve()}")
    try:
        stages = st.stages()
        done = sum(1 for s in stages.values() if s == "done")
        ms = st.measurements()
        ok = [m for m in ms if m.status == Status.ok]
        print(f"campaign {cfg.name} ({cfg.chemsys}) in {run}")
        print(f"  rounds done: {done}/{cfg.rounds}" + (
            f"; round {max(stages) + 1} is at '{stages[max(stages)]}'" if stages and stages[max(stages)] != "done" else ""))
        print(f"  candidates: {len(st.candidate_ids())}; evaluations: {len(ms)} ({len(ok)} ok, {len(ms) - len(ok)} failed)")
        if ok:
            best = min(ok, key=lambda m: m.values.get("e_above_hull", 1e9))
            if "e_above_hull" in best.values:
                print(f"  best e_above_hull at evaluation time: {best.values['e_above_hull']:+.3f} eV/atom "
                      f"({best.candidate_id})")
        print(f"  MLflow run: {st.get('mlflow_run_id')} at {cfg.tracking.uri}")
    finally:
        st.close()
    return EXIT_OK


def cmd_ui(a: argparse.Namespace) -> int:
    """`mlflow ui` on a campaign's tracking store, artifacts served from where it wrote them;
    prints the address of the campaign's run in MLflow's model-training view (MLflow 3 opens
    experiments in its GenAI view otherwise)."""
    import subprocess

    from xtalforge.config import ConfigError
    from xtalforge.loop.tracking import ui_command, ui_page, ui_target

    run_dir = _resolve_run(a.run) if a.run else None
    try:
        uri, root = ui_target(run_dir, a.tracking_uri)
    except (FileNotFoundError, ConfigError) as err:
        return _fail([str(err)], EXIT_FAILED)
    if uri.startswith(("http://", "https://")):
        # a remote server already is the UI: starting a second one would show the same data
        print(f"this campaign logs to the MLflow server at {uri}; open {ui_page(uri, uri, run_dir)}")
        return 0
    cmd = ui_command(uri, a.host, a.port, root)
    print(" ".join(cmd))
    print(f"MLflow UI at {ui_page(f'http://{a.host}:{a.port}', uri, run_dir)} (Ctrl-C stops it)")
    return subprocess.call(cmd)


# -- lab (issue #8): requests out, measured results in ---------------------------------------
def _open_lab(run: str):
    """(lab config, store, run folder) of a campaign with a `lab:` section, or an error line."""
    from xtalforge.config import ConfigError, load_config
    from xtalforge.loop.store import CampaignStore

    from xtalforge.loop.store import store_problem

    p = _resolve_run(run)
    if not (p / "store.db").is_file() or not (p / "config.yaml").is_file():
        return None, f"{p} is not a campaign folder"
    if why := store_problem(p / "store.db"):
        return None, why
    try:
        cfg = load_config(p / "config.yaml")
    except ConfigError as err:
        return None, f"{p / 'config.yaml'}: {err}"
    if cfg.lab is None:
        return None, f"{p} has no lab: its config has no 'lab:' section"
    return (cfg.lab, CampaignStore(f"sqlite:///{(p / 'store.db').resolve()}"), p), ""


def cmd_lab_token(a: argparse.Namespace) -> int:
    from xtalforge.oracles.lab.intake import issue_token

    opened, why = _open_lab(a.run)
    if opened is None:
        return _fail([why], 1)
    _lab, st, _p = opened
    token = issue_token(st)
    st.close()
    print(token)
    print("shown once: only its SHA-256 is stored. Send it as 'Authorization: Bearer <token>'; "
          "a new token replaces this one.", file=sys.stderr)
    return 0


def cmd_lab_submit(a: argparse.Namespace) -> int:
    from xtalforge.oracles.lab.intake import submit_results
    from xtalforge.oracles.lab.validation import MAX_BYTES

    opened, why = _open_lab(a.run)
    if opened is None:
        return _fail([why], 1)
    lab, st, _p = opened
    f = Path(a.file)
    fmt = a.format or {".csv": "csv", ".json": "json"}.get(f.suffix.lower())
    try:
        if fmt is None:
            return _fail([f"{f}: say --format csv or json (from the name it is neither)"], 2)
        if not f.is_file():
            return _fail([f"{f}: no such file"], 2)
        if f.stat().st_size > MAX_BYTES:
            return _fail([f"{f}: over {MAX_BYTES} bytes; split it"], 1)
        out = submit_results(st, lab.name, f.read_bytes(), fmt, "cli", f.name)
    finally:
        st.close()
    if not out.accepted:
        return _fail([out.summary(), *(str(p) for p in out.problems)], 1)
    print(out.summary())
    return 0


def cmd_lab_requests(a: argparse.Namespace) -> int:
    from xtalforge.oracles.lab.oracle import LabOracle

    opened, why = _open_lab(a.run)
    if opened is None:
        return _fail([why], 1)
    lab, st, p = opened
    rows = st.lab_requests(lab.name, open_only=not a.all)
    if a.export:
        LabOracle(lab, st, p).export()
    st.close()
    print(f"{len(rows)} {'' if a.all else 'open '}request(s) to lab '{lab.name}'")
    for r in rows:
        state = "answered" if r["answered"] else "open"
        print(f"  {r['candidate_id']}  {r['formula']:<12} round {r['round']}  {state}  "
              f"{' '.join(q['name'] for q in r['quantities'])}")
    return 0


def cmd_lab_serve(a: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from xtalforge.oracles.lab.api import create_app, log_config
    from xtalforge.oracles.lab.intake import TOKEN_KEY

    opened, why = _open_lab(a.run)
    if opened is None:
        return _fail([why], EXIT_FAILED)
    lab, st, p = opened
    try:
        # bind first: a port in use or not ours to take is one line, before uvicorn logs anything
        family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((a.host, a.port))
    except OSError as err:
        st.close()
        return _fail([f"cannot listen on {a.host}:{a.port}: {err.strerror or err}"], EXIT_FAILED)
    if st.get(TOKEN_KEY) is None:
        print(f"warning: no token yet; every call but /health gets 401 until `xtalforge lab token {p}`",
              file=sys.stderr)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: plain HTTP beyond this machine sends the token in clear; put TLS in front",
              file=sys.stderr)
    print(f"lab '{lab.name}' of {p} at http://{a.host}:{a.port}  (spec: /openapi.json)")
    try:
        server = uvicorn.Server(uvicorn.Config(create_app(st, lab.name), log_level="info", log_config=log_config()))
        server.run(sockets=[sock])
    finally:
        sock.close()
        st.close()
    return EXIT_OK


def _add_lab_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="lab requests and results: token, submit, serve, requests")
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)
    t = lsub.add_parser("token", help="create the API's bearer token (printed once; only a hash is kept)")
    t.add_argument("run")
    t.set_defaults(fn=cmd_lab_token)
    s = lsub.add_parser("submit", help="submit a results file (.csv or .json); all or nothing")
    s.add_argument("run")
    s.add_argument("file")
    s.add_argument("--format", choices=["csv", "json"])
    s.set_defaults(fn=cmd_lab_submit)
    v = lsub.add_parser("serve", help="serve the lab HTTP API (GET /requests, POST /results)")
    v.add_argument("run")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=_port, default=8765)
    v.set_defaults(fn=cmd_lab_serve)
    r = lsub.add_parser("requests", help="list the lab's requests")
    r.add_argument("run")
    r.add_argument("--all", action="store_true", help="answered ones too")
    r.add_argument("--export", action="store_true", help="rewrite the request files")
    r.set_defaults(fn=cmd_lab_requests)


def _add_synth_parser(sub: argparse._SubParsersAction) -> None:
    from xtalforge.cli.synth import add_parser

    add_parser(sub)


def _add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    from xtalforge.cli.wyckoff import add_parser

    add_parser(sub)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (`error: ...`, exit 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xtalforge", description="Closed-loop discovery of inorganic crystals")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="start a campaign from a YAML config")
    r.add_argument("config")
    r.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default from the config)")
    r.add_argument("--output-dir", help="folder for run folders (default: runs)")
    r.add_argument("--stop-after", type=int, metavar="N", help="stop after N rounds (resume later)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("resume", help="continue a stopped campaign from its store")
    s.add_argument("run", help="run folder (e.g. runs/quickstart)")
    s.add_argument("--stop-after", type=int, metavar="N")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--allow-config-change", action="append", metavar="SETTING",
                   help="run the rest of the campaign with an edited setting that alters results "
                        "(e.g. mlip.fmax or acquisition); repeat for several; the change is recorded")
    s.set_defaults(fn=cmd_resume)

    st = sub.add_parser("status", help="where a campaign stands")
    st.add_argument("run")
    st.set_defaults(fn=cmd_status)

    u = sub.add_parser("ui", help="open the MLflow UI on a campaign's tracking store")
    u.add_argument("run", nargs="?")
    u.add_argument("--tracking-uri")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=_port, default=5000)
    u.set_defaults(fn=cmd_ui)
    _add_lab_parser(sub)
    _add_synth_parser(sub)
    _add_pretrain_parser(sub)
    from xtalforge.cli.hull import add_parser as add_hull_parser
    add_hull_parser(sub)
    __import__("xtalforge.cli.sample", fromlist=["add_parser"]).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet()
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        return _fail(["interrupted"], 130)
    except Exception as err:  # the last guard: one line, never a traceback (XTALFORGE_DEBUG=1 shows it)
        if os.environ.get("XTALFORGE_DEBUG"):
            raise
        logging.getLogger("xtalforge").debug("unexpected error", exc_info=True)
        text = " ".join(str(err).split())[:500]
        return _fail([f"{type(err).__name__}: {text} (run with XTALFORGE_DEBUG=1 for the traceback)"],
                     EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
