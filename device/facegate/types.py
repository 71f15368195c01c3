"""Plain frozen dataclasses that flow through the pipeline.

Coordinates are in pixels of the frame they came from unless a name says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera frame. image: HxWx3 uint8 BGR; t_mono_s: capture time in seconds;
    lores: optional smaller hxwx3 uint8 BGR copy of the same capture (picamera2's lores
    stream) on which faces may be detected before crops are taken from `image`."""

    image: np.ndarray
    t_mono_s: float
    seq: int = 0
    lores: np.ndarray | None = None


@dataclass(frozen=True)
class Detection:
    """A detected face. box: (x0, y0, x1, y1) float pixels; keypoints: 6x2 float32
    (right eye, left eye, nose tip, mouth centre, right ear, left ear — "right" is the
    subject's right, i.e. image left); score in [0, 1]."""

    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


@dataclass(frozen=True)
class Mesh:
    """468 face-mesh landmarks. points: 468x3 float32 (x, y in frame pixels, z relative
    depth in the same scale); presence: face-presence probability in [0, 1]."""

    points: np.ndarray
    presence: float


@dataclass(frozen=True)
class Quality:
    """Per-face quality figures. face_px: inter-ocular distance in pixels; sharpness:
    variance of the Laplacian on the aligned crop; brightness: mean grey level 0-255 on the
    crop; yaw_deg / pitch_deg: head pose estimated from the mesh."""

    face_px: float
    sharpness: float
    brightness: float
    yaw_deg: float
    pitch_deg: float

    def as_dict(self) -> dict:
        return {
            "face_px": round(self.face_px, 1),
            "sharpness": round(self.sharpness, 1),
            "brightness": round(self.brightness, 1),
            "yaw_deg": round(self.yaw_deg, 1),
            "pitch_deg": round(self.pitch_deg, 1),
        }


@dataclass(frozen=True)
class FaceAnalysis:
    """Everything the pipeline learned about the one face it kept in an image.
    crop: 112x112x3 uint8 RGB aligned crop; embedding: (128,) float32, L2-normalised;
    reason: None when the face passed every quality gate, else a named reason."""

    detection: Detection
    mesh: Mesh
    crop: np.ndarray
    embedding: np.ndarray
    quality: Quality
    reason: str | None = None
    n_faces: int = 1


@dataclass(frozen=True)
class Decision:
    """The outcome of one verification. decision: match | no_match | no_face | spoof |
    timeout | rejected | error; reason: a short machine-readable word or None;
    similarity is kept for local reporting only and is never published."""

    decision: str
    reason: str | None
    similarity: float | None = None
    quality: dict = field(default_factory=dict)
    frames_used: int = 0
    liveness: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Glimpse:
    """What one session frame showed, for guiding the person (guidance.Guide): t_s: the
    frame's timestamp, seconds; tracked: the session's face was found in it; reason: why
    the frame is unusable (a FaceReason: no_face, multiple_faces, face_changed or a failed
    quality gate), None when it is usable; box: the tracked face (x0, y0, x1, y1) in frame
    pixels, None without one; size: the frame's (width, height) in pixels. Stays on the
    device: the guidance made from it carries neither box nor image."""

    t_s: float
    tracked: bool
    reason: str | None
    box: tuple[float, float, float, float] | None
    size: tuple[int, int]
