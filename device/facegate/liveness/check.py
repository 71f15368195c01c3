"""What liveness one session must pass: the passive models and / or an active challenge,
fed the tracked face of each frame. Everything it needs comes in at construction (the
embedding function for the drift check included); the verifier only tells it what it saw
(`observe`, `face_changed`) and asks whether it is done (`settled`, `failed`)."""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config import LivenessConfig
from ..types import FaceAnalysis
from ..vision.embed import cosine
from ..vocab import ChallengeStatus, LivenessMode, LivenessReason
from .challenge import Challenge, ChallengeOptions, EyeLids, Observation, draw_steps, eye_openness
from .passive import PassiveLiveness, fuse

Embed = Callable[[np.ndarray], np.ndarray]  # aligned 112x112 crop -> L2-normalised embedding


@dataclass
class LivenessCheck:
    """The passive models (or None) with their threshold, and an active challenge (or
    None). embed: the embedding of an aligned crop, for the drift check during a
    challenge (every `drift_every`-th frame with a face is compared with the first, to
    catch a face swap); required with a challenge."""

    passive: PassiveLiveness | None = None
    passive_threshold: float = 0.5
    passive_min_frames: int = 1
    challenge: Challenge | None = None
    eyes: EyeLids | None = None  # lid-following eye openness; None = the face mesh's (blinks barely move it)
    embed: Embed | None = None
    drift_every: int = 5
    scores: list = field(default_factory=list)
    _changed: bool = False  # another face took the tracked face's place
    _first: np.ndarray | None = None
    _n: int = 0

    def face_changed(self) -> None:
        """The verifier saw another face take the tracked face's place: a spoof."""
        self._changed = True

    def observe(self, t_s: float, face: FaceAnalysis | None, image: np.ndarray) -> None:
        """Feed one frame's tracked face (or None) to the passive and active checks."""
        if face is None:
            if self.challenge:
                self.challenge.update(Observation(t_s, False))
            return
        if self.passive:  # every frame of the tracked face, as scripts/eval_liveness.py scores them
            self.scores.append(self.passive.score(image, face.detection))
        if self.challenge and face.mesh.presence >= 0.5:
            sim = None
            if self.embed is not None and self._n % self.drift_every == 0:
                e = self.embed(face.crop)
                if self._first is None:
                    self._first = e
                sim = cosine(self._first, e)
            self._n += 1
            openness = (self.eyes.openness(image, face.mesh.points) if self.eyes is not None
                        else eye_openness(face.mesh.points))
            self.challenge.update(Observation(t_s, True, face.quality.yaw_deg, openness, sim))

    @property
    def step(self) -> str | None:
        """The challenge step being asked now (None: no challenge, or it is over)."""
        return self.challenge.step if self.challenge is not None else None

    @property
    def steps(self) -> tuple[int, int, float]:
        """(steps done, steps asked, the current step's progress 0-1): (0, 0, 0.0) without
        a challenge."""
        ch = self.challenge
        return (ch.index, len(ch.steps), ch.step_progress) if ch is not None else (0, 0, 0.0)

    @property
    def failed(self) -> bool:
        """Already a spoof whatever comes next: the face changed or the challenge failed."""
        return self._changed or (self.challenge is not None and self.challenge.status == ChallengeStatus.FAILED)

    @property
    def incomplete(self) -> bool:
        """The challenge is still running (nothing else failed): the frames ended too soon."""
        return not self.failed and self.challenge is not None and self.challenge.status == ChallengeStatus.RUNNING

    def settled(self, min_frames: int) -> bool:
        """Enough seen for a verdict: the challenge finished (passed or failed) and the
        passive check scored at least `min_frames` frames."""
        if self._changed:
            return True
        if self.challenge is not None and self.challenge.status == ChallengeStatus.RUNNING:
            return False
        return self.passive is None or len(self.scores) >= max(min_frames, self.passive_min_frames)

    def verdict(self) -> tuple[str | None, dict]:
        """(reason the session is a spoof or None, summary without scores)."""
        summary: dict = {}
        reason: str | None = LivenessReason.FACE_CHANGED if self._changed else None
        if self.challenge is not None:
            ch = self.challenge
            summary.update(steps=list(ch.steps), active_pass=ch.status == ChallengeStatus.PASSED,
                           steps_done=[e for e, _ in ch.events])
            if ch.status != ChallengeStatus.PASSED and reason is None:  # a face swap outranks what it caused
                reason = ch.reason or LivenessReason.CHALLENGE_INCOMPLETE
        if self.passive is not None:
            v = fuse(self.scores, self.passive_threshold, self.passive_min_frames)
            summary.update(passive_pass=v.live, passive_frames=v.frames)
            if not v.live and reason is None:
                reason = v.reason
        return reason, summary


@dataclass(frozen=True)
class LivenessPlan:
    """How every session of a terminal (or of `facegate verify`) checks liveness: the
    mode, the config's thresholds and challenge rules, the loaded models, where random
    challenges come from. `check()` makes one session's LivenessCheck."""

    mode: LivenessMode
    config: LivenessConfig
    passive: PassiveLiveness | None = None
    eyes: EyeLids | None = None
    rng: random.Random = field(default_factory=random.SystemRandom)
    chosen: dict = field(default_factory=dict)  # task -> modelstore.Choice of the models above

    def check(self, steps: list[str] | None, embed: Embed | None) -> LivenessCheck | None:
        """The LivenessCheck one session must pass: the passive models for the passive
        modes, a challenge of `steps` (None = drawn at random from the config) with the
        eye-lid model for the active ones; None for mode none. `embed`: for the drift check."""
        mode, lc = LivenessMode(self.mode), self.config
        if mode == LivenessMode.NONE:
            return None
        check = LivenessCheck(passive_threshold=lc.passive_threshold, passive_min_frames=lc.passive_min_frames)
        if mode.passive:
            check.passive = self.passive
        if mode.active:
            if steps is None:
                steps = draw_steps(self.rng, lc.challenge_length, tuple(lc.challenge_steps))
            check.challenge = Challenge(list(steps), ChallengeOptions(step_timeout_s=lc.step_timeout_s,
                                                                       turn_min_deg=lc.turn_min_deg))
            check.eyes, check.embed = self.eyes, embed
        return check

