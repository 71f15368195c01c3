"""The system clock (ports.Clock) and a fake one for tests.

`SystemClock.synchronized()` asks the kernel first (adjtimex with modes = 0, a read: the
clock state is TIME_ERROR while the kernel's STA_UNSYNC flag is set, i.e. no NTP daemon has
disciplined the clock). Under the systemd unit `ProtectClock=yes` filters adjtimex out
(EPERM); then systemd-timesyncd's flag file /run/systemd/timesync/synchronized (made on its
first synchronisation after boot) says yes, and `timedatectl show -p NTPSynchronized`
(systemd-timedated reads the kernel for us, whichever NTP daemon runs) answers otherwise.
None when none of them can tell. Answers are cached for `cache_s`.
"""
from __future__ import annotations

import ctypes
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
TIME_ERROR = 5  # adjtimex(2) clock state while STA_UNSYNC (or STA_CLOCKERR) is set


def kernel_clock_synchronized() -> bool:
    """adjtimex(2) read-only; raises OSError (e.g. EPERM under a seccomp filter)."""
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc is loaded
    buf = ctypes.create_string_buffer(1024)  # struct timex, zeroed: modes = 0 (read only)
    state = libc.adjtimex(buf)
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, "adjtimex failed")
    return state != TIME_ERROR


def timedatectl_synchronized(timeout_s: float = 2.0) -> bool | None:
    try:
        p = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                           capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None
    answer = p.stdout.strip()
    return {"yes": True, "no": False}.get(answer) if p.returncode == 0 else None


class SystemClock:
    """time.time / time.monotonic, and the synchronisation state as described above."""

    def __init__(self, cache_s: float = 30.0, kernel: Callable[[], bool] = kernel_clock_synchronized,
                 flag: Path = TIMESYNC_FLAG, timedatectl: Callable[[], bool | None] = timedatectl_synchronized):
        self.cache_s = cache_s
        self._kernel, self._flag, self._timedatectl = kernel, flag, timedatectl
        self._cached: tuple[float, bool | None] | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def synchronized(self) -> bool | None:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= self.cache_s:
            self._cached = (now, self._ask())
        return self._cached[1]

    def _ask(self) -> bool | None:
        try:
            return self._kernel()
        except (OSError, AttributeError):
            pass
        if self._flag.exists():
            return True
        return self._timedatectl()


class FakeClock:
    """The real clocks plus a wall-clock offset that tests step (like an NTP step or a
    wrong date set by hand); monotonic time is never stepped. `synced` is what
    synchronized() answers."""

    def __init__(self, offset_s: float = 0.0, synced: bool | None = True):
        self.offset_s, self.synced = offset_s, synced

    def step(self, seconds: float) -> None:
        """Step the wall clock by `seconds` (negative: back)."""
        self.offset_s += seconds

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time() + self.offset_s

    def synchronized(self) -> bool | None:
        return self.synced
