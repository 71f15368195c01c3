"""USB / V4L2 webcams through OpenCV's V4L2 backend."""
from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from ..config import CameraConfig
from ..errors import CameraError
from ..registry import CAMERAS
from ..types import Frame
from ..vocab import CameraSource


def parse_device(device: str) -> int | str:
    """'0' -> 0; '/dev/video2' or a /dev/v4l/by-id/... link to it -> 2; any other path as is."""
    device = device.strip()
    if device.isdigit():
        return int(device)
    m = re.fullmatch(r"/dev/video(\d+)", os.path.realpath(device))
    return int(m.group(1)) if m else device


@CAMERAS.register(CameraSource.V4L2)
class OpenCVCamera:
    """A webcam: device path (/dev/video0, /dev/v4l/by-id/...) or index, opened at once.

    Raises CameraError at construction when the device does not exist, is not accessible
    or cannot be opened; `frames()` raises CameraError when a read fails or times out
    (cfg.frame_timeout_s). Frame: image HxWx3 uint8 BGR at the size the camera granted
    (asked: cfg.width x cfg.height at cfg.fps), t_mono_s = time.monotonic() after the read.
    """

    def __init__(self, cfg: CameraConfig, device: str | None = None,
                 clock: Callable[[], float] = time.monotonic, backend: int | None = None):
        self.cfg = cfg
        self.device = device if device is not None else cfg.device
        self._clock = clock
        self._closed = False
        dev = parse_device(self.device)
        node = f"/dev/video{dev}" if isinstance(dev, int) else dev
        if sys.platform.startswith("linux"):
            if not os.path.exists(node):
                raise CameraError(f"V4L2 device {node} does not exist (camera.device = {self.device!r}; "
                                  "is the webcam plugged in? see `ls /dev/video*`)")
            if not os.access(node, os.R_OK | os.W_OK):
                raise CameraError(f"V4L2 device {node}: permission denied (is this user in the 'video' group?)")
        self.name = node
        if backend is None:  # another (cv2.CAP_FFMPEG): a video file through this path (the contract tests)
            backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        self._cap: cv2.VideoCapture | None
        try:
            # no open parameters: OpenCV's V4L2 backend refuses CAP_PROP_OPEN_TIMEOUT_MSEC
            # ("Failed to apply invalid or unsupported parameter: [53]") and then never opens
            # the device - seen on a real /dev/video0 (vivid) in vm-check, OpenCV 5.1.0
            self._cap = cv2.VideoCapture(dev, backend)
        except cv2.error as exc:
            raise CameraError(f"cannot open {node}: {exc}") from None
        if not self._cap.isOpened():
            self._cap.release()
            raise CameraError(f"cannot open {node} as a V4L2 capture device")
        # MJPG lets most USB webcams deliver 720p at 15+ fps over USB 2
        self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self._cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale queue
        self._cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.frame_timeout_s * 1000))  # where supported

    @classmethod
    def from_config(cls, cfg: CameraConfig, override: str | None = None) -> OpenCVCamera:
        """camera.source = "v4l2": cfg.device (or override: a path or an index)."""
        return cls(cfg, device=override or None)

    @staticmethod
    def where(cfg: CameraConfig) -> str:
        return cfg.device

    def __enter__(self) -> OpenCVCamera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self) -> Iterator[Frame]:
        seq = 0
        while not self._closed:
            cap = self._cap
            if cap is None:  # closed meanwhile
                return
            ok, img = cap.read()
            if self._closed:
                return
            if not ok or img is None or img.size == 0:
                raise CameraError(f"{self.name}: no frame within {self.cfg.frame_timeout_s:g} s "
                                  "(camera unplugged or stalled)")
            yield Frame(to_bgr(img), self._clock(), seq)
            seq += 1

    def close(self) -> None:
        self._closed = True
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def to_bgr(img: np.ndarray) -> np.ndarray:
    """Grey (HxW or HxWx1) or BGRA to HxWx3 uint8 BGR; BGR passes through."""
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img
