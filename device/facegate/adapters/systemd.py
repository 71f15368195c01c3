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
from collections.abc import Callable, Mapping

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


# -- signalling the running daemon (`facegate keys rotate`) --------------------------------
def service_main_pid(unit: str = "facegate", timeout_s: float = 5.0) -> int | None:
    """The unit's MainPID as systemd knows it (`systemctl show -p MainPID`), or None when
    systemd does not run it (not booted with systemd, no such unit, stopped)."""
    import subprocess

    try:
        p = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", unit],
                           capture_output=True, text=True, timeout=timeout_s)
        pid = int(p.stdout.strip()) if p.returncode == 0 else 0
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return pid if pid > 0 else None


def is_daemon_cmdline(argv: list[str]) -> bool:
    """True for `…/facegate run …` and `python -m facegate[.cli] run …`."""
    for i, arg in enumerate(argv):
        entry = os.path.basename(arg) == "facegate" or (i > 0 and argv[i - 1] == "-m"
                                                          and arg in ("facegate", "facegate.cli"))
        if entry:
            return "run" in argv[i + 1:]
    return False


def _proc_argv_uid(pid: int) -> tuple[list[str], int] | None:
    try:
        raw = open(f"/proc/{pid}/cmdline", "rb").read()
        status = open(f"/proc/{pid}/status", encoding="utf-8", errors="replace").read()
    except OSError:
        return None
    uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), None)
    if uid is None:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a], uid


def signal_daemon(pid: int, service_uid: int, sig: int, unit: str = "facegate") -> str | None:
    """Send `sig` to `pid` only if it is the facegate daemon: systemd's MainPID of `unit`,
    or a live process whose command line is `facegate run` and whose real uid is
    `service_uid` (the owner of the state directory). A pid from a file the service user
    can write is never signalled blindly. The check and the signal go through one pidfd,
    so a pid reused in between is not hit. None when sent, else why not (one line)."""
    import signal as signal_mod

    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError) as exc:
        return f"pid {pid}: {getattr(exc, 'strerror', None) or exc}"
    try:
        if pid != service_main_pid(unit):
            seen = _proc_argv_uid(pid)
            if seen is None:
                return f"pid {pid} is gone"
            argv, uid = seen
            if not is_daemon_cmdline(argv):
                return f"pid {pid} is not a facegate daemon ({' '.join(argv)[:80]!r})"
            if uid != service_uid:
                return f"pid {pid} runs as uid {uid}, not the service user (uid {service_uid})"
        signal_mod.pidfd_send_signal(fd, sig)  # ESRCH if the checked process exited meanwhile
        return None
    except OSError as exc:
        return f"pid {pid}: {exc.strerror}"
    finally:
        os.close(fd)
