"""Guidance for the person at the terminal: what each session frame showed (types.Glimpse)
and how far the challenge has come, turned into one hint at a time (vocab.Hint), the
step asked, progress and the seconds left.

Pure and driven by frame time only, so a video replays to the same guidance. No flicker:
a new hint must be what the frames say for `confirm_s` before it is shown, and a shown
hint stays for `hold_s` unless a more urgent one wins (or the challenge moves on to its
next step, which is shown at once). At most one update every `min_interval_s`.

Published on R/guide and shown on the kiosk screen; it carries words and fractions only,
never a box, landmark, score or image.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .types import Glimpse
from .vocab import FaceReason, Hint, State

URGENCY: dict[Hint, int] = {
    Hint.ONE_FACE_ONLY: 4, Hint.LOOK_AT_CAMERA: 3, Hint.MOVE_CLOSER: 2, Hint.MOVE_BACK: 2, Hint.MORE_LIGHT: 2,
    Hint.LESS_LIGHT: 2, Hint.CENTER_FACE: 1, Hint.BLINK: 1, Hint.TURN_LEFT: 1, Hint.TURN_RIGHT: 1, Hint.HOLD_STILL: 0}
"""Which hint wins at once over the one shown (higher wins; equal or lower waits hold_s)."""

STEP_HINTS = frozenset({Hint.BLINK, Hint.TURN_LEFT, Hint.TURN_RIGHT})

GATE_HINTS: dict[str, Hint] = {
    FaceReason.NO_FACE: Hint.LOOK_AT_CAMERA,
    FaceReason.MULTIPLE_FACES: Hint.ONE_FACE_ONLY,
    FaceReason.FACE_CHANGED: Hint.ONE_FACE_ONLY,
    FaceReason.FACE_TOO_SMALL: Hint.MOVE_CLOSER,
    FaceReason.POSE_OUT_OF_RANGE: Hint.LOOK_AT_CAMERA,
    FaceReason.TOO_DARK: Hint.MORE_LIGHT,
    FaceReason.TOO_BRIGHT: Hint.LESS_LIGHT,
    FaceReason.TOO_BLURRY: Hint.HOLD_STILL,
}
"""The fix for each reason a frame is unusable."""

DURING_STEP = frozenset({FaceReason.POSE_OUT_OF_RANGE, FaceReason.TOO_BLURRY})
"""Gates a turning head fails by itself: during a step the step prompt stays."""


@dataclass(frozen=True)
class GuideOptions:
    """confirm_s, hold_s, min_interval_s: seconds of frame time (module docstring);
    max_face_height: a face box taller than this fraction of the frame asks move_back;
    max_offset: a face centre farther than this fraction of the frame's width (height)
    from its centre asks center_face."""

    confirm_s: float = 0.3
    hold_s: float = 1.0
    min_interval_s: float = 0.25
    max_face_height: float = 0.8
    max_offset: float = 0.22


@dataclass(frozen=True)
class Guidance:
    """One update for the person: state (waiting_face / challenge), the step asked (None
    outside a challenge), the hint to show, the step's and the session's progress (0-1),
    seconds left of the session and of the step (None: no limit / no step)."""

    session: str | None
    state: State
    step: str | None
    hint: Hint
    step_progress: float
    progress: float
    seconds_left: float | None
    step_seconds_left: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def raw_hint(g: Glimpse, step: str | None, opts: GuideOptions = GuideOptions()) -> Hint:
    """The hint one frame asks for, before hysteresis: the fix for its failed gate, else
    move_back / center_face for a face too large or off-centre, else the step asked, else
    hold_still (good frames are being collected)."""
    if g.reason is not None and not (step and g.tracked and g.reason in DURING_STEP):
        return GATE_HINTS.get(g.reason, Hint.LOOK_AT_CAMERA)
    if g.box is not None and not step:
        (x0, y0, x1, y1), (w, h) = g.box, g.size
        if (y1 - y0) > opts.max_face_height * h:
            return Hint.MOVE_BACK
        if abs((x0 + x1) / 2 - w / 2) > opts.max_offset * w or abs((y0 + y1) / 2 - h / 2) > opts.max_offset * h:
            return Hint.CENTER_FACE
    return Hint(step) if step else Hint.HOLD_STILL


class Guide:
    """One session's guidance. timeout_s / step_timeout_s: the session's and each step's
    length in frame time (None: unlimited); needed_frames: good frames the verifier keeps
    (verify.fusion_frames). update() returns a Guidance when one is due, else None."""

    def __init__(self, session: str | None, *, timeout_s: float | None, step_timeout_s: float | None,
                 needed_frames: int, opts: GuideOptions = GuideOptions()):
        self.session, self.timeout_s, self.step_timeout_s = session, timeout_s, step_timeout_s
        self.needed, self.opts = max(needed_frames, 1), opts
        self.shown: Hint | None = None
        self._shown_t = self._cand_t = 0.0
        self._cand: Hint | None = None
        self._t0: float | None = None
        self._step: str | None = None
        self._step_t0 = 0.0
        self._good = 0
        self._progress = 0.0
        self._last: Guidance | None = None
        self._last_t = -math.inf

    def _choose(self, cand: Hint, t: float) -> Hint:
        if cand != self._cand:
            self._cand, self._cand_t = cand, t
        shown = self.shown
        if shown is None or cand == shown:
            switch = shown is None
        elif cand in STEP_HINTS and shown in STEP_HINTS:
            switch = True  # the challenge moved on: the next step at once
        else:
            steady = t - self._cand_t >= self.opts.confirm_s
            switch = steady and (URGENCY[cand] > URGENCY[shown] or t - self._shown_t >= self.opts.hold_s)
        if switch:
            self.shown, self._shown_t = cand, t
        assert self.shown is not None
        return self.shown

    def update(self, g: Glimpse, state: State, step: str | None, steps: tuple[int, int, float] = (0, 0, 0.0)
               ) -> Guidance | None:
        """One frame: its glimpse, the session's state, the step asked and (steps done,
        steps asked, the step's progress)."""
        t = g.t_s
        self._t0 = t if self._t0 is None else self._t0
        if step != self._step:
            self._step, self._step_t0 = step, t
        if g.tracked and g.reason is None:
            self._good += 1
        done, asked, step_progress = steps
        frames = min(self._good / self.needed, 1.0)
        self._progress = max(self._progress, (done + frames) / (asked + 1))  # never goes back
        hint = self._choose(raw_hint(g, step, self.opts), t)
        left = None if self.timeout_s is None else max(0.0, self.timeout_s - (t - self._t0))
        step_left = None if step is None or self.step_timeout_s is None else max(
            0.0, self.step_timeout_s - (t - self._step_t0))
        out = Guidance(self.session, state, step, hint, round(step_progress, 2), round(self._progress, 2),
                       None if left is None else round(left, 1), None if step_left is None else round(step_left, 1))
        if t - self._last_t < self.opts.min_interval_s or not self._differs(out):
            return None
        self._last, self._last_t = out, t
        return out

    def _differs(self, g: Guidance) -> bool:
        last = self._last
        if last is None or (g.state, g.step, g.hint) != (last.state, last.step, last.hint):
            return True
        if g.progress != last.progress or abs(g.step_progress - last.step_progress) >= 0.05:
            return True
        return any(a is not None and b is not None and math.ceil(a) != math.ceil(b)
                   for a, b in ((g.seconds_left, last.seconds_left), (g.step_seconds_left, last.step_seconds_left)))
