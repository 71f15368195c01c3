"""Variants of the replay of a real person (data/replay/zubair/live.webm) for following the
kiosk's guidance through whole sessions: the same timestamps, so the challenge's turns
come where they do in the original. Written as MPEG-4 at 15 fps (what the file camera
reads); every frame is derived from the original's, nothing else is added."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FPS = 15
SMALL_CANVAS = (640, 360)  # width, height
SMALL_START, SMALL_END = 0.17, 0.667  # scale of the original: eye distance ~12 px (too small), then ~49 px
SMALL_HOLD_S, SMALL_GROW_S = 2.5, 2.5
DARK_GAIN = 0.12  # mean face grey ~8 (< verify.min_brightness 35): too dark, still detected


def original_frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def _write(frames: list[np.ndarray], path: Path) -> Path:
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (w, h))
    assert out.isOpened(), f"OpenCV cannot write {path}"
    for f in frames:
        out.write(f)
    out.release()
    return path


def _centred(image: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    W, H = size
    canvas = np.full((H, W, 3), 128, np.uint8)
    s = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = s.shape[:2]
    y, x = (H - h) // 2, (W - w) // 2
    hh, ww = min(h, H), min(w, W)
    canvas[max(y, 0):max(y, 0) + hh, max(x, 0):max(x, 0) + ww] = s[max(-y, 0):max(-y, 0) + hh, max(-x, 0):max(-x, 0) + ww]
    return canvas


def small(frames: list[np.ndarray], path: Path) -> Path:
    """The person far away (face too small for SMALL_HOLD_S), then coming closer."""
    out = []
    for i, f in enumerate(frames):
        t = i / FPS
        k = SMALL_START + (SMALL_END - SMALL_START) * min(max((t - SMALL_HOLD_S) / SMALL_GROW_S, 0.0), 1.0)
        out.append(_centred(f, k, SMALL_CANVAS))
    return _write(out, path)


def dark(frames: list[np.ndarray], path: Path) -> Path:
    return _write([(f * DARK_GAIN).astype(np.uint8) for f in frames], path)


def two_faces(frames: list[np.ndarray], path: Path) -> Path:
    """Two copies of the person side by side: neither face dominates."""
    out = []
    for f in frames:
        crop = f[150:540, 280:680]
        c = np.full((540, 960, 3), 128, np.uint8)
        c[75:465, 80:480], c[75:465, 480:880] = crop, crop
        out.append(c)
    return _write(out, path)
