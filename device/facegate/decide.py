"""Pure decision functions: which face counts, quality gates, fusion and the verdict."""
from __future__ import annotations

import numpy as np

from .config import VerifyConfig
from .types import Decision, Detection, Quality

MATCH, NO_MATCH, NO_FACE, SPOOF, TIMEOUT, REJECTED, ERROR = (
    "match", "no_match", "no_face", "spoof", "timeout", "rejected", "error")


def choose_face(dets: list[Detection], dominant_ratio: float) -> tuple[Detection | None, str | None]:
    """The face to verify: the only one, or the largest when it is `dominant_ratio`
    times larger than the next. Returns (face, None) or (None, reason)."""
    if not dets:
        return None, "no_face"
    ranked = sorted(dets, key=lambda d: d.area, reverse=True)
    if len(ranked) > 1 and ranked[0].area < dominant_ratio * ranked[1].area:
        return None, "multiple_faces"
    return ranked[0], None


def gate(q: Quality, presence: float, cfg: VerifyConfig) -> str | None:
    """First failed quality gate's name, or None when the face is usable."""
    if presence < cfg.min_face_presence:
        return "no_face"
    if q.face_px < cfg.min_eye_distance_px:
        return "face_too_small"
    if abs(q.yaw_deg) > cfg.max_yaw_deg or abs(q.pitch_deg) > cfg.max_pitch_deg:
        return "pose_out_of_range"
    if q.brightness < cfg.min_brightness:
        return "too_dark"
    if q.brightness > cfg.max_brightness:
        return "too_bright"
    if q.sharpness < cfg.min_sharpness:
        return "too_blurry"
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
    return Decision(verdict, None if verdict == MATCH else "different_person", similarity, quality, frames_used)
