"""Stop what a campaign's own Ray leaves running when the campaign's process dies, even by kill -9.

Ray's raylet starts per-node agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`, about
210 MB together) that outlive a driver killed with SIGKILL. When `start_ray` starts a local
Ray, it starts this watcher beside it (`start_reaper`): a small process of its own session
that remembers the raylet's descendants while the campaign lives and, once the campaign's
process is gone, stops those that are still running. A process is identified by its pid and
its start time, so a pid reused by something else is never touched; nothing outside that Ray
instance's process tree is. Linux (/proc) only; elsewhere it does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of `pid`, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every process below `root` (not `root` itself)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for d in PROC.iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st:
                children.setdefault(st[0], []).append(int(d.name))
                starts[int(d.name)] = st[1]
    out: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in out:
            out[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return out


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start


def watch(driver: int, root: int, poll_s: float = 2.0, grace_s: float = 5.0) -> list[int]:
    """Remember `root` (the raylet) and its descendants while `driver` lives; once it is gone,
    wait `grace_s` for Ray to stop them itself, then stop those still there. Returns their pids."""
    d0, r0 = _stat(driver), _stat(root)
    if d0 is None or r0 is None:
        return []
    known = {root: r0[1]}
    while _alive(driver, d0[1]):
        if _alive(root, r0[1]):
            known.update(descendants(root))
        time.sleep(poll_s)
    time.sleep(grace_s)
    left = [pid for pid, start in known.items() if _alive(pid, start)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            if _alive(pid, known[pid]):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p, known[p]) for p in left):
            time.sleep(0.1)
    return left


def raylet_pid(driver: int) -> int | None:
    """The raylet that a local `ray.init` in process `driver` started."""
    for pid in descendants(driver):
        try:
            cmd = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith(b"/raylet"):
            return pid
    return None


def start_reaper(driver: int | None = None) -> subprocess.Popen | None:
    """Start the watcher for this process's local Ray (None where there is no /proc or raylet)."""
    driver = os.getpid() if driver is None else driver
    if not PROC.is_dir():
        return None
    root = raylet_pid(driver)
    if root is None:
        return None
    return subprocess.Popen([sys.executable, "-m", "xtalforge.loop.ray_reaper", str(driver), str(root)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the campaign is not for us
    watch(int(sys.argv[1]), int(sys.argv[2]))
