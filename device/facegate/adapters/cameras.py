"""Choosing the camera from config, and keeping it alive.

`open_camera(cfg)` opens the one adapter camera.source names (registry.CAMERAS: file,
v4l2, picamera2, each adapter module registering its class);
`ReopeningCamera` wraps that for the daemon: frames forever, a failed or vanished camera
reopened with exponential back-off, health for MQTT / systemd status / the watchdog.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

from ..config import CameraConfig
from ..errors import CameraError, FacegateError
from ..ports import Camera
from ..registry import CAMERAS, UnknownName
from ..types import Frame

log = logging.getLogger(__name__)


def open_camera(cfg: CameraConfig, path_override: str | None = None) -> Camera:
    """Open the camera cfg.source names (the class registry.CAMERAS holds for it, its
    `from_config`); raises CameraError with the reason.

    path_override replaces, per source: file -> cfg.path; v4l2 -> cfg.device (path or
    index); picamera2 -> the camera number ("0", "1")."""
    try:
        family = CAMERAS.get(cfg.source)
    except UnknownName as exc:
        raise CameraError(str(exc)) from None
    return family.from_config(cfg, path_override)


def describe_source(cfg: CameraConfig) -> str:
    """`<source> <where>` for messages: the file, the device, the camera number."""
    try:
        return f"{cfg.source} {CAMERAS.get(cfg.source).where(cfg)}"
    except UnknownName:
        return str(cfg.source)  # opening it says what is wrong


@dataclass(frozen=True)
class CameraHealth:
    """ok: the camera is open and delivered a frame within frame_timeout_s;
    failures: opens or reads that failed since start; last_frame_mono: clock time of the
    last frame (None before the first); last_error: the latest failure ('' if none);
    frames: frames delivered; opens: successful opens."""

    ok: bool
    failures: int
    last_frame_mono: float | None
    last_error: str
    frames: int
    opens: int

    def as_dict(self) -> dict:
        return asdict(self)


class ReopeningCamera:
    """A Camera that never ends and never raises on camera loss.

    open_fn: opens the real camera (e.g. `lambda: open_camera(cfg)`), raising on failure.
    After a failed open, a failed read or the end of the stream, it waits reopen_min_s,
    doubling up to reopen_max_s, and opens again; a delivered frame resets the wait.
    Frames keep the source's image / t_mono_s / lores; `seq` counts across reopens.
    clock (monotonic seconds) and sleep are injectable; the default sleep wakes at stop().

    Threads: iterate `frames()` in one thread; `stop()` may be called from any thread or a
    signal handler (the loop ends after the current read, bounded by the adapters' frame
    timeouts); `close()` = stop() + close the open camera, from the iterating thread or
    after the loop ended.
    """

    def __init__(self, open_fn: Callable[[], Camera], reopen_min_s: float = 0.5,
                 reopen_max_s: float = 30.0, frame_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None):
        self._open_fn = open_fn
        self.reopen_min_s = reopen_min_s
        self.reopen_max_s = max(reopen_max_s, reopen_min_s)
        self.frame_timeout_s = frame_timeout_s
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._cam: Camera | None = None
        self._seq = 0
        self.failures = 0
        self.frames_delivered = 0
        self.opens = 0
        self.last_frame_mono: float | None = None
        self.last_error = ""
        self.failing = False  # between a failure and the next delivered frame

    @classmethod
    def from_config(cls, cfg: CameraConfig, path_override: str | None = None, **kw) -> ReopeningCamera:
        """The camera from config; kw: clock / sleep for tests."""
        return cls(lambda: open_camera(cfg, path_override), cfg.reopen_min_s, cfg.reopen_max_s,
                   cfg.frame_timeout_s, **kw)

    @property
    def ok(self) -> bool:
        return (self._cam is not None and self.last_frame_mono is not None
                and self._clock() - self.last_frame_mono <= self.frame_timeout_s)

    def health(self) -> CameraHealth:
        return CameraHealth(self.ok, self.failures, self.last_frame_mono, self.last_error,
                            self.frames_delivered, self.opens)

    def frames(self) -> Iterator[Frame]:
        delay = self.reopen_min_s
        while not self._stop.is_set():
            try:
                self._cam = self._open_fn()
                self.opens += 1
                for frame in self._cam.frames():
                    self.last_frame_mono = self._clock()
                    self.frames_delivered += 1
                    if self.failing:
                        log.info("camera recovered after %d failure(s)", self.failures)
                        self.failing = False
                    delay = self.reopen_min_s
                    yield replace(frame, seq=self._seq)
                    self._seq += 1
                    if self._stop.is_set():
                        return
                error = "camera stream ended"
            except Exception as exc:  # any camera loss: reported, retried, never raised
                error = str(exc) if isinstance(exc, FacegateError) else f"{type(exc).__name__}: {exc}"
            finally:
                self._close_cam()
            if self._stop.is_set():
                return
            self.failures += 1
            self.last_error = error
            self.failing = True
            log.warning("camera failed (%s); reopening in %.1f s", error, delay)
            self._sleep(delay)
            delay = min(delay * 2, self.reopen_max_s)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        self._close_cam()

    def _close_cam(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.close()
            except Exception as exc:
                log.debug("closing the camera: %s", exc)
