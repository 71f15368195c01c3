"""What the kiosk page shows, kept up to date from the terminal's events (a sink): one
small dict, versioned, that the page fetches whole (so a reload or a restarted daemon
catches up at once) and follows over server-sent events."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..events import Answered, Event, Ready, StateChanged
from ..guidance import Guidance
from ..vocab import State
from .strings import hint_key, result_keys


class ScreenView:
    """screen: starting | idle | session | deciding | result. The result screen stays
    result_show_s (then idle) unless a new session starts. clock: monotonic seconds."""

    def __init__(self, language: str, result_show_s: float, boot: str,
                 clock: Callable[[], float] = time.monotonic):
        self.result_show_s, self.clock = result_show_s, clock
        self._cond = threading.Condition()
        self._version = 0
        self._result_t: float | None = None
        self._doc: dict = {"boot": boot, "language": language, "screen": "starting", "state": State.IDLE,
                           "step": None, "hint": None, "hint_key": None, "step_progress": 0.0, "progress": 0.0,
                           "seconds_left": None, "step_seconds_left": None, "result": None}

    def _update(self, **kw) -> None:
        with self._cond:
            self._doc.update(kw)
            self._version += 1
            self._cond.notify_all()

    def __call__(self, event: Event) -> None:  # the sink
        if isinstance(event, Ready):
            self._update(screen="idle")
        elif isinstance(event, StateChanged):
            if event.state == State.WAITING_FACE:
                self._result_t = None
                self._update(screen="session", state=event.state, step=None, hint=None, hint_key=None,
                             step_progress=0.0, progress=0.0, seconds_left=None, step_seconds_left=None,
                             result=None)
            elif event.state == State.CHALLENGE:
                self._update(screen="session", state=event.state, step=event.step)
            elif event.state == State.DECIDING:
                self._update(screen="deciding", state=event.state, step=None, hint=None, hint_key=None)
            elif self._result_t is None:
                self._update(screen="idle", state=event.state, step=None)
            else:
                self._update(state=event.state, step=None)
        elif isinstance(event, Guidance):
            self._update(state=event.state, step=event.step, hint=event.hint, hint_key=hint_key(event.hint),
                         step_progress=event.step_progress, progress=event.progress,
                         seconds_left=event.seconds_left, step_seconds_left=event.step_seconds_left)
        elif isinstance(event, Answered) and event.session is not None:
            passed, headline, reason = result_keys(event.decision, event.reason)
            self._result_t = self.clock()
            self._update(screen="result", result={"passed": passed, "headline": headline, "reason": reason})

    def _expire(self) -> None:
        if (self._result_t is not None and self._doc["screen"] == "result"
                and self.clock() - self._result_t >= self.result_show_s):
            self._result_t = None
            self._doc.update(screen="idle", result=None)
            self._version += 1

    def snapshot(self) -> tuple[int, dict]:
        with self._cond:
            self._expire()
            return self._version, dict(self._doc)

    def wait(self, after: int, timeout_s: float) -> tuple[int, dict]:
        """The view once its version passes `after`, or as it is after timeout_s."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > after, timeout_s)
            self._expire()
            return self._version, dict(self._doc)
