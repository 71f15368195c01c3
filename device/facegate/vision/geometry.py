"""Small pure geometry helpers shared by the vision stages."""
from __future__ import annotations

import numpy as np


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to Nx2 (or Nx3, x/y only) points; returns Nx2 float32."""
    xy = pts[:, :2].astype(np.float64)
    return (xy @ m[:, :2].T + m[:, 2]).astype(np.float32)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (float64)."""
    a = np.vstack([m.astype(np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(a)[:2]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection)
    mapping Nx2 src onto Nx2 dst (Umeyama 1991). Returns a 2x3 float64 matrix."""
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    r = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / len(src)
    scale = (sig * d).sum() / var_s
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def rotated_square(cx: float, cy: float, size: float, angle_rad: float, out_px: int) -> np.ndarray:
    """2x3 matrix that maps a square of side `size` centred on (cx, cy), whose x axis
    points along `angle_rad` (image coordinates, y down), onto an upright out_px crop:
    crop = S * R(-angle) * (p - centre) + out_px / 2."""
    s = out_px / size
    c, si = np.cos(angle_rad) * s, np.sin(angle_rad) * s
    return np.array([[c, si, out_px / 2 - c * cx - si * cy],
                     [-si, c, out_px / 2 + si * cx - c * cy]], dtype=np.float64)


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
