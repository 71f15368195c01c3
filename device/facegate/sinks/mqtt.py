"""The broker hears the state (R/state, retained), the guidance (R/guide, QoS 0, not
retained) and one event per signed answer (R/event)."""
from __future__ import annotations

from ..announce import Announcer
from ..events import Answered, Event, StateChanged
from ..guidance import Guidance


class MqttSink:
    def __init__(self, announce: Announcer):
        self.announce = announce

    def __call__(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.announce.state(event.state, event.step, event.session)
        elif isinstance(event, Guidance):
            self.announce.guide(event)
        elif isinstance(event, Answered):
            self.announce.event(event.session, event.request_id, event.decision)
