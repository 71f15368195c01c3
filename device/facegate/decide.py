"""Pure decision functions: which face counts, quality gates, fusion and the verdict."""
from __future__ import annotations

import numpy as np

from .config import VerifyConfig
from .types import Decision, Detection, Quality
from .vocab import FaceReason, Verdict

MATCH, NO_MATCH, NO_FACE, SPOOF, TIMEOUT, REJECTED, ERROR = (
    Verdict.MATCH, Verdict.NO_MATCH, Verdict.NO_FACE, Verdict.SPOOF, Verdict.TIMEOUT, Verdict.REJECTED, Verdict.ERROR)


def prominence(det: Detection, frame_w: int, frame_h: int) -> float:
    """How much a face looks like the customer's: its area inside the frame, weighted
    by (1 - d)^2 where d is the distance of its centre from the frame centre divided by
    the half-diagonal. A bystander at the edge, or a face cut by the border, counts less."""
    x0, y0, x1, y1 = det.box
    vis = max(0.0, min(x1, frame_w) - max(x0, 0.0)) * max(0.0, min(y1, frame_h) - max(y0, 0.0))
    d = np.hypot((x0 + x1) / 2 - frame_w / 2, (y0 + y1) / 2 - frame_h / 2) / np.hypot(frame_w / 2, frame_h / 2)
    return float(vis * max(0.0, 1.0 - d) ** 2)


def choose_face(dets: list[Detection], frame_w: int, frame_h: int,
                dominant_ratio: float) -> tuple[Detection | None, str | None]:
    """The face to verify: the only one, or the most prominent when it is
    `dominant_ratio` times more prominent than the next. Returns (face, None) or
    (None, reason)."""
    if not dets:
        return None, FaceReason.NO_FACE
    ranked = sorted(dets, key=lambda d: prominence(d, frame_w, frame_h), reverse=True)
    if len(ranked) > 1 and (prominence(ranked[0], frame_w, frame_h)
                            < dominant_ratio * prominence(ranked[1], frame_w, frame_h)):
        return None, FaceReason.MULTIPLE_FACES
    return ranked[0], None


def gate(q: Quality, presence: float, cfg: VerifyConfig) -> str | None:
    """First failed quality gate's name, or None when the face is usable."""
    if presence < cfg.min_face_presence:
        return FaceReason.NO_FACE
    if q.face_px < cfg.min_eye_distance_px:
        return FaceReason.FACE_TOO_SMALL
    if abs(q.yaw_deg) > cfg.max_yaw_deg or abs(q.pitch_deg) > cfg.max_pitch_deg:
        return FaceReason.POSE_OUT_OF_RANGE
    if q.brightness < cfg.min_brightness:
        return FaceReason.TOO_DARK
    if q.brightness > cfg.max_brightness:
        return FaceReason.TOO_BRIGHT
    if q.sharpness < cfg.min_sharpness:
        return FaceReason.TOO_BLURRY
    return None


def quality_score(q: Quality) -> float:
    """Ranks frames of one face for fusion: larger, sharper and more frontal is better."""
    return (min(q.face_px / 40.0, 1.5) + min(q.sharpness / 150.0, 1.0)
            - (abs(q.yaw_deg) + abs(q.pitch_deg)) / 60.0)


def fuse(embeddings: list[np.ndarray]) -> np.ndarray:
    """Mean of unit vectors, renormalised: (K, D) -> (D,) float32."""
    m = np.mean(np.stack(embeddings), axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


def decide_match(similarity: float, threshold: float, quality: dict, frames_used: int = 1) -> Decision:
    """match when the cosine similarity reaches the threshold, else no_match."""
    verdict = MATCH if similarity >= threshold else NO_MATCH
    return Decision(verdict, None if verdict == MATCH else FaceReason.DIFFERENT_PERSON, similarity, quality, frames_used)
