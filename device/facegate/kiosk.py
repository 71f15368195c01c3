"""What one terminal does with an accepted request: runs its session (session.Session) on
the terminal's frames, answers with a signed result (results.Results), reacts to the
decision in one place (LEDs, relay, beep) and reports its state (R/state, systemd's
STATUS=, the status file, an observer such as the demo's narrator). Also where the
terminal's other answers are signed: refusals and failures."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Generator
from contextlib import closing

from .admission import Refused, Request
from .announce import Announcer
from .config import Config
from .liveness.check import LivenessPlan
from .pipeline import Verifier
from .ports import Camera, Clock, Indicators
from .results import Results
from .session import LatestFrame, Session, live, replay
from .status import Health, LastDecision
from .types import Decision, Frame
from .vocab import Failure, State, Verdict

StateObserver = Callable[[State, "str | None", "str | None"], None]  # (state, step, session)


def react(indicators: Indicators, decision: str) -> None:
    """The one place a decision reaches the hardware: the relay pulses only on a match."""
    if decision == Verdict.MATCH:
        indicators.pulse_relay()
        indicators.show("pass")
    else:
        indicators.show("fail")
    indicators.beep()


class Kiosk:
    """feed: the live camera's newest frame; open_camera: a fresh camera for a per-session
    replay of a file; notifier: systemd (keepalive while frames flow, STATUS=); on_change:
    called after each state change (the daemon rewrites its status file)."""

    def __init__(self, cfg: Config, verifier: Verifier, liveness: LivenessPlan | None, feed: LatestFrame,
                 open_camera: Callable[[], Camera], indicators: Indicators, notifier, results: Results,
                 announce: Announcer, health: Health, clock: Clock, stop: threading.Event,
                 on_state: StateObserver | None = None, on_change: Callable[[], None] = lambda: None):
        self.cfg, self.verifier, self.liveness, self.feed, self.open_camera = cfg, verifier, liveness, feed, open_camera
        self.indicators, self.notifier, self.results, self.announce = indicators, notifier, results, announce
        self.health, self.clock, self.stop = health, clock, stop
        self.on_state = on_state or (lambda state, step, session: None)
        self.on_change = on_change
        self.state: tuple[str, str | None, str | None] = (State.IDLE, None, None)
        self.cancel = threading.Event()  # the button was pressed during the running session
        indicators.on_button(self._button_pressed)

    def emit(self, decision: str, reason: str | None, **kw) -> int | None:
        """Sign and store one result (Results.emit); count it and publish its event."""
        seq = self.results.emit(decision, reason, **kw)
        self.health.decided(decision)
        self.announce.event(kw.get("session"), kw.get("request_id"), decision)
        return seq

    def refuse(self, r: Refused) -> None:
        self.emit(Verdict.REJECTED, r.reason, request_id=r.request_id, nonce=r.nonce,
                  response_topic=r.response_topic, correlation=r.correlation)

    def fail(self, req: Request, reason: Failure) -> None:
        self.emit(Verdict.ERROR, reason, request_id=req.command.request_id, nonce=req.command.nonce,
                  response_topic=req.response_topic, correlation=req.correlation)

    def _button_pressed(self) -> None:
        """gpiozero's thread: a press ends the running session (cancelled); idle, it does
        nothing: a session needs a command, which brings the reference."""
        if self.state[0] != State.IDLE:
            self.cancel.set()

    def _frames(self) -> Generator[Frame, None, None]:
        """A session's frames: a replay of the file from its start, else the live feed;
        each one feeds the watchdog."""
        cam = self.cfg.camera
        restart = cam.source == "file" and cam.restart_each_session
        with closing(replay(self.open_camera) if restart else live(self.feed, cam.frame_timeout_s)) as source:
            for frame in source:
                self.notifier.keepalive(True)
                yield frame

    def run_session(self, req: Request) -> Decision:
        cmd, session = req.command, uuid.uuid4().hex[:16]
        self.health.sessions += 1
        self.indicators.show("busy")
        self.cancel.clear()  # a press before this session does not end it
        run = Session.planned(self.verifier, self.liveness, cmd.challenge, timeout_s=self.cfg.daemon.session_timeout_s,
                              on_progress=lambda state, step: self.set_state(state, step, session),
                              cancelled=self.cancel.is_set, stopped=self.stop.is_set,
                              # the fused embeddings after the last frame are progress too: on
                              # a slow CPU they took longer than WatchdogSec (vm-check, TCG)
                              on_work=lambda: self.notifier.keepalive(True))
        out = run.run_contained(cmd.reference, self._frames(), session)
        if out.timings_ms:
            self.health.record(out.timings_ms)
        d = out.decision
        self.emit(d.decision, d.reason, session=session, request_id=cmd.request_id, nonce=cmd.nonce,
                  liveness=d.liveness, quality=d.quality, response_topic=req.response_topic,
                  correlation=req.correlation)
        self.health.last_decision = LastDecision(decision=d.decision, reason=d.reason, session=session,
                                                 ts=round(self.clock.time(), 3), ms=out.ms)
        react(self.indicators, d.decision)
        self.set_state(State.IDLE)
        return d  # the caller drops it; the reference and frames die with the session

    def set_state(self, state: str, step: str | None = None, session: str | None = None) -> None:
        if (state, step, session) == self.state:
            return
        self.state = (state, step, session)
        self.announce.state(state, step, session)
        self.notifier.status(f"{state}{' ' + step if step else ''}")
        self.on_state(State(state), step, session)
        self.on_change()
