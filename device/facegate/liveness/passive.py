"""Passive presentation-attack detection: both MiniFASNet models on every usable frame of
one face, fused into one live / attack verdict per session."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..types import Detection
from ..vision.pad import PadModel
from ..vocab import LivenessReason

V2_SCALE, V1SE_SCALE = 2.7, 4.0


@dataclass(frozen=True)
class PassiveVerdict:
    """live: fused score >= threshold over at least min_frames frames; score in [0, 1]
    (kept on the device, never published); frames: how many frames were scored."""

    live: bool
    score: float
    frames: int
    reason: str | None = None


class PassiveLiveness:
    """`score(image, det)` -> mean p(real) of the two models for one frame."""

    def __init__(self, v2: PadModel, v1se: PadModel):
        self.models = (v2, v1se)

    def score(self, image_bgr: np.ndarray, det: Detection) -> float:
        return float(np.mean([m.score(image_bgr, det.box) for m in self.models]))


def fuse(frame_scores: list[float], threshold: float, min_frames: int) -> PassiveVerdict:
    """Session verdict from per-frame scores: their median must reach the threshold
    (the median ignores a few frames of motion blur or a passing reflection)."""
    if len(frame_scores) < min_frames:
        return PassiveVerdict(False, 0.0, len(frame_scores), "too_few_frames")
    s = float(np.median(frame_scores))
    return PassiveVerdict(s >= threshold, s, len(frame_scores), None if s >= threshold else LivenessReason.PRESENTATION_ATTACK)
