"""The active challenge: a random sequence of steps (blink, turn_left, turn_right),
each observed on the same tracked face within its timeout. Frames in, verdicts out; time
comes only from frame timestamps, so a video replays deterministically.

Conventions: yaw > 0 when the subject turns to *their* left (see vision.quality.head_pose);
eye openness is the eye aspect ratio of the mesh, judged against this person's own
open-eye baseline, never a fixed constant.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

STEPS = ("blink", "turn_left", "turn_right")
# (outer corner, inner corner, three upper/lower lid pairs) of each eye in the mesh
RIGHT_EYE = (33, 133, (159, 145), (158, 153), (160, 144))
LEFT_EYE = (263, 362, (386, 374), (385, 380), (387, 373))


def eye_openness(points: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (lid gaps over eye width) from 468x3 points."""
    vals = []
    for outer, inner, *lids in (RIGHT_EYE, LEFT_EYE):
        width = np.linalg.norm(points[outer, :2] - points[inner, :2])
        gaps = [np.linalg.norm(points[u, :2] - points[lo, :2]) for u, lo in lids]
        vals.append(float(np.mean(gaps)) / max(float(width), 1e-6))
    return float(np.mean(vals))


def draw_steps(rng: random.Random, length: int, allowed: tuple[str, ...]) -> list[str]:
    """A random challenge of `length` steps from `allowed`, no step twice in a row
    (unless only one step is allowed)."""
    steps: list[str] = []
    for _ in range(length):
        choices = [s for s in allowed if not steps or s != steps[-1]] or list(allowed)
        steps.append(rng.choice(choices))
    return steps


@dataclass(frozen=True)
class ChallengeOptions:
    """Thresholds of the challenge, in degrees, seconds and ratios."""

    step_timeout_s: float = 6.0
    turn_min_deg: float = 25.0       # excursion from the step's frontal baseline
    turn_return_deg: float = 12.0    # back within this of the baseline to finish a turn
    blink_close_ratio: float = 0.75  # openness below this x baseline counts as closed
    blink_open_ratio: float = 0.9    # and above this x baseline as open again
    blink_max_closed_s: float = 0.7
    blink_max_yaw_deg: float = 20.0  # eye openness is judged on near-frontal frames only
    face_lost_s: float = 0.6         # no tracked face for longer than this: face_changed
    min_similarity: float = 0.3      # embedding drift below this vs the start: face_changed


@dataclass(frozen=True)
class Observation:
    """What the challenge needs from one frame: t_s (frame timestamp); face: the tracked
    face is present; yaw_deg, openness from its mesh; similarity: cosine of the current
    embedding to the session's first one, when it was computed for this frame."""

    t_s: float
    face: bool
    yaw_deg: float = 0.0
    openness: float = 0.0
    similarity: float | None = None


@dataclass
class Challenge:
    """Feed observations with `update`; `status` is "running", "passed" or "failed"
    (then `reason` is timeout | face_changed)."""

    steps: list[str]
    opts: ChallengeOptions = field(default_factory=ChallengeOptions)
    index: int = 0
    status: str = "running"
    reason: str | None = None
    events: list[tuple[str, float]] = field(default_factory=list)  # (step done, t_s)
    blinks: list[float] = field(default_factory=list)  # every blink seen, t_s of reopening
    _step_t0: float | None = None
    _last_face_t: float | None = None
    _yaw_base: list[float] = field(default_factory=list)
    _turned: bool = False
    _open: list[float] = field(default_factory=list)
    _closed_t: float | None = None

    @property
    def step(self) -> str | None:
        return self.steps[self.index] if self.status == "running" and self.index < len(self.steps) else None

    def _fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason

    def _advance(self, t: float) -> None:
        self.events.append((self.steps[self.index], t))
        self.index += 1
        self._step_t0 = t
        self._turned, self._closed_t = False, None
        self._yaw_base = self._yaw_base[-5:]
        if self.index == len(self.steps):
            self.status = "passed"

    def update(self, o: Observation) -> str:
        if self.status != "running":
            return self.status
        if not self.steps:
            self.status = "passed"
            return self.status
        if self._step_t0 is None:
            self._step_t0 = o.t_s
        if not o.face:
            if self._last_face_t is not None and o.t_s - self._last_face_t > self.opts.face_lost_s:
                self._fail("face_changed")
            elif o.t_s - self._step_t0 > self.opts.step_timeout_s:
                self._fail("timeout")
            return self.status
        self._last_face_t = o.t_s
        if o.similarity is not None and o.similarity < self.opts.min_similarity:
            self._fail("face_changed")
            return self.status
        self._observe_blink(o)
        self._observe_turn(o)
        if self.status == "running" and o.t_s - self._step_t0 > self.opts.step_timeout_s:
            self._fail("timeout")
        return self.status

    def _observe_turn(self, o: Observation) -> None:
        step = self.step
        base = float(np.median(self._yaw_base)) if self._yaw_base else None
        if base is None or abs(o.yaw_deg - base) < self.opts.turn_return_deg:
            self._yaw_base = (self._yaw_base + [o.yaw_deg])[-15:]
        if step not in ("turn_left", "turn_right") or base is None:
            return
        sign = 1.0 if step == "turn_left" else -1.0
        if (o.yaw_deg - base) * sign >= self.opts.turn_min_deg:
            self._turned = True
        elif self._turned and abs(o.yaw_deg - base) <= self.opts.turn_return_deg:
            self._advance(o.t_s)

    def _observe_blink(self, o: Observation) -> None:
        if abs(o.yaw_deg) > self.opts.blink_max_yaw_deg:
            return
        base = float(np.percentile(self._open, 75)) if len(self._open) >= 3 else None
        if base is None or o.openness >= self.opts.blink_open_ratio * base:
            self._open = (self._open + [o.openness])[-30:]
        if base is None:
            return
        if o.openness < self.opts.blink_close_ratio * base:
            if self._closed_t is None:
                self._closed_t = o.t_s
        elif self._closed_t is not None and o.openness >= self.opts.blink_open_ratio * base:
            closed_for = o.t_s - self._closed_t
            self._closed_t = None
            if closed_for <= self.opts.blink_max_closed_s:
                self.blinks.append(o.t_s)
                if self.step == "blink":
                    self._advance(o.t_s)
