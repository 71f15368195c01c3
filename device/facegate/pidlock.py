"""An exclusive lock that a process holds while it runs, with its pid written in it: one
daemon per state dir (outbox.lock_state_dir), one backend worker per name on a machine
(backend serve). Stdlib only."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Busy(Exception):
    """Another process holds the lock; `holder` is the pid it wrote ('?' when unreadable)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by pid {holder}")
        self.path, self.holder = path, holder


def take(path: Path) -> int:
    """Take the flock on `path` (created 0644 if missing) and write this pid in it; the
    returned descriptor holds the lock until it is closed (the process's end at the latest).
    Raises Busy naming the holder's pid."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Busy(path, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
