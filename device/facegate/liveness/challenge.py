"""The active challenge: a random sequence of steps (blink, turn_left, turn_right),
each observed on the same tracked face within its timeout. Frames in, verdicts out; time
comes only from frame timestamps, so a video replays deterministically.

Conventions: yaw > 0 when the subject turns to *their* left (see vision.quality.head_pose);
eye openness is an eye aspect ratio (lid gaps over eye width), judged against this person's
own open-eye baseline, never a fixed constant.

Which landmarks: the 468-point face mesh keeps its lid points where an open eye would be
-- on a fully closed eye (EyeBlink8, NUAA) its aspect ratio drops by only ~5 %, so a blink
cannot be seen in `eye_openness(mesh points)`. The MediaPipe iris-landmark model, run on a
crop around each eye, follows the lids (~0.30 open, ~0.08-0.10 closed on the same frames):
`EyeLids.openness(image, mesh points)` is the openness a blink must be judged on.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..ports import Runner
from ..vision.geometry import rotated_square
from ..vocab import LivenessReason, Step

STEPS = tuple(Step)
# (outer corner, inner corner, three upper/lower lid pairs) of each eye in the mesh
RIGHT_EYE = (33, 133, (159, 145), (158, 153), (160, 144))
LEFT_EYE = (263, 362, (386, 374), (385, 380), (387, 373))


# The iris-landmark model's 71 eye-contour points begin with the 16-point eye ring in mesh
# order (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173 for the
# subject's right eye; MediaPipe update_face_landmarks_calculator), so these are the same
# corners and lid pairs as RIGHT_EYE. The left eye is fed mirrored: the same indices apply.
CONTOUR_EYE = (0, 8, (12, 4), (13, 5), (11, 3))
IRIS_INPUT_PX = 64
IRIS_ROI_SCALE = 2.3  # MediaPipe iris_landmark: a square of 2.3x the eye-corner distance


def _aspect(points: np.ndarray, eye: tuple) -> float:
    outer, inner, *lids = eye
    width = np.linalg.norm(points[outer, :2] - points[inner, :2])
    gaps = [np.linalg.norm(points[u, :2] - points[lo, :2]) for u, lo in lids]
    return float(np.mean(gaps)) / max(float(width), 1e-6)


def eye_openness(points: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (lid gaps over eye width) from 468x3 mesh points.
    The mesh's lids barely move on a blink (module docstring): use EyeLids for blinks."""
    return float(np.mean([_aspect(points, eye) for eye in (RIGHT_EYE, LEFT_EYE)]))


def contour_openness(contour: np.ndarray) -> float:
    """Eye aspect ratio of one eye from the iris model's 71 eye-contour points (71x2 or 71x3)."""
    return _aspect(contour, CONTOUR_EYE)


def eye_crop(image_bgr: np.ndarray, points: np.ndarray, right: bool) -> np.ndarray:
    """The iris model's input for one eye: a 64 px square around the mesh eye corners,
    rotated level, the subject's left eye mirrored (1x64x64x3 float32 RGB in [0, 1])."""
    outer, inner = (RIGHT_EYE if right else LEFT_EYE)[:2]
    a, b = points[outer, :2].astype(np.float64), points[inner, :2].astype(np.float64)
    if not right:
        a, b = b, a  # left to right in the image for both eyes
    c = (a + b) / 2
    size = max(float(np.linalg.norm(b - a)), 1.0) * IRIS_ROI_SCALE
    m = rotated_square(float(c[0]), float(c[1]), size, float(np.arctan2(b[1] - a[1], b[0] - a[0])), IRIS_INPUT_PX)
    crop = cv2.warpAffine(image_bgr, m, (IRIS_INPUT_PX, IRIS_INPUT_PX), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    if not right:
        crop = crop[:, ::-1]
    x = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2RGB).astype(np.float32)
    x *= 1.0 / 255.0
    return x[None]


class EyeLids:
    """Eye openness from the MediaPipe iris-landmark model (task "iris" in the model store),
    whose eye contours follow the lids. `openness(image, mesh points)` is the aspect ratio
    of the more open eye: a blink closes both, while a reflection on one lens of a pair of
    glasses or a wink lowers only one."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self._idx = next(i for i, o in enumerate(runner.outputs) if int(np.prod(o.shape)) == 213)

    def eye(self, image_bgr: np.ndarray, points: np.ndarray, right: bool) -> float:
        out = self.runner.run(eye_crop(image_bgr, points, right))[self._idx]
        return contour_openness(np.asarray(out, np.float64).reshape(71, 3))

    def openness(self, image_bgr: np.ndarray, points: np.ndarray) -> float:
        return max(self.eye(image_bgr, points, True), self.eye(image_bgr, points, False))


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
    # Blink hysteresis, as a fraction of the person's own open-eye baseline (EyeLids
    # openness). Measured with eval_liveness.py: shut eyes read 0.20-0.36x (EyeBlink8);
    # the deepest dips without a blink are 0.73x on printed photos (NUAA), 0.63x behind
    # glasses with reflections (replay/zubair); after a blink the eyes reopen to only
    # 0.82-0.92x when the gaze stays lowered. Annotations: tests/fixtures/liveness_annotations.json.
    blink_close_ratio: float = 0.55  # openness below this x baseline counts as closed
    blink_open_ratio: float = 0.8    # and above this x baseline as open again
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
    turns: list[tuple[str, float]] = field(default_factory=list)  # every turn seen, t_s of return
    _step_t0: float | None = None
    _last_face_t: float | None = None
    _yaw_base: list[float] = field(default_factory=list)
    _turned: str | None = None  # the direction of an excursion not yet returned from
    _open: list[float] = field(default_factory=list)
    _closed_t: float | None = None
    _yaw_off: float = 0.0  # the last frame's yaw away from the frontal baseline, degrees

    @property
    def step(self) -> str | None:
        return self.steps[self.index] if self.status == "running" and self.index < len(self.steps) else None

    @property
    def step_progress(self) -> float:
        """How far the step asked now has come, 0-1, for guiding the person: a turn is
        3/4 done at turn_min_deg towards the asked side and whole once back to frontal; a
        blink half done while the eyes are closed."""
        step = self.step
        if step is None:
            return 1.0 if self.status == "passed" else 0.0
        if step == Step.BLINK:
            return 0.5 if self._closed_t is not None else 0.0
        if self._turned == step:
            back = (abs(self._yaw_off) - self.opts.turn_return_deg) / max(
                self.opts.turn_min_deg - self.opts.turn_return_deg, 1e-6)
            return 0.75 + 0.25 * (1.0 - min(max(back, 0.0), 1.0))
        toward = self._yaw_off if step == Step.TURN_LEFT else -self._yaw_off
        return 0.75 * min(max(toward / self.opts.turn_min_deg, 0.0), 1.0)

    def _fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason

    def _advance(self, t: float) -> None:
        self.events.append((self.steps[self.index], t))
        self.index += 1
        self._step_t0 = t
        self._turned, self._closed_t = None, None
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
                self._fail(LivenessReason.FACE_CHANGED)
            elif o.t_s - self._step_t0 > self.opts.step_timeout_s:
                self._fail(LivenessReason.TIMEOUT)
            return self.status
        self._last_face_t = o.t_s
        if o.similarity is not None and o.similarity < self.opts.min_similarity:
            self._fail(LivenessReason.FACE_CHANGED)
            return self.status
        self._observe_blink(o)
        self._observe_turn(o)
        if self.status == "running" and o.t_s - self._step_t0 > self.opts.step_timeout_s:
            self._fail(LivenessReason.TIMEOUT)
        return self.status

    def _observe_turn(self, o: Observation) -> None:
        """A turn: yaw at least turn_min_deg away from the frontal baseline, then back within
        turn_return_deg of it. Every turn is recorded; the asked one advances the step."""
        base = float(np.median(self._yaw_base)) if self._yaw_base else None
        if base is None or abs(o.yaw_deg - base) < self.opts.turn_return_deg:
            self._yaw_base = (self._yaw_base + [o.yaw_deg])[-15:]
        if base is None:
            return
        d = self._yaw_off = o.yaw_deg - base
        if abs(d) >= self.opts.turn_min_deg:
            self._turned = Step.TURN_LEFT if d > 0 else Step.TURN_RIGHT
        elif self._turned and abs(d) <= self.opts.turn_return_deg:
            done, self._turned = self._turned, None
            self.turns.append((done, o.t_s))
            if self.step == done:
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
                if self.step == Step.BLINK:
                    self._advance(o.t_s)
