"""The live preview: the newest frame the daemon already has (a session's frames, or the
idle feed's), mirrored, scaled down and JPEG-encoded for the page on demand. Frames are
held by reference in memory only: nothing is written anywhere, and only the loopback
server (server.py) ever asks for them."""
from __future__ import annotations

import threading

import cv2
import numpy as np

from ..types import Frame

JPEG_QUALITY = 70


def encode(image: np.ndarray, max_width: int) -> bytes:
    """A BGR uint8 frame, mirrored (the person sees themselves as in a mirror) and scaled
    to at most max_width pixels wide, as JPEG bytes."""
    h, w = image.shape[:2]
    if w > max_width:
        image = cv2.resize(image, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", cv2.flip(image, 1), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return jpg.tobytes()


class Preview:
    """offer(frame): the daemon's hand-over, cheap (a reference and a notify); next(): the
    newest frame after the one a viewer has, waiting up to timeout_s."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._n = 0
        self.viewers = 0  # preview streams open now

    def offer(self, frame: Frame) -> None:
        with self._cond:
            self._frame, self._n = frame, self._n + 1
            self._cond.notify_all()

    def next(self, after: int, timeout_s: float) -> tuple[int, Frame | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._n > after, timeout_s)
            return self._n, (self._frame if self._n > after else None)

    def clear(self) -> None:
        """Forget the last frame (a session's frames die with it)."""
        with self._cond:
            self._frame = None
