"""The kiosk screen: what the person at the terminal sees -- a mirrored live preview with
a face oval, one hint or step prompt in large type, a countdown, progress, the result and
an idle screen -- served as plain HTML/CSS/JS (static/, no build step, nothing fetched
from outside) to a browser on this machine only. `KioskScreen` is one sink of the
terminal's events (events.py) and a service the daemon starts and stops."""
from __future__ import annotations

import logging
import threading

from ..config import ScreenConfig
from ..events import Event
from ..types import Frame
from .preview import Preview
from .server import ScreenServer
from .view import ScreenView

log = logging.getLogger("facegate.screen")


class KioskScreen:
    """sink: told the terminal's events; offer(frame): the newest frame for the preview;
    start() / stop(): the loopback server (a port in use is logged, the daemon goes on
    without its screen); url: where the page is, once started."""

    def __init__(self, cfg: ScreenConfig, boot: str):
        self.cfg = cfg
        self.view = ScreenView(cfg.language, cfg.result_show_s, boot)
        self.preview = Preview()
        self.server: ScreenServer | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, event: Event) -> None:
        self.view(event)

    def offer(self, frame: Frame) -> None:
        self.preview.offer(frame)

    @property
    def url(self) -> str | None:
        if self.server is None:
            return None
        host, port = self.cfg.host_port[0], self.server.server_address[1]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    @property
    def watched(self) -> bool:
        """A page follows the view now."""
        return self.server is not None and self.server.watching > 0

    def start(self) -> None:
        host, port = self.cfg.host_port
        try:
            self.server = ScreenServer((host, port), self.view, self.preview, self.cfg.preview_fps,
                                       self.cfg.preview_width)
        except OSError as exc:
            log.error("kiosk screen: cannot listen on %s: %s (running without it)", self.cfg.listen, exc)
            return
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="facegate-screen", daemon=True)
        self._thread.start()
        log.info("kiosk screen on %s", self.url)

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self.preview.clear()
