"""The kiosk screen without a browser: its server answers loopback clients only and only
requests addressed to a loopback name, serves the page and a view that a reloaded page
catches up from, the preview as MJPEG, mirrored; the string table has every hint and
result in every language. (tests/test_screen_browser.py drives the page in Chromium.)"""
from __future__ import annotations

import http.client
import json
import re
import socket
import time

import numpy as np
import pytest

from facegate.config import Config, ScreenConfig
from facegate.errors import ConfigError
from facegate.events import Answered, Ready, StateChanged
from facegate.guidance import Guidance
from facegate.screen import KioskScreen
from facegate.screen.preview import encode
from facegate.screen.server import ScreenServer
from facegate.screen.strings import LANGUAGES, hint_key, result_keys, table
from facegate.screen.view import ScreenView
from facegate.types import Frame
from facegate.vocab import REASONS, Hint, State, Verdict


@pytest.fixture
def screen():
    s = KioskScreen(ScreenConfig(listen="127.0.0.1:0", result_show_s=1), "boot-1")
    s.start()
    yield s
    s.stop()


def get(screen: KioskScreen, path: str, host: str | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", screen.server.server_address[1], timeout=10)
    c.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        c.putheader("Host", host)
    c.endheaders()
    r = c.getresponse()
    body = r.read() if r.getheader("Content-Type", "").split(";")[0] != "multipart/x-mixed-replace" else r.read(4096)
    c.close()
    return r.status, dict(r.getheaders()), body


def test_the_page_and_its_parts_come_from_the_package_with_no_outside_reference(screen):
    status, headers, page = get(screen, "/")
    assert status == 200 and b'aria-live="polite"' in page and headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for part in ("/static/app.js", "/static/style.css", "/static/strings.json"):
        status, _, body = get(screen, part)
        assert status == 200 and body
        assert not re.search(rb"https?://", body), part  # nothing fetched from outside
    assert get(screen, "/etc/passwd")[0] == 404 and get(screen, "/static/../server.py")[0] == 404


def test_a_request_for_another_host_name_gets_nothing(screen):
    """DNS rebinding: a page from elsewhere whose name resolves to 127.0.0.1 cannot read it."""
    status, _, body = get(screen, "/view", host="evil.example:8080")
    assert status == 421 and body == b""
    assert get(screen, "/view", host="localhost:1")[0] == 200


def test_a_client_from_another_address_is_closed_before_a_byte():
    srv = ScreenServer.__new__(ScreenServer)  # verify_request only: no socket
    srv.refused = 0
    assert srv.verify_request(None, ("127.0.0.1", 5000)) and srv.verify_request(None, ("::1", 5000, 0, 0))
    assert not srv.verify_request(None, ("192.168.1.20", 5000)) and not srv.verify_request(None, ("::ffff:10.0.0.1", 1))
    assert srv.refused == 2


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "192.168.1.2:80", "[::]:8080", "example.com:80", "127.0.0.1"])
def test_the_config_takes_loopback_addresses_only(listen):
    with pytest.raises(ConfigError, match="screen.listen"):
        from facegate.config import parse
        parse(f'[screen]\nlisten = "{listen}"\n')
    assert Config().screen.listen == "127.0.0.1:8080" and Config().screen.enabled


def test_a_reloaded_page_catches_up_and_the_result_gives_way_to_idle(screen):
    v = screen.view
    for e in (Ready(), StateChanged(State.WAITING_FACE, None, "s"), StateChanged(State.CHALLENGE, "blink", "s"),
              Guidance("s", State.CHALLENGE, "blink", Hint.BLINK, 0.5, 0.5, 20.0, 5.0)):
        screen(e)
    doc = json.loads(get(screen, "/view")[2])  # what a page loaded now starts from
    assert (doc["screen"], doc["hint"], doc["hint_key"], doc["progress"]) == ("session", "blink", "hint.blink", 0.5)
    screen(Answered("s", "r", Verdict.NO_MATCH, "different_person"))
    screen(StateChanged(State.IDLE))
    doc = json.loads(get(screen, "/view")[2])
    assert doc["screen"] == "result" and doc["result"] == {"passed": False, "headline": "result.retry",
                                                           "reason": "reason.different_person"}
    assert "similarity" not in json.dumps(doc) and "score" not in json.dumps(doc)
    time.sleep(1.1)
    assert v.snapshot()[1]["screen"] == "idle"


def test_events_stream_the_view_to_the_page(screen):
    sock = socket.create_connection(("127.0.0.1", screen.server.server_address[1]), timeout=10)
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    screen(Ready())
    data = b""
    while b'"screen": "idle"' not in data:
        data += sock.recv(4096)
    sock.close()
    assert b"text/event-stream" in data and b"retry: 1000" in data


def test_the_preview_is_mirrored_mjpeg_scaled_to_the_configured_width(screen):
    img = np.zeros((720, 1280, 3), np.uint8)
    img[:, :100] = 255  # a white band on the left of the camera's frame
    screen.offer(Frame(img, 0.0, 1))
    status, headers, body = get(screen, "/preview.mjpg")
    assert status == 200 and headers["Content-Type"].startswith("multipart/x-mixed-replace")
    import cv2
    jpg = cv2.imdecode(np.frombuffer(encode(img, 640), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert jpg.shape == (360, 640) and jpg[:, -40:].mean() > 200 and jpg[:, :40].mean() < 30  # on the right now
    assert b"Content-Type: image/jpeg" in body and b"\xff\xd8" in body


def test_preview_streams_are_bounded(screen):
    from facegate.screen.server import MAX_VIEWERS

    screen.offer(Frame(np.zeros((480, 640, 3), np.uint8), 0.0, 1))
    port = screen.server.server_address[1]
    held = []
    for _ in range(MAX_VIEWERS):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/preview.mjpg")
        r = c.getresponse()
        assert r.status == 200
        held.append((c, r))  # a dropped response closes its stream
    deadline = time.monotonic() + 5
    while screen.preview.viewers < MAX_VIEWERS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert get(screen, "/preview.mjpg")[0] == 503
    for c, _ in held:
        c.close()


def test_the_table_has_every_hint_and_result_in_every_language():
    keys = {hint_key(h) for h in Hint} | {"idle", "idle_sub", "deciding", "offline", "starting", "seconds", "title"}
    for d in Verdict:
        if d == Verdict.REJECTED:
            continue  # no session: no result screen
        for r in REASONS[d] or {None}:
            keys |= set(result_keys(d, r)[1:])
    for lang in LANGUAGES:
        assert keys <= set(table()[lang]), (lang, sorted(keys - set(table()[lang])))
    assert result_keys(Verdict.MATCH, None)[0] and not result_keys(Verdict.SPOOF, "presentation_attack")[0]


def test_the_view_starts_as_starting_until_the_terminal_is_ready():
    v = ScreenView("zh", 5, "b")
    assert v.snapshot()[1]["screen"] == "starting" and v.snapshot()[1]["language"] == "zh"
