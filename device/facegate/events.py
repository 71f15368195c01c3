"""What the terminal tells its audiences, typed once: the kiosk (kiosk.Kiosk) emits these
events to a list of sinks (the MQTT announcer, the status file, systemd's STATUS=, the
indicators, the kiosk screen, the demo's narrator: facegate.sinks, screen/, demo). A new
audience is one new sink, a callable taking an `Event`; a sink ignores what it does not
need. A sink that raises is logged and skipped: it never stops a session."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .guidance import Guidance
from .vocab import State

log = logging.getLogger("facegate.events")


@dataclass(frozen=True)
class Ready:
    """The camera delivers: the terminal is ready (told once, before anything else)."""


@dataclass(frozen=True)
class StateChanged:
    """The terminal's state (R/state): the challenge step asked and the session, or None."""

    state: State
    step: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Answered:
    """A signed answer went to the outbox: a session's decision (session set) or a refusal
    / failure of a command that started no session (session None). reason: a short safe
    word (vocab), never a score."""

    session: str | None
    request_id: str | None
    decision: str
    reason: str | None


Event = Ready | StateChanged | Guidance | Answered
Sink = Callable[[Event], None]


def tell(sinks: Iterable[Sink], event: Event) -> None:
    """Give `event` to every sink in order; one that raises is logged, the rest still hear it."""
    for sink in sinks:
        try:
            sink(event)
        except Exception:
            log.exception("sink %r failed on %s", sink, type(event).__name__)
