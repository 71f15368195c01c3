"""The real daemon with its kiosk screen on a free loopback port, camera from a video file
and MQTT off: shared by tests/test_screen_browser.py and scripts/screen_bench.py."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from daemon_helpers import command
from facegate import config as config_mod
from facegate import daemon as daemon_mod
from facegate.adapters.null_mqtt import NullPublisher
from facegate.ports import Inbound


class Terminal:
    """The real daemon on `video` with its screen on a free loopback port (or `port`).
    `screen` adds lines to the [screen] section (e.g. preview_fps), `fusion_frames` None
    keeps the shipped default."""

    def __init__(self, tmp: Path, video: Path, backend_key, liveness: str, session_timeout_s: float = 30,
                 language: str = "en", port: int = 0, realtime: bool = False, device_id: str = "screen-1",
                 fusion_frames: int | None = 4, screen: str = ""):
        self.key = backend_key
        self.device_id = device_id
        verify = f"[verify]\nfusion_frames = {fusion_frames}\n" if fusion_frames else ""
        cfg = config_mod.parse(f'''
device_id = "{device_id}"
[camera]
source = "file"
path = "{video}"
realtime = {"true" if realtime else "false"}
[daemon]
state_dir = "{tmp}"
liveness = "{liveness}"
session_timeout_s = {session_timeout_s}
[liveness]
step_timeout_s = 10
{verify}[mqtt]
enabled = false
trusted_keys = ["{backend_key.public.hex()}"]
[screen]
listen = "127.0.0.1:{port}"
language = "{language}"
result_show_s = 30
{screen}
''')
        self.d = daemon_mod.build(cfg, publisher=NullPublisher(), service=False)
        self.frames: list[float] = []  # perf_counter() of every frame the loop handed to the screen
        offer = self.d.kiosk.preview

        def counted(frame):
            self.frames.append(time.perf_counter())
            offer(frame)
        self.d.kiosk.preview = counted
        self.thread = threading.Thread(target=self.d.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.d.ready and self.d.screen and self.d.screen.url):
            assert time.monotonic() < deadline, "the daemon did not get ready"
            time.sleep(0.05)
        self.url = self.d.screen.url

    def verify(self, reference: bytes, challenge: list[str] | None = None) -> dict:
        """Hand the daemon a signed verify command (as the MQTT adapter would)."""
        topic = f"facegate/v1/{self.device_id}/cmd/verify"
        msg, cmd = command(self.key, reference, topic=topic, challenge=challenge)
        self.d.handle_inbound(Inbound(topic, msg))
        return cmd

    def stop(self) -> None:
        self.d.request_stop()
        self.thread.join(30)
