"""sd_notify without python-systemd: READY / STATUS / WATCHDOG / STOPPING datagrams to
the socket systemd names in $NOTIFY_SOCKET (a path, or an abstract name starting '@').

With NOTIFY_SOCKET unset (not started by systemd, or Type= is not notify) every call is a
no-op that returns False, so the daemon can call it unconditionally. Send errors are
logged and swallowed: losing systemd must never stop a verification.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Speaks the sd_notify datagram protocol.

    environ: where NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID are read (default os.environ);
    clock: monotonic seconds, for `keepalive`.
    watchdog_interval_s: half of WATCHDOG_USEC in seconds (how often to ping), or None when
    systemd runs no watchdog for this process (unset, 0, or WATCHDOG_PID names another pid).
    """

    def __init__(self, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        env = os.environ if environ is None else environ
        self._clock = clock
        self._last_ping: float | None = None
        self._sock: socket.socket | None = None
        self.address = self._address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = self._watchdog_interval(env)

    @staticmethod
    def _address(raw: str) -> str | bytes | None:
        if not raw:
            return None
        if raw.startswith("@"):
            return b"\0" + raw[1:].encode()  # Linux abstract namespace
        if raw.startswith("/"):
            return raw
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket; not notifying", raw)
        return None

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> float | None:
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = env.get("WATCHDOG_PID", "")
        if pid and pid != str(os.getpid()):
            return None  # the watchdog belongs to another process (e.g. our parent)
        return usec / 1e6 / 2

    @property
    def enabled(self) -> bool:
        """True when started by systemd with a notify socket."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of KEY=VALUE lines; True when it was sent."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", fields[0].split("=")[0] if fields else "", exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (optionally with a STATUS line): models loaded and frames flowing."""
        return self.notify("READY=1", *([_status(status)] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=text, shown by `systemctl status` (one line)."""
        return self.notify(_status(text))

    def watchdog(self) -> bool:
        """WATCHDOG=1 now. Prefer `keepalive`, which rate-limits and respects progress."""
        sent = self.notify("WATCHDOG=1")
        if sent:
            self._last_ping = self._clock()
        return sent

    def keepalive(self, progress: bool) -> bool:
        """Ping the watchdog if the pipeline made progress (e.g. camera health ok) and
        watchdog_interval_s has passed since the last ping; call it often. True if sent."""
        if not progress or self.watchdog_interval_s is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_interval_s:
            return False
        return self.watchdog()

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (on SIGHUP); send ready() when done."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for more start-up (or stop) time, e.g. slow model loads."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown began."""
        return self.notify("STOPPING=1", *([_status(status)] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(str(text).split())
