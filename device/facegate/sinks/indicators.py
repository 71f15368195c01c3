"""LEDs, relay and buzzer: busy while a session runs; the one place a decision reaches
the hardware (the relay pulses only on a match)."""
from __future__ import annotations

from ..events import Answered, Event, StateChanged
from ..ports import Indicators
from ..vocab import Indicator, State, Verdict


def react(indicators: Indicators, decision: str) -> None:
    if decision == Verdict.MATCH:
        indicators.pulse_relay()
        indicators.show(Indicator.PASS)
    else:
        indicators.show(Indicator.FAIL)
    indicators.beep()


class IndicatorSink:
    def __init__(self, indicators: Indicators):
        self.indicators = indicators

    def __call__(self, event: Event) -> None:
        if isinstance(event, StateChanged) and event.state == State.WAITING_FACE:
            self.indicators.show(Indicator.BUSY)
        elif isinstance(event, Answered) and event.session is not None:
            react(self.indicators, event.decision)
