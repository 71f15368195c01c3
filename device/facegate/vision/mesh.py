"""MediaPipe face mesh: 468 landmarks from a rotated square region around a face."""
from __future__ import annotations

import cv2
import numpy as np

from ..ports import Runner
from ..types import Detection, Mesh
from .geometry import invert_affine, rotated_square

INPUT_PX = 192
ROI_SCALE = 1.5  # MediaPipe face_landmark_front: detection box scaled 1.5x, square long side

# Landmark indices (MediaPipe canonical face mesh); "right" = subject's right = image left.
RIGHT_EYE_RING = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
LEFT_EYE_RING = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
NOSE_TIP = 1
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
CHEEK_RIGHT, CHEEK_LEFT = 234, 454
FOREHEAD, CHIN = 10, 152


def roi_from_detection(det: Detection) -> tuple[float, float, float, float]:
    """(cx, cy, size, angle_rad) of the mesh input region: the detection box scaled 1.5x,
    rotated so that the eyes are level (keypoint 0 = right eye, 1 = left eye)."""
    x0, y0, x1, y1 = det.box
    re, le = det.keypoints[0], det.keypoints[1]
    angle = float(np.arctan2(le[1] - re[1], le[0] - re[0]))
    size = max(x1 - x0, y1 - y0) * ROI_SCALE
    return (x0 + x1) / 2, (y0 + y1) / 2, size, angle


def roi_from_mesh(points: np.ndarray) -> tuple[float, float, float, float]:
    """Region for the next frame from the previous mesh (tracking without detection)."""
    re = points[list(RIGHT_EYE_RING), :2].mean(0)
    le = points[list(LEFT_EYE_RING), :2].mean(0)
    angle = float(np.arctan2(le[1] - re[1], le[0] - re[0]))
    c, s = np.cos(-angle), np.sin(-angle)
    centre = points[:, :2].mean(0)
    rel = (points[:, :2] - centre) @ np.array([[c, s], [-s, c]])
    lo, hi = rel.min(0), rel.max(0)
    mid = (lo + hi) / 2
    cx = centre[0] + mid[0] * np.cos(angle) - mid[1] * np.sin(angle)
    cy = centre[1] + mid[0] * np.sin(angle) + mid[1] * np.cos(angle)
    size = float(max(hi - lo)) * ROI_SCALE
    return float(cx), float(cy), size, angle


def crop_roi(image_bgr: np.ndarray, roi: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Cut the mesh input: returns (1x192x192x3 float32 RGB in [0, 1], m: frame->crop 2x3)."""
    cx, cy, size, angle = roi
    m = rotated_square(cx, cy, size, angle, INPUT_PX)
    crop = cv2.warpAffine(image_bgr, m, (INPUT_PX, INPUT_PX), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    x = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32)
    x *= 1.0 / 255.0
    return x[None], m


def landmarks_to_frame(raw: np.ndarray, m: np.ndarray) -> np.ndarray:
    """1404 raw outputs (crop pixels) -> 468x3 float32 in frame pixels (z scaled alike)."""
    pts = raw.reshape(468, 3).astype(np.float64)
    inv = invert_affine(m)
    xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
    z = pts[:, 2:] * np.sqrt(abs(np.linalg.det(inv[:, :2])))
    return np.hstack([xy, z]).astype(np.float32)


class FaceMesh:
    """`estimate(image, roi)` -> Mesh in frame pixels."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self._lm_idx = 0 if runner.outputs[0].shape[-1] == 1404 else 1

    def estimate(self, image_bgr: np.ndarray, roi: tuple[float, float, float, float]) -> Mesh:
        x, m = crop_roi(image_bgr, roi)
        outs = self.runner.run(x)
        raw, logit = outs[self._lm_idx], outs[1 - self._lm_idx]
        presence = float(1.0 / (1.0 + np.exp(-np.clip(logit.reshape(-1)[0], -50, 50))))
        return Mesh(landmarks_to_frame(raw.reshape(-1), m), presence)
