"""The kiosk page's server: stdlib http.server, one thread per client, bound to a loopback
address only (config.ScreenConfig.listen) and refusing any client that is not on this
machine before reading a byte of its request (verify_request), and any request naming
another host (DNS rebinding). Routes:

- `/`, `/static/{app.js,style.css,strings.json}`: the page, shipped as package resources;
- `/view`: the view (view.ScreenView) as JSON, `/events`: the same as server-sent events;
- `/preview.mjpg`: the live preview as MJPEG (preview.py), at most preview_fps, to at most
  MAX_VIEWERS streams at once (the CPU it takes from the frame loop stays bounded).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from .preview import Preview, encode
from .view import ScreenView

log = logging.getLogger("facegate.screen")

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8"),
          "/static/strings.json": ("strings.json", "application/json; charset=utf-8")}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; img-src 'self'; connect-src 'self'; "
                                      "frame-ancestors 'none'"}
HEARTBEAT_S = 10.0
MAX_VIEWERS = 3  # preview streams at once: each encodes its own frames


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class ScreenServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], view: ScreenView, preview: Preview, fps: float, width: int):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.view, self.preview, self.fps, self.width = view, preview, fps, width
        self.stopping = threading.Event()
        self.encode_ms: list[float] = []  # per preview frame sent (the last 1000)
        self.refused = 0  # connections from other addresses
        self.watching = 0  # pages following the view (/events) now
        super().__init__(address, _Handler)

    def verify_request(self, request, client_address) -> bool:
        if is_loopback(str(client_address[0])):
            return True
        self.refused += 1
        return False  # closed without a byte

    def static(self, name: str) -> bytes:
        return resources.files(__package__).joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: ScreenServer
    server_version = "facegate-screen"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        log.debug("%s %s", self.address_string(), format % args)

    def _head(self, code: int, ctype: str, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in HEADERS.items():
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in LOOPBACK_NAMES

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if not self._host_ok():
            self._head(421, "text/plain", 0)
            return
        path = urlsplit(self.path).path
        try:
            if path in STATIC:
                name, ctype = STATIC[path]
                body = self.server.static(name)
                self._head(200, ctype, len(body))
                self.wfile.write(body)
            elif path == "/view":
                body = json.dumps(self.server.view.snapshot()[1]).encode()
                self._head(200, "application/json", len(body))
                self.wfile.write(body)
            elif path == "/events":
                self._events()
            elif path == "/preview.mjpg":
                self._preview()
            else:
                self._head(404, "text/plain", 0)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away

    def _events(self) -> None:
        self._head(200, "text/event-stream")
        self.wfile.write(b"retry: 1000\n\n")
        version, last = -1, time.monotonic()
        self.server.watching += 1
        try:
            self._follow(version, last)
        finally:
            self.server.watching -= 1

    def _follow(self, version: int, last: float) -> None:
        while not self.server.stopping.is_set():
            v, doc = self.server.view.wait(version, 1.0)
            if v != version:
                version = v
                self.wfile.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
            elif time.monotonic() - last < HEARTBEAT_S:
                continue
            else:
                self.wfile.write(b": alive\n\n")
            self.wfile.flush()
            last = time.monotonic()

    def _preview(self) -> None:
        srv, n, sent, jpg = self.server, 0, 0.0, b""
        if srv.preview.viewers >= MAX_VIEWERS:
            self._head(503, "text/plain", 0)
            return
        self._head(200, "multipart/x-mixed-replace; boundary=frame")
        self.wfile.write(b"--frame\r\n")
        srv.preview.viewers += 1
        try:
            while not srv.stopping.is_set():
                wait = sent + 1.0 / srv.fps - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                n, frame = srv.preview.next(n, 1.0)
                if frame is not None:
                    t0 = time.perf_counter()
                    jpg = encode(frame.image, srv.width)
                    srv.encode_ms = (srv.encode_ms + [(time.perf_counter() - t0) * 1000])[-1000:]
                elif not jpg:
                    continue
                # else no new frame for a second: the last one again (a browser shows a part only
                # once the next one begins, and a still camera must show too)
                # each part ends with the next boundary: a browser shows a part once it sees that
                self.wfile.write(b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg))
                self.wfile.write(jpg + b"\r\n--frame\r\n")
                self.wfile.flush()
                sent = time.monotonic()
        finally:
            srv.preview.viewers -= 1
