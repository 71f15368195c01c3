"""ID-chip-like portraits: what the chip of an identity card holds, made from a photo.

An ID card's chip stores a small, heavily compressed passport-style portrait (the Chinese
second-generation card: 102x126 pixels in a few KB). The calibration of the match policy
(scripts/calibrate.py) turns LFW photos into such portraits so that its false-match and
false-non-match rates are those of the references a terminal really receives.
Pure functions: numpy arrays in, bytes or arrays out.
"""
from __future__ import annotations

import cv2
import numpy as np

CHIP_SIZE = (102, 126)  # width, height in pixels
# Passport framing around a detected face box (BlazeFace: brows to chin, cheek to cheek):
# the crop is this many box widths wide, and the box centre sits at this fraction of the
# crop's height from its top (ICAO-style head and shoulders, the face filling most of it).
CHIP_WIDTH_BOXES = 1.7
CHIP_CENTRE_Y = 0.52


def passport_crop(image: np.ndarray, box: tuple[float, float, float, float],
                  size: tuple[int, int] = CHIP_SIZE) -> np.ndarray:
    """The head-and-shoulders crop of `image` (HxWx3 uint8) around the face `box` (x0, y0,
    x1, y1 in image pixels), resized to `size` (w, h) -> (h, w, 3) uint8. Parts of the crop
    outside the image repeat its border (as a card photo's plain background would)."""
    x0, y0, x1, y1 = box
    bw = max(x1 - x0, 1.0)
    cw = bw * CHIP_WIDTH_BOXES
    ch = cw * size[1] / size[0]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = cx - cw / 2, cy - CHIP_CENTRE_Y * ch
    sx, sy = size[0] / cw, size[1] / ch
    m = np.array([[sx, 0, -left * sx], [0, sy, -top * sy]], np.float32)
    # warpAffine with INTER_AREA-like smoothing: blur first when shrinking a lot
    shrink = 1.0 / min(sx, sy)
    src = image
    if shrink > 1.5:
        k = int(shrink) | 1
        src = cv2.GaussianBlur(image, (k, k), 0)
    return cv2.warpAffine(src, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def jpeg_under(image: np.ndarray, max_bytes: int) -> tuple[bytes, int]:
    """`image` (HxWx3 uint8) as the best-quality baseline JPEG of at most `max_bytes`
    bytes: (the bytes, the JPEG quality used, 1-100). The lowest quality is used when even
    it does not fit (a tiny budget)."""
    lo, hi, best = 1, 95, None
    while lo <= hi:
        q = (lo + hi) // 2
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise ValueError("JPEG encoding failed")
        if len(buf) <= max_bytes:
            best, lo = (buf.tobytes(), q), q + 1
        else:
            hi = q - 1
    if best is None:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 1])
        best = (buf.tobytes(), 1)
    return best


def chip_portrait(image: np.ndarray, box: tuple[float, float, float, float], max_bytes: int) -> bytes:
    """An ID-chip-like portrait of the face `box` in `image`: the passport crop at 102x126
    as a JPEG of at most `max_bytes` bytes."""
    return jpeg_under(passport_crop(image, box), max_bytes)[0]
