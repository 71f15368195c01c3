"""The terminal's status document: what the daemon writes to <state_dir>/status.json (and,
its `health` part, to R/health), typed once for the writer and its readers (`facegate
status`, `facegate keys rotate`, scripts/soak*). The health counters are kept here too.

Readers must expect an older or newer daemon's file: `read()` gives the parsed document
or None, and a reader takes absent keys with `.get`.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, cast

log = logging.getLogger("facegate.status")

STATUS_FILE = "status.json"


class HealthDoc(TypedDict, total=False):
    """R/health and status.json `health`: counters since the daemon started."""

    uptime_s: float
    fps: float  # camera frames per second (idle rate between sessions)
    latency_ms: dict[str, float]  # median per pipeline stage over the last 100 sessions
    outbox_depth: int  # results not yet acknowledged by the broker (-1: outbox unreadable)
    outbox_expired: int
    camera_ok: bool
    models_ok: bool
    storage_ok: bool
    clock_synchronized: bool | None  # None: cannot tell
    sessions: int
    rejected: int  # commands answered `rejected`
    ignored: dict[str, int]  # reason -> inputs counted and never answered
    unstored: int  # results held in memory while the disk is full
    undeliverable: int
    dropped_commands: int  # the replay record could not be written
    publish_refused: int


class StateDoc(TypedDict):
    state: str
    step: str | None
    session: str | None


class LastDecision(TypedDict):
    decision: str
    reason: str | None
    session: str
    ts: float  # wall clock, seconds
    ms: float  # the session's length


class BrokerDoc(TypedDict, total=False):
    enabled: bool
    connected: bool
    error: str


class KeyDoc(TypedDict):
    path: str
    source: str  # config | credential | state_dir


class StatusDoc(TypedDict, total=False):
    """status.json."""

    pid: int
    device_id: str
    version: str
    boot: str
    ts: float  # when written, wall clock seconds
    state: StateDoc
    health: HealthDoc
    last_decision: LastDecision | None
    broker: BrokerDoc
    camera: dict  # adapters.cameras.CameraHealth as a dict, plus fps; {"ok": False} before the camera starts
    models: dict[str, str]  # task -> sha256 of the file loaded
    model_selftest: dict[str, dict]  # task -> modelstore.Choice.as_dict()
    match_policy: dict  # policy.MatchPolicy.as_dict(): the threshold in force and why
    kid: str
    last_seq: int
    key: KeyDoc
    running: bool  # added by `facegate status --json`: the pid is alive


@dataclass
class Health:
    """The daemon's counters behind `HealthDoc`."""

    started_mono: float = field(default_factory=time.monotonic)
    sessions: int = 0
    rejected: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    dropped_commands: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, deque] = field(default_factory=dict)  # stage -> deque of ms
    last_decision: LastDecision | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ignore(self, reason: str) -> None:
        with self._lock:  # paho's thread and the command thread both count
            self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def ignored_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.ignored.items()))

    def decided(self, decision: str) -> None:
        self.decisions[decision] = self.decisions.get(decision, 0) + 1

    def record(self, timings: dict[str, float]) -> None:
        for k, v in timings.items():
            self.latencies.setdefault(k, deque(maxlen=100)).append(v)

    def medians(self) -> dict[str, float]:
        return {k: round(statistics.median(v), 1) for k, v in self.latencies.items() if v}

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started_mono, 1)


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _write_fd(fd: int, data: bytes) -> None:
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write(state_dir: Path, doc: StatusDoc) -> None:
    """Replace status.json atomically, mode 0600, as the signing key is written: a new,
    randomly named temp file (O_EXCL, O_NOFOLLOW: nothing left under any name is written
    through) renamed over it. On a full disk overwrite it in place (reusing the old file's
    blocks, never through a symlink); failing that, log and go on."""
    data = json.dumps(doc, indent=1).encode()
    path = Path(state_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{secrets.token_hex(6)}.tmp")
    try:
        _write_fd(os.open(tmp, _NEW, 0o600), data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
            os.ftruncate(fd, 0)
            _write_fd(fd, data)
        except OSError:
            log.warning("cannot write the status file: %s", exc)


def read(state_dir: Path | str) -> StatusDoc | None:
    """The status document in state_dir, or None (no file, unreadable, not a JSON object)."""
    try:
        doc = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return cast(StatusDoc, doc) if isinstance(doc, dict) else None
