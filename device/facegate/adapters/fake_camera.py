"""FakeCamera: ports.Camera from images in memory, for tests and demos without a file.

Frames come at 1/fps of their own time (t_mono_s = t0_s + seq / fps: deterministic, as a
replayed file's), the same images in turn, for `count` frames (None: forever). A test
tells it what the camera does, as gpiozero's mock pins are told: `unplug()` makes the next
read raise CameraError, as a real camera that vanished. Chosen only by name, never as a
fallback (it is not a camera.source).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import CameraError
from ..types import Frame


class FakeCamera:
    """images: HxWx3 uint8 BGR arrays, shown in turn; fps: frame rate of the frame times."""

    def __init__(self, images: Sequence[np.ndarray], fps: float = 15.0, count: int | None = None,
                 t0_s: float = 0.0):
        if not images or any(i.ndim != 3 or i.shape[2] != 3 or i.dtype != np.uint8 for i in images):
            raise ValueError("FakeCamera needs HxWx3 uint8 images")
        self.images = [np.ascontiguousarray(i) for i in images]
        self.fps, self.count, self.t0_s = fps, count, t0_s
        self.delivered = 0
        self._closed = threading.Event()
        self._unplugged = False

    def unplug(self) -> None:
        """The camera is gone: the next read raises CameraError."""
        self._unplugged = True

    def frames(self) -> Iterator[Frame]:
        seq = 0
        while not self._closed.is_set() and (self.count is None or seq < self.count):
            if self._unplugged:
                raise CameraError("fake camera unplugged")
            image = self.images[seq % len(self.images)]
            self.delivered += 1
            yield Frame(image.copy(), self.t0_s + seq / self.fps, seq)
            seq += 1

    def close(self) -> None:
        self._closed.set()
