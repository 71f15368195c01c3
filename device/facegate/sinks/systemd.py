"""systemctl status shows the state and the step asked (sd_notify STATUS=)."""
from __future__ import annotations

from ..events import Event, StateChanged


class SystemdSink:
    def __init__(self, notifier):
        self.notifier = notifier  # adapters.systemd.SystemdNotifier or anything with status(str)

    def __call__(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.notifier.status(f"{event.state}{' ' + event.step if event.step else ''}")
