"""Raspberry Pi cameras through picamera2 (libcamera).

picamera2 comes from apt (python3-picamera2) on Raspberry Pi OS, so the venv must be made
with --system-site-packages; it is imported only when this camera is opened.

Frame times come from the sensor, not from when Python got the frame: each frame's image,
lores copy and time are taken from one completed request (`capture_request`,
`make_array`, `get_metadata`, then `release`). Its metadata's `SensorTimestamp` is an
int64 in nanoseconds: libcamera documents it (control_ids_core.yaml) as the start of
exposure of the first row, counted by CLOCK_BOOTTIME; the Raspberry Pi pipelines (vc4 on
a Pi 4, pisp on a Pi 5) fill it with the V4L2 buffer timestamp, which the unicam / CFE
drivers take with the kernel's CLOCK_MONOTONIC at frame start. The two clocks differ only
by time spent in system suspend, which a Pi does not do, and Python's `time.monotonic()`
is CLOCK_MONOTONIC on Linux. So Frame.t_mono_s = SensorTimestamp / 1e9, in the base of
`time.monotonic()`. A stamp that cannot be in that base (more than 50 ms after the moment
the frame was received, or more than STAMP_MAX_AGE_S before it) re-anchors: from then on
t_mono_s = receipt time of that frame + sensor time elapsed since it (the intervals stay
the sensor's, only the origin moves; logged). A pipeline without SensorTimestamp gets
receipt times (logged once).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from ..config import CameraConfig
from ..errors import CameraError
from ..registry import CAMERAS
from ..types import Frame
from ..vocab import CameraSource

log = logging.getLogger("facegate.camera")
STAMP_MAX_AGE_S = 2.0  # exposure start to receipt: exposure, read-out, ISP and queued buffers
STAMP_AHEAD_S = 0.05  # slack for a stamp after the receipt clock (clock read granularity)


@CAMERAS.register(CameraSource.PICAMERA2)
class Picamera2Camera:
    """One Pi camera, configured once with two streams of the same request:
    `main` (cfg.width x cfg.height, "RGB888" = B,G,R bytes) -> Frame.image HxWx3 uint8 BGR,
    `lores` (cfg.lores_width x cfg.lores_height, YUV420 so it works on a Pi 4 as well as a
    Pi 5) -> Frame.lores hxwx3 uint8 BGR, for detection.

    camera_num: which camera (a Pi 5 may have two); picamera2_cls: the Picamera2 class
    or a factory taking the camera number (default: imported from picamera2; tests pass a
    fake); clock: the receipt clock, time.monotonic's base, against which each frame's
    SensorTimestamp is checked (see the module docstring).
    Raises CameraError when picamera2 is missing, no camera answers, or a frame takes
    longer than cfg.frame_timeout_s.
    """

    def __init__(self, cfg: CameraConfig, camera_num: int = 0, picamera2_cls=None,
                 clock: Callable[[], float] = time.monotonic):
        if cfg.lores_width > cfg.width or cfg.lores_height > cfg.height:
            raise CameraError(f"camera.lores_width x lores_height ({cfg.lores_width}x{cfg.lores_height}) "
                              f"must not exceed width x height ({cfg.width}x{cfg.height})")
        self.cfg = cfg
        self._clock = clock
        self._closed = False
        self._offset_s = 0.0  # added to SensorTimestamp / 1e9 to get Frame.t_mono_s
        self._warned_no_stamp = False
        factory = picamera2_cls or _picamera2_class()
        try:
            self._cam = factory(camera_num)
        except Exception as exc:  # picamera2 raises RuntimeError / IndexError when absent
            raise CameraError(f"no Pi camera {camera_num}: {exc} (see `rpicam-hello --list-cameras`)") from None
        try:
            config = self._cam.create_video_configuration(
                main={"size": (cfg.width, cfg.height), "format": "RGB888"},
                lores={"size": (cfg.lores_width, cfg.lores_height), "format": "YUV420"},
                controls={"FrameRate": float(cfg.fps)}, display=None, encode=None)
            self._cam.configure(config)
            # libcamera may align sizes; convert with what was granted
            granted = (getattr(self._cam, "camera_config", None) or {}).get("lores", {}).get("size")
            self.lores_size = tuple(granted) if granted else (cfg.lores_width, cfg.lores_height)
            self._cam.start()
        except Exception as exc:
            self._close_cam()
            raise CameraError(f"Pi camera {camera_num} could not be configured / started: {exc}") from None

    @classmethod
    def from_config(cls, cfg: CameraConfig, override: str | None = None) -> Picamera2Camera:
        """camera.source = "picamera2": camera 0, or the number override names ("0", "1")."""
        num = override or "0"
        if not num.isdigit():
            raise CameraError(f"picamera2: camera number expected, got {num!r}")
        return cls(cfg, camera_num=int(num))

    @staticmethod
    def where(cfg: CameraConfig) -> str:
        return "camera 0"

    def __enter__(self) -> Picamera2Camera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self) -> Iterator[Frame]:
        seq = 0
        while not self._closed:
            try:
                job = self._cam.capture_request(wait=False)
                request = self._cam.wait(job, timeout=self.cfg.frame_timeout_s)
            except TimeoutError:
                raise CameraError(f"Pi camera: no frame within {self.cfg.frame_timeout_s:g} s") from None
            except Exception as exc:
                if self._closed:
                    return
                raise CameraError(f"Pi camera capture failed: {exc}") from None
            try:
                received = self._clock()
                metadata = request.get_metadata()
                main = request.make_array("main")  # copies out of the DMA buffer
                yuv = request.make_array("lores")
            finally:
                request.release()  # back to the camera at once
            t = self.frame_time(metadata, received)
            yield Frame(np.ascontiguousarray(main[:, :, :3]), t, seq, lores=yuv420_to_bgr(yuv, *self.lores_size))
            seq += 1

    def frame_time(self, metadata: object, received: float) -> float:
        """Frame.t_mono_s (seconds, time.monotonic's base) of a request whose metadata
        came with it at `received` (the receipt clock): its SensorTimestamp (int ns) / 1e9
        plus the current offset (0 unless the stamps had to be re-anchored)."""
        ns = metadata.get("SensorTimestamp") if isinstance(metadata, dict) else None
        if not isinstance(ns, int) or isinstance(ns, bool) or ns <= 0:
            if not self._warned_no_stamp:
                log.warning("Pi camera: no SensorTimestamp in the request metadata; frames are timed on receipt")
                self._warned_no_stamp = True
            return received
        t = ns / 1e9 + self._offset_s
        if not -STAMP_AHEAD_S <= received - t <= STAMP_MAX_AGE_S:
            log.warning("Pi camera: SensorTimestamp %.3f s is not in the monotonic clock (received at %.3f s); "
                        "frame times re-anchored at this frame", t, received)
            self._offset_s = received - ns / 1e9
            t = received
        return t

    def close(self) -> None:
        self._closed = True
        self._close_cam()

    def _close_cam(self) -> None:
        cam, self._cam = getattr(self, "_cam", None), None
        if cam is None:
            return
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception:
                pass


def _picamera2_class():
    """picamera2.Picamera2, imported only when a Pi camera is opened."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise CameraError(f"picamera2 is not importable ({exc}); on Raspberry Pi OS: apt install "
                          "python3-picamera2, and make the venv with --system-site-packages") from None
    return Picamera2


def yuv420_to_bgr(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """picamera2's YUV420 (I420) array, shape (height * 3 / 2, stride) uint8, to
    height x width x 3 uint8 BGR (the stride padding on the right is cut off)."""
    bgr = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
    return np.ascontiguousarray(bgr[:height, :width])
