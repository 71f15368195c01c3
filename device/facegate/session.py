"""One verification, from an accepted request to its outcome.

A `Session` reads frames from its source (the live feed or a replay of a file), runs the
verifier on them with the session's liveness check, ends them by its timeout policy (the
session timeout in frame time, a cancel, a stop), reports its progress through one typed
callback (state, step) and returns a typed `Outcome`. The daemon, `facegate verify` and
(through the daemon) the demo run their verifications through it; the verifier and the
liveness check only meet here.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from contextlib import closing
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from .errors import CameraError, FacegateError
from .guidance import Guidance, Guide
from .liveness.check import LivenessCheck, LivenessPlan
from .pipeline import Verifier
from .ports import Camera
from .types import Decision, Frame, Glimpse
from .vocab import FaceReason, Failure, LivenessReason, RunningMode, State, Verdict

log = logging.getLogger("facegate.session")

Progress = Callable[[State, "str | None"], None]
"""(state, challenge step or None): waiting_face when the session starts, challenge and
the step being asked while a face is tracked, deciding when the frames have ended."""

Guided = Callable[[Guidance], None]
"""Told each guidance update for the person (guidance.Guide: a few a second at most)."""


class Ended(StrEnum):
    """Why a session stopped reading frames before the verifier was done with them."""

    TIMEOUT = "timeout"  # the session timeout, in frame time
    CANCELLED = "cancelled"  # the person pressed the button
    STOPPED = "stopped"  # the daemon is stopping


@dataclass(frozen=True)
class Outcome:
    """What a session decided: the decision to publish, the verifier's milliseconds per
    stage (empty when it failed), why the frames were cut short (None: the verifier ended
    them), and the session's own wall time in milliseconds."""

    decision: Decision
    timings_ms: dict
    ended: Ended | None = None
    ms: float = 0.0


class LatestFrame(Protocol):
    """The live feed (feed.FrameFeed): the newest frame after `after`, None on timeout."""

    def next(self, after: Frame | None, timeout_s: float) -> Frame | None: ...


def live(feed: LatestFrame, frame_timeout_s: float) -> Generator[Frame, None, None]:
    """Every new frame of the live feed; CameraError when none comes in frame_timeout_s."""
    last = None
    while True:
        f = feed.next(last, frame_timeout_s)
        if f is None:
            raise CameraError(f"no frame for {frame_timeout_s:g} s")
        last = f
        yield f


def replay(open_camera: Callable[[], Camera]) -> Generator[Frame, None, None]:
    """A fresh camera's frames (a file played from its start), closed when they end."""
    camera = open_camera()
    try:
        yield from camera.frames()
    finally:
        camera.close()


def _never() -> bool:
    return False


class Session:
    """One verification. liveness: the check this session must pass (None: none);
    timeout_s: the session's length in frame time (None: until the frames end);
    cancelled / stopped: asked before every frame; on_progress: the one callback;
    mode: LIVE_STREAM stops reading once enough good frames are kept and liveness is
    settled (a live camera never ends by itself); VIDEO reads a file to its end
    (`facegate verify`);
    guide / on_guide: the session's guidance and who is told its updates."""

    def __init__(self, verifier: Verifier, liveness: LivenessCheck | None = None, *,
                 timeout_s: float | None = None, on_progress: Progress | None = None,
                 cancelled: Callable[[], bool] = _never, stopped: Callable[[], bool] = _never,
                 mode: RunningMode = RunningMode.LIVE_STREAM, guide: Guide | None = None, on_guide: Guided | None = None,
                 on_work: Callable[[], None] | None = None):
        self.verifier, self.liveness, self.timeout_s = verifier, liveness, timeout_s
        self.guide, self.on_guide = guide, on_guide or (lambda g: None)
        self._state = State.WAITING_FACE
        if mode is RunningMode.IMAGE:
            raise ValueError("a session reads frames: RunningMode.VIDEO or LIVE_STREAM")
        self.mode = mode
        self.on_work = on_work  # after each step of the work between the last frame and the decision
        self.on_progress = on_progress or (lambda state, step: None)
        self.cancelled, self.stopped = cancelled, stopped
        self.ended: Ended | None = None

    @classmethod
    def planned(cls, verifier: Verifier, plan: LivenessPlan | None, steps: list[str] | None = None,
                **kw) -> Session:
        """A session whose liveness check `plan` makes (the challenge `steps`, None: drawn);
        the check embeds its drift crops with this verifier's embedder."""
        check = plan.check(steps, verifier.embedder.embed) if plan is not None else None
        return cls(verifier, check, **kw)

    def _frames(self, frames: Iterable[Frame]) -> Generator[Frame, None, None]:
        t0 = None
        for frame in frames:
            if self.stopped():
                self.ended = Ended.STOPPED
                return
            if self.cancelled():
                self.ended = Ended.CANCELLED
                return
            t0 = frame.t_mono_s if t0 is None else t0
            if self.timeout_s is not None and frame.t_mono_s - t0 > self.timeout_s:
                self.ended = Ended.TIMEOUT
                return
            yield frame

    def _on_frame(self, g: Glimpse) -> None:
        """Waiting for a face until one is tracked, then each challenge step as it is asked
        (a passive-only session stays waiting_face); then the guidance, when one is due."""
        step = self.liveness.step if self.liveness is not None else None
        if g.tracked and step:
            self._state = State.CHALLENGE
            self.on_progress(State.CHALLENGE, step)
        if self.guide is not None:
            steps = self.liveness.steps if self.liveness is not None else (0, 0, 0.0)
            out = self.guide.update(g, self._state, step if self._state == State.CHALLENGE else None, steps)
            if out is not None:
                self.on_guide(out)

    def run(self, reference: np.ndarray, frames: Iterable[Frame]) -> Outcome:
        """Verify `reference` against `frames` (closed when the session ends); errors raise."""
        t0 = time.perf_counter()
        self.ended, self._state = None, State.WAITING_FACE
        self.on_progress(State.WAITING_FACE, None)
        source = iter(frames)
        try:
            with closing(self._frames(source)) as cut:
                decision, timings = self.verifier.verify(reference, cut, self.mode, liveness=self.liveness,
                                                         on_frame=self._on_frame, on_work=self.on_work)
        finally:
            if hasattr(source, "close"):  # a generator (replay): its camera closes now
                source.close()
        self.on_progress(State.DECIDING, None)
        return Outcome(self._settle(decision), timings, self.ended, round((time.perf_counter() - t0) * 1000, 1))

    def run_contained(self, reference: np.ndarray, frames: Iterable[Frame], name: str = "") -> Outcome:
        """run(), but a failure is an `error` outcome (camera_failed, pipeline_error,
        internal_error), logged, never an exception."""
        t0 = time.perf_counter()
        try:
            return self.run(reference, frames)
        except CameraError as exc:
            reason = Failure.CAMERA_FAILED
            log.error("session %s: %s", name, exc)
        except FacegateError as exc:
            reason = Failure.PIPELINE_ERROR
            log.error("session %s: %s", name, exc)
        except Exception:
            reason = Failure.INTERNAL_ERROR
            log.exception("session %s failed", name)
        self.on_progress(State.DECIDING, None)
        return Outcome(Decision(Verdict.ERROR, reason), {}, self.ended, round((time.perf_counter() - t0) * 1000, 1))

    def _settle(self, d: Decision) -> Decision:
        """The decision once the ending is known: a cancel is an error; at the timeout, no
        face yet or a challenge still running is a timeout."""
        if self.ended is Ended.CANCELLED:
            return Decision(Verdict.ERROR, Failure.CANCELLED, None, d.quality, 0, d.liveness)
        if self.ended is not Ended.TIMEOUT:
            return d
        if d.decision == Verdict.NO_FACE:
            return Decision(Verdict.TIMEOUT, FaceReason.NO_FACE_IN_TIME, None, d.quality, 0, d.liveness)
        if d.decision == Verdict.SPOOF and self.liveness is not None and self.liveness.incomplete:
            return Decision(Verdict.TIMEOUT, LivenessReason.CHALLENGE_INCOMPLETE, None, d.quality, d.frames_used,
                            d.liveness)
        return d
