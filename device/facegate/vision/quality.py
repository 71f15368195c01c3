"""Per-face quality figures (pure functions of the mesh and the aligned crop)."""
from __future__ import annotations

import cv2
import numpy as np

from ..types import Quality
from .mesh import CHEEK_LEFT, CHEEK_RIGHT, CHIN, FOREHEAD, LEFT_EYE_RING, RIGHT_EYE_RING


def head_pose(points: np.ndarray) -> tuple[float, float]:
    """(yaw_deg, pitch_deg) from 468x3 mesh points. Yaw > 0 when the subject turns to
    their left (the face's right cheek comes toward the camera); pitch > 0 chin up."""
    d = points[CHEEK_LEFT] - points[CHEEK_RIGHT]
    yaw = np.degrees(np.arctan2(d[2], d[0]))
    v = points[CHIN] - points[FOREHEAD]
    pitch = np.degrees(np.arctan2(-v[2], v[1]))
    return float(yaw), float(pitch)


def eye_distance(points: np.ndarray) -> float:
    """Distance between the eye centres in frame pixels."""
    re = points[list(RIGHT_EYE_RING), :2].mean(0)
    le = points[list(LEFT_EYE_RING), :2].mean(0)
    return float(np.linalg.norm(le - re))


def measure(points: np.ndarray, crop_rgb: np.ndarray) -> Quality:
    """Quality of one face: points 468x3 frame pixels, crop 112x112x3 uint8 RGB."""
    grey = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
    inner = grey[16:96, 16:96]  # the face itself, not the background corners
    sharp = float(cv2.Laplacian(inner, cv2.CV_32F).var())
    yaw, pitch = head_pose(points)
    return Quality(eye_distance(points), sharp, float(inner.mean()), yaw, pitch)
