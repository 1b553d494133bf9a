"""One running process per campaign folder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class CampaignLocked(RuntimeError):
    pass


class RunLock:
    """An advisory flock on RUN/lock, released by the OS if the process dies (even kill -9)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"
        self.fh = None

    def acquire(self) -> None:
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            self.fh = None
            raise CampaignLocked(
                f"campaign {self.path.parent} is already running (pid {holder}); wait for it or stop it first"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(run_dir: Path) -> str | None:
    """The pid holding `run_dir`'s lock, or None when no process holds it (a look only: the
    lock is not kept). A folder without a lock file has no holder, and none is created."""
    path = Path(run_dir) / "lock"
    if not path.is_file():
        return None
    with open(path, "r+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            return fh.read().strip() or "another process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None
