"""File camera: an image, a folder of images, or a video file as the frame source.

The source for tests, demos, replays and benchmarks. Videos are decoded by OpenCV
(FFmpeg inside the wheel); frame times come from the file's own timestamps, so a replay
is deterministic whether it runs in real time or as fast as possible.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2

from ..config import CameraConfig
from ..errors import CameraError, InputError
from ..imageio import IMAGE_SUFFIXES, read_image
from ..quiet import quiet_stderr
from ..registry import CAMERAS
from ..types import Frame
from ..vocab import CameraSource


@CAMERAS.register(CameraSource.FILE)
class FileCamera:
    """Frames from `path`. fps: frame rate assumed for images and folders;
    realtime: sleep so frames come at their own timestamps; loop: start over at the end."""

    def __init__(self, path: str | Path, fps: float = 15.0, realtime: bool = False,
                 loop: bool = False, max_bytes: int = 200_000_000, max_pixels: int = 40_000_000):
        self.path = Path(path)
        self.fps = fps
        self.realtime = realtime
        self.loop = loop
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self._cap: cv2.VideoCapture | None = None
        self._closed = False
        if not self.path.exists():
            raise InputError(f"{self.path} does not exist")
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise InputError(f"{self.path.name} is empty")
        if self.path.is_file() and self.path.stat().st_size > max_bytes:
            raise InputError(f"{self.path.name} is too large ({self.path.stat().st_size} bytes)")

    @classmethod
    def from_config(cls, cfg: CameraConfig, override: str | None = None) -> FileCamera:
        """camera.source = "file": cfg.path (or override); CameraError with the reason."""
        path = override or cfg.path
        if not path:
            raise CameraError('camera.source = "file" needs camera.path')
        try:
            return cls(path, fps=cfg.fps, realtime=cfg.realtime, loop=cfg.loop)
        except InputError as exc:
            raise CameraError(f"file camera: {exc}") from None

    @staticmethod
    def where(cfg: CameraConfig) -> str:
        return cfg.path

    def __enter__(self) -> FileCamera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _images(self) -> Iterator[tuple]:
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"{self.path} holds no images")
        else:
            files = [self.path]
        for i, f in enumerate(files):
            yield read_image(f, self.max_bytes, self.max_pixels), i / self.fps

    def _video(self) -> Iterator[tuple]:
        with quiet_stderr():  # FFmpeg prints its own lines on unreadable files
            self._cap = cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise InputError(f"{self.path.name} is not a readable image or video")
        fps = cap.get(cv2.CAP_PROP_FPS) or self.fps
        i = 0
        while not self._closed:
            ok, img = cap.read()
            if not ok or img is None:
                break
            if img.shape[0] * img.shape[1] > self.max_pixels:
                raise InputError(f"{self.path.name}: frames too large ({img.shape[1]}x{img.shape[0]})")
            t_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            yield img, (t_ms / 1000.0 if t_ms > 0 or i == 0 else i / fps)
            i += 1
        if i == 0:
            raise InputError(f"{self.path.name} is not a readable image or video")

    def frames(self) -> Iterator[Frame]:
        """Yield Frame(image BGR uint8, t_mono_s from the file's timestamps, seq)."""
        is_images = self.path.is_dir() or self.path.suffix.lower() in IMAGE_SUFFIXES
        seq = 0
        offset = 0.0
        start = time.monotonic()
        while not self._closed:
            last_t = 0.0
            for img, t in (self._images() if is_images else self._video()):
                if self._closed:
                    return
                if self.realtime:
                    delay = start + offset + t - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield Frame(img, offset + t, seq)
                seq += 1
                last_t = t
            if not self.loop:
                return
            offset += last_t + 1.0 / self.fps
            if self._cap is not None:
                self._cap.release()
                self._cap = None
