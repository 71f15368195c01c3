"""The fleet at a glance: each enrolled terminal's state and problems, from the registry
(device_keys) and what the terminals told the broker (devices: R/status, R/health).

One classification serves both `facegate backend devices --stale / --problems` (per device)
and the worker's fleet gauges (counts only: no per-device label reaches the metrics).

  state     online   said online (R/status) and heard of within stale_after_s
            stale    said online but silent for longer (a cut link whose will the broker has
                     not yet sent, a hung daemon)
            offline  its will (R/status offline: the connection was lost)
            stopped  a clean stop (R/status stopped)
            unknown  enrolled, never heard of
  problems  what the newest R/health of a terminal that is online (or stale) says is
            wrong: clock_unsynchronized, camera_down, models_down, storage_down,
            outbox_unreadable (its outbox_depth is -1)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..contract import HealthReport, MalformedMessage
from .store import Store

STATES = ("online", "stale", "offline", "stopped", "unknown")
PROBLEMS = ("clock_unsynchronized", "camera_down", "models_down", "storage_down", "outbox_unreadable")
# health field -> the problem when it is False (clock_synchronized None = cannot tell: no problem)
_FLAGS = (("clock_synchronized", "clock_unsynchronized"), ("camera_ok", "camera_down"),
          ("models_ok", "models_down"), ("storage_ok", "storage_down"))


@dataclass(frozen=True)
class Terminal:
    dev: str
    state: str  # one of STATES
    problems: tuple[str, ...]  # of PROBLEMS
    last_seen: float | None
    outbox_depth: int | None


@dataclass(frozen=True)
class Fleet:
    terminals: tuple[Terminal, ...]  # enrolled (an active key) only
    keys: dict[str, int]  # key state -> how many keys (pending: waiting for an operator)

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.terminals)

    def with_problem(self, problem: str) -> int:
        return sum(problem in t.problems for t in self.terminals)

    def outbox(self) -> tuple[int, int]:
        """(sum, max) of the enrolled terminals' last reported outbox depths (-1 skipped)."""
        depths = [t.outbox_depth for t in self.terminals if t.outbox_depth is not None and t.outbox_depth >= 0]
        return sum(depths), max(depths, default=0)


def _problems(health: str | None, depth: int | None) -> tuple[str, ...]:
    try:
        text = health.encode() if health else b""  # what the worker stored: checked once, any length now
        flags = [HealthReport.parse(text, len(text)).flag(field) for field, _ in _FLAGS] if text else []
    except MalformedMessage:
        flags = []
    found = [problem for (_, problem), flag in zip(_FLAGS, flags) if flag is False]
    if depth is not None and depth < 0:
        found.append("outbox_unreadable")
    return tuple(found)


def classify(dev: str, row: dict | None, now: float, stale_after_s: float) -> Terminal:
    """One enrolled terminal from its `devices` row (None: never heard of)."""
    if row is None or row.get("status") is None:
        return Terminal(dev, "unknown", (), row.get("last_seen") if row else None,
                        row.get("outbox_depth") if row else None)
    status, seen = row["status"], row.get("last_seen")
    if status == "online" and (seen is None or now - seen > stale_after_s):
        status = "stale"
    if status not in STATES:
        status = "unknown"
    live = status in ("online", "stale")
    return Terminal(dev, status, _problems(row.get("health"), row.get("outbox_depth")) if live else (), seen,
                    row.get("outbox_depth"))


def snapshot(store: Store, now: float, stale_after_s: float) -> Fleet:
    keys = store.keys()
    by_state: dict[str, int] = {}
    for k in keys:
        by_state[k.state] = by_state.get(k.state, 0) + 1
    enrolled = sorted({k.dev for k in keys if k.state == "active"})
    rows = {d["dev"]: d for d in store.devices()}
    return Fleet(tuple(classify(dev, rows.get(dev), now, stale_after_s) for dev in enrolled), by_state)
