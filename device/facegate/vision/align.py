"""5-point similarity alignment onto the embedding model's canonical 112x112 crop."""
from __future__ import annotations

import cv2
import numpy as np

from .geometry import similarity_transform
from .mesh import LEFT_EYE_RING, MOUTH_LEFT, MOUTH_RIGHT, NOSE_TIP, RIGHT_EYE_RING

CROP_PX = 112
# ArcFace / SFace template: image-left eye, image-right eye, nose tip, mouth corners.
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


# Mesh landmarks used for alignment: eye corners and lids, nose bridge and tip, mouth
# corners and lip centres, chin (stable under expression more than the lips).
MESH_POINTS = (33, 133, 159, 145, 362, 263, 386, 374, 168, 6, 1, 4, 61, 291, 0, 17, 152)

# Where those points sit in SFace's crop, from scripts/fit_mesh_template.py (faces
# aligned by YuNet's five points, SFace's reference alignment, then averaged).
# Fitted on 266 faces
MESH_TEMPLATE = np.array([
    [27.361, 53.650],
    [44.315, 54.216],
    [34.742, 50.838],
    [35.619, 56.054],
    [65.694, 53.826],
    [82.688, 52.663],
    [75.164, 50.096],
    [74.498, 55.354],
    [54.849, 49.684],
    [54.943, 54.824],
    [55.324, 75.943],
    [55.245, 72.025],
    [40.122, 92.933],
    [71.429, 92.467],
    [55.591, 88.697],
    [55.831, 99.114],
    [56.196, 116.362],
], dtype=np.float64)


def mesh_points(points: np.ndarray) -> np.ndarray:
    """468x3 mesh landmarks -> Kx2 float32, the MESH_POINTS subset in frame pixels."""
    return points[list(MESH_POINTS), :2].astype(np.float32)


def five_points(points: np.ndarray) -> np.ndarray:
    """468x3 mesh landmarks -> 5x2 float32 (eye centres, nose tip, mouth corners), in
    the template's order."""
    return np.stack([
        points[list(RIGHT_EYE_RING), :2].mean(0),
        points[list(LEFT_EYE_RING), :2].mean(0),
        points[NOSE_TIP, :2],
        points[MOUTH_RIGHT, :2],
        points[MOUTH_LEFT, :2],
    ]).astype(np.float32)


def align(image_bgr: np.ndarray, pts: np.ndarray, template: np.ndarray = MESH_TEMPLATE) -> np.ndarray:
    """Warp the face so that pts (Kx2 frame pixels) land on `template` (Kx2 crop
    pixels) in the least-squares similarity sense. Returns 112x112x3 uint8 RGB."""
    m = similarity_transform(pts, template)
    crop = cv2.warpAffine(image_bgr, m, (CROP_PX, CROP_PX), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
