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
from ..registry import STEPS
from ..vision.geometry import rotated_square
from ..vocab import ChallengeStatus, LivenessReason, Step
from .steps import StepDetector

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
    """Feed observations with `update`; `status` is a ChallengeStatus (then `reason` is
    timeout | face_changed when failed). Each step is seen by the detector registered for
    it (registry.STEPS, liveness.steps); every registered detector watches every frame."""

    steps: list[str]
    opts: ChallengeOptions = field(default_factory=ChallengeOptions)
    index: int = 0
    status: ChallengeStatus = ChallengeStatus.RUNNING
    reason: str | None = None
    events: list[tuple[str, float]] = field(default_factory=list)  # (step done, t_s)
    detectors: dict[str, StepDetector] = field(default_factory=dict)  # step -> its detector
    _step_t0: float | None = None
    _last_face_t: float | None = None

    def __post_init__(self) -> None:
        built: dict[object, StepDetector] = {}  # one detector per registered class
        for name in dict.fromkeys([*STEPS.names(), *self.steps]):
            cls = STEPS.get(name)  # UnknownName for a step nothing registered
            self.detectors[name] = built.setdefault(cls, cls(self.opts))
        self._watch = list(built.values())

    @property
    def blinks(self) -> list[float]:
        """Every blink seen, t_s of reopening."""
        return self.detectors[Step.BLINK].seen  # type: ignore[attr-defined]

    @property
    def turns(self) -> list[tuple[str, float]]:
        """Every turn seen, (direction, t_s of return)."""
        return self.detectors[Step.TURN_LEFT].seen  # type: ignore[attr-defined]

    @property
    def step(self) -> str | None:
        running = self.status == ChallengeStatus.RUNNING
        return self.steps[self.index] if running and self.index < len(self.steps) else None

    @property
    def step_progress(self) -> float:
        """How far the step asked now has come, 0-1, for guiding the person (the step's
        detector says: a turn is 3/4 done at turn_min_deg towards the asked side and whole
        once back to frontal; a blink half done while the eyes are closed)."""
        step = self.step
        if step is None:
            return 1.0 if self.status == ChallengeStatus.PASSED else 0.0
        return self.detectors[step].progress(step)

    def _fail(self, reason: str) -> None:
        self.status, self.reason = ChallengeStatus.FAILED, reason

    def _advance(self, t: float) -> None:
        self.events.append((self.steps[self.index], t))
        self.index += 1
        self._step_t0 = t
        for d in self._watch:
            d.advanced()
        if self.index == len(self.steps):
            self.status = ChallengeStatus.PASSED

    def update(self, o: Observation) -> ChallengeStatus:
        if self.status != ChallengeStatus.RUNNING:
            return self.status
        if not self.steps:
            self.status = ChallengeStatus.PASSED
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
        for d in self._watch:  # in registration order: blink, then turns
            for done in d.observe(o):
                if self.step == done:
                    self._advance(o.t_s)
        if self.status == ChallengeStatus.RUNNING and o.t_s - self._step_t0 > self.opts.step_timeout_s:
            self._fail(LivenessReason.TIMEOUT)
        return self.status
