"""Joining a real Ray cluster (`ray start --head` on 127.0.0.1), and starting locally beside one.

The head gets its own --temp-dir, so its address file is not the machine's default one and no
other Ray user on this machine attaches to it; it is stopped by its own process group and the
processes naming that temp dir, never by `ray stop` (which stops every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from ..servers import free_port

RAY = str(Path(sys.executable).with_name("ray"))
DRIVER = """
import os, sys
import ray
from xtalforge.loop.executor import start_ray
from xtalforge.oracles.mlip.oracle import resolve_workers
address = sys.argv[1] or None
owns = start_ray(address, num_cpus=1, runtime_env={"env_vars": {"XF_MARK": "from-runtime-env"}})

@ray.remote(num_cpus=0)
def where():
    return os.environ.get("XF_MARK"), ray.get_runtime_context().get_node_id()

mark, node = ray.get(where.remote())
print("RESULT", mark, resolve_workers("auto"), owns, node, flush=True)
ray.shutdown()
"""


def _session_pids(marker: str) -> list[int]:
    """Processes whose command line names `marker` (the head's own temp dir)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                continue
    return [p for p in out if p != os.getpid()]


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on 127.0.0.1 with token authentication: (GCS address, client address,
    env with the token, node id)."""
    temp = tempfile.mkdtemp(prefix="xf-ray-", dir="/tmp")  # short: Ray's socket paths must fit
    port, client_port = free_port(), free_port()
    token = uuid.uuid4().hex
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
         "--ray-client-server-port", str(client_port), "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", temp],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not Path(temp, "ray_current_cluster").is_file():
            assert head.poll() is None, head.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "client": f"ray://127.0.0.1:{client_port}",
               "token": token, "temp": temp}
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        for pid in _session_pids(temp):  # anything of this head's that outlived its group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
        left = _session_pids(temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert left == [], f"Ray head processes left behind: {left}"


def _driver(address: str, env_over: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(env_over)
    return subprocess.run([sys.executable, "-c", DRIVER, address], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[2])


def _result(proc: subprocess.CompletedProcess, head: dict | None = None) -> list[str]:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        logs = ""
        if head:  # the head's own account of what went wrong
            for f in sorted(Path(head["temp"]).glob("session_latest/logs/ray_client_server*.err")):
                logs += f"\n--- {f.name}\n" + f.read_text(errors="replace")[-2000:]
        pytest.fail(f"driver failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}{logs}")
    return lines[0].split()[1:]


def test_joining_a_cluster_with_token_auth_and_a_runtime_env(ray_head, tmp_path):
    home = tmp_path / "home"  # no ~/.ray/auth_token: the token comes from the environment only
    home.mkdir()
    mark, workers, owns, _node = _result(_driver(ray_head["address"],
                                                 {"RAY_AUTH_TOKEN": ray_head["token"], "HOME": str(home)}))
    assert mark == "from-runtime-env"  # the runtime_env reached the cluster's worker
    assert workers == "2"  # workers: auto follows the cluster: the head offers 2 CPUs
    assert owns == "True"  # this process connected, so it disconnects (the cluster stays up)


def test_joining_through_the_ray_client(ray_head, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"RAY_AUTH_TOKEN": ray_head["token"], "HOME": str(home)}
    proc = _driver(ray_head["client"], env)
    if proc.returncode != 0 and "RESULT " not in proc.stdout:
        # Ray Client's per-connection server (fixed ports from 23000) and its gRPC channel fail
        # now and then on a loaded machine; a second connection is what a user would try
        proc = _driver(ray_head["client"], env)
    mark, workers, owns, _node = _result(proc, ray_head)
    assert (mark, workers) == ("from-runtime-env", "2")


def test_without_an_address_a_running_head_is_not_attached(ray_head, tmp_path):
    # RAY_ADDRESS is how a running head is found without an address; start locally all the same
    home = tmp_path / "home"
    home.mkdir()
    mark, workers, owns, _node = _result(_driver("", {"RAY_ADDRESS": ray_head["address"], "HOME": str(home)}))
    assert owns == "True" and workers == "1"  # its own instance, with the 1 CPU it asked for
    assert mark == "from-runtime-env"


def _cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run([sys.executable, "-m", "xtalforge.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_cluster_that_cannot_be_joined_fails_in_one_line_and_writes_nothing(tmp_path):
    cfg = {"name": "nojoin", "chemical_system": ["Li", "O"], "rounds": 1, "output_dir": str(tmp_path / "runs"),
           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    proc = _cli(["run", "c.yaml", "--ray-address", f"127.0.0.1:{free_port()}", "--no-progress"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot join the Ray cluster"), proc.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
