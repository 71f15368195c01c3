"""What one terminal does with an accepted request: runs its session (session.Session) on
the terminal's frames, answers with a signed result (results.Results), reacts to the
decision, state and guidance as typed events to its sinks (events.py: MQTT, systemd's
STATUS=, the status file, the indicators, the screen, the demo's narrator). Also where the
terminal's other answers are signed: refusals and failures."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Generator, Sequence
from contextlib import closing

from .admission import Refused, Request
from .config import Config
from .events import Answered, Event, Sink, StateChanged, tell
from .guidance import Guide
from .liveness.check import LivenessPlan
from .pipeline import Verifier
from .ports import Camera, Clock, Indicators
from .results import Results
from .session import LatestFrame, Session, live, replay
from .status import Health, LastDecision
from .types import Decision, Frame
from .vocab import Failure, State, Verdict


class Kiosk:
    """feed: the live camera's newest frame; open_camera: a fresh camera for a per-session
    replay of a file; indicators: its button cancels a session; notifier: systemd's
    watchdog, kept alive while frames flow; sinks: told every event, in order."""

    def __init__(self, cfg: Config, verifier: Verifier, liveness: LivenessPlan | None, feed: LatestFrame,
                 open_camera: Callable[[], Camera], indicators: Indicators, notifier, results: Results,
                 health: Health, clock: Clock, stop: threading.Event, sinks: Sequence[Sink] = ()):
        self.cfg, self.verifier, self.liveness, self.feed, self.open_camera = cfg, verifier, liveness, feed, open_camera
        self.notifier, self.results, self.health, self.clock, self.stop = notifier, results, health, clock, stop
        self.sinks = list(sinks)
        self.preview: Callable[[Frame], None] = lambda frame: None  # the kiosk screen's live preview
        self.state: tuple[str, str | None, str | None] = (State.IDLE, None, None)
        self.cancel = threading.Event()  # the button was pressed during the running session
        indicators.on_button(self._button_pressed)

    def tell(self, event: Event) -> None:
        tell(self.sinks, event)

    def emit(self, decision: str, reason: str | None, **kw) -> int | None:
        """Sign and store one result (Results.emit); count it and tell the sinks."""
        seq = self.results.emit(decision, reason, **kw)
        self.health.decided(decision)
        self.tell(Answered(kw.get("session"), kw.get("request_id"), decision, reason))
        return seq

    def refuse(self, r: Refused) -> None:
        self.emit(Verdict.REJECTED, r.reason, request_id=r.request_id, nonce=r.nonce,
                  response_topic=r.response_topic, correlation=r.correlation, detail=r.detail)

    def fail(self, req: Request, reason: Failure) -> None:
        self.emit(Verdict.ERROR, reason, request_id=req.command.request_id, nonce=req.command.nonce,
                  response_topic=req.response_topic, correlation=req.correlation)

    def _button_pressed(self) -> None:
        """gpiozero's thread: a press ends the running session (cancelled); idle, it does
        nothing: a session needs a command, which brings the reference."""
        if self.state[0] != State.IDLE:
            self.cancel.set()

    @property
    def replays(self) -> bool:
        """A session replays the file from its start on a camera of its own (camera.source
        "file", restart_each_session), not the live feed."""
        cam = self.cfg.camera
        return cam.source == "file" and cam.restart_each_session

    def _frames(self) -> Generator[Frame, None, None]:
        """A session's frames: a replay of the file from its start, else the live feed;
        each one feeds the watchdog."""
        cam = self.cfg.camera
        with closing(replay(self.open_camera) if self.replays else live(self.feed, cam.frame_timeout_s)) as source:
            for frame in source:
                self.notifier.keepalive(True)
                self.preview(frame)
                yield frame

    def run_session(self, req: Request) -> Decision:
        cmd, session = req.command, uuid.uuid4().hex[:16]
        self.health.sessions += 1
        self.cancel.clear()  # a press before this session does not end it
        timeout_s = self.cfg.daemon.session_timeout_s
        guide = Guide(session, timeout_s=timeout_s, step_timeout_s=self.cfg.liveness.step_timeout_s,
                      needed_frames=self.cfg.verify.fusion_frames)
        run = Session.planned(self.verifier, self.liveness, cmd.challenge, timeout_s=timeout_s,
                              on_progress=lambda state, step: self.set_state(state, step, session),
                              cancelled=self.cancel.is_set, stopped=self.stop.is_set, guide=guide,
                              on_guide=self.tell,
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
        self.set_state(State.IDLE)
        return d  # the caller drops it; the reference and frames die with the session

    def set_state(self, state: str, step: str | None = None, session: str | None = None) -> None:
        if (state, step, session) == self.state:
            return
        self.state = (state, step, session)
        self.tell(StateChanged(State(state), step, session))
