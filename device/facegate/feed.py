"""The newest camera frame, kept by its own thread: the daemon reads it when idle (camera
health, systemd watchdog) and during sessions on a live camera."""
from __future__ import annotations

import threading
import time
from collections import deque

from .types import Frame


class FrameFeed:
    """Keeps the newest frame of a never-ending camera (adapters.cameras.ReopeningCamera,
    which reopens a failed camera with back-off) on its own thread. max_fps: read at most
    this often (the idle rate)."""

    def __init__(self, camera, max_fps: float | None = None):
        self.camera = camera
        self.max_fps = max_fps
        self._latest: Frame | None = None
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._times: deque = deque(maxlen=60)
        self._thread = threading.Thread(target=self._run, name="facegate-camera", daemon=True)

    def start(self) -> FrameFeed:
        self._thread.start()
        return self

    @property
    def ok(self) -> bool:
        return bool(self.camera.ok)

    def health(self) -> dict:
        return {**self.camera.health().as_dict(), "fps": round(self.fps, 1)}

    @property
    def fps(self) -> float:
        ts = list(self._times)
        return 0.0 if len(ts) < 2 or ts[-1] == ts[0] else (len(ts) - 1) / (ts[-1] - ts[0])

    def _run(self) -> None:
        for frame in self.camera.frames():
            now = time.monotonic()
            with self._cv:
                self._latest = frame
                self._times.append(now)
                self._cv.notify_all()
            if self._stop.is_set():
                break
            if self.max_fps:
                self._stop.wait(max(0.0, 1.0 / self.max_fps - (time.monotonic() - now)))

    def next(self, after: Frame | None, timeout_s: float) -> Frame | None:
        """The newest frame if it is not `after` (the one seen last), else wait for one;
        None on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while not self._stop.is_set():
                f = self._latest
                if f is not None and f is not after:
                    return f
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
        return None

    def stop(self) -> None:
        self._stop.set()
        self.camera.stop()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout=10)
        self.camera.close()
