"""kill -9 of a campaign's process leaves none of its local Ray's processes running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from xtalforge.loop.ray_reaper import _alive, descendants

CHILD = """
import os, time
import ray
from xtalforge.loop.executor import start_ray
from xtalforge.loop.ray_reaper import raylet_pid

start_ray(num_cpus=1)
ray.get(ray.remote(lambda: 1).options(num_cpus=0).remote())  # a worker, too
time.sleep(3)  # the raylet's agents are up
print("RAYLET", raylet_pid(os.getpid()), flush=True)
time.sleep(600)
"""


def test_kill_9_leaves_no_ray_agents_behind():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env)
    raylet, tree = None, {}
    try:
        for line in child.stdout:
            if line.startswith("RAYLET "):
                raylet = int(line.split()[1])
                break
        assert raylet, "the child did not start Ray"
        tree = descendants(raylet)  # the raylet's agents and workers, by pid and start time
        names = set()
        for pid in tree:
            try:
                names.add(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode().strip())
            except OSError:
                pass
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} & names, names
        child.send_signal(signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in tree.items()):
            time.sleep(0.5)
        left = [p for p, s in tree.items() if _alive(p, s)]
        assert left == [], f"still running 40 s after kill -9: {left}"
    finally:
        if child.poll() is None:
            child.kill()
        for pid, start in tree.items():  # only this Ray's processes, by pid and start time
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
