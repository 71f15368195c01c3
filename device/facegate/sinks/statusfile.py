"""The status file (<state_dir>/status.json) is rewritten on every state change."""
from __future__ import annotations

from collections.abc import Callable

from ..events import Event, StateChanged


class StatusFileSink:
    def __init__(self, write: Callable[[], None]):
        self.write = write  # the daemon's writer: it reads the state and counters itself

    def __call__(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.write()
