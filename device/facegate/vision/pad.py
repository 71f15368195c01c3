"""MiniFASNet passive presentation-attack detection (Silent-Face-Anti-Spoofing).

Each model sees the face at its own context scale: the detection box enlarged by 2.7x
(MiniFASNetV2) or 4.0x (MiniFASNetV1SE), shrunk to fit and shifted inside the frame,
resized to 80x80, BGR 0-255 without normalisation. Output: 3 logits, softmax class 1
is "real face".
"""
from __future__ import annotations

import cv2
import numpy as np

from ..ports import Runner
from .tensors import to_input

INPUT_PX = 80


def pad_box(frame_w: int, frame_h: int, box: tuple, scale: float) -> tuple[int, int, int, int]:
    """The crop (x0, y0, x1, y1) integer pixels for one model, as upstream's CropImage:
    box scaled by `scale` (less if it would not fit), shifted to stay inside the frame."""
    x0, y0, x1, y1 = box
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    scale = min((frame_h - 1) / bh, (frame_w - 1) / bw, scale)
    nw, nh = bw * scale, bh * scale
    cx, cy = x0 + bw / 2, y0 + bh / 2
    lx, ly = cx - nw / 2, cy - nh / 2
    rx, ry = cx + nw / 2, cy + nh / 2
    if lx < 0:
        rx -= lx
        lx = 0
    if ly < 0:
        ry -= ly
        ly = 0
    if rx > frame_w - 1:
        lx -= rx - frame_w + 1
        rx = frame_w - 1
    if ry > frame_h - 1:
        ly -= ry - frame_h + 1
        ry = frame_h - 1
    return int(lx), int(ly), int(rx), int(ry)


def crop_for_pad(image_bgr: np.ndarray, box: tuple, scale: float) -> np.ndarray:
    """HxWx3 uint8 BGR frame + face box -> 80x80x3 uint8 BGR crop of `pad_box`.

    Brought to 80x80 by warpAffine, not cv2.resize: OpenCV's INTER_LINEAR resize gives
    other bytes on aarch64 than on x86-64 (int8 MiniFASNet moved by up to 0.19 at an
    emulated Pi 5 core), warpAffine gives the same bytes on both."""
    h, w = image_bgr.shape[:2]
    x0, y0, x1, y1 = pad_box(w, h, box, scale)
    sx, sy = INPUT_PX / (x1 + 1 - x0), INPUT_PX / (y1 + 1 - y0)
    m = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]], np.float64)
    return cv2.warpAffine(image_bgr, m, (INPUT_PX, INPUT_PX), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def softmax_real(logits: np.ndarray) -> float:
    """p(real) from 3 logits (class 1 = real)."""
    z = logits.reshape(-1).astype(np.float64)
    e = np.exp(z - z.max())
    return float(e[1] / e.sum())


class PadModel:
    """One MiniFASNet: `score(image, box)` -> p(real) in [0, 1]."""

    def __init__(self, runner: Runner, scale: float):
        self.runner = runner
        self.scale = scale
        self.spec = runner.inputs[0]

    def score(self, image_bgr: np.ndarray, box: tuple) -> float:
        crop = crop_for_pad(image_bgr, box, self.scale)
        return softmax_real(self.runner.run(to_input(crop[None], self.spec))[0])
