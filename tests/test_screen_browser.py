"""The kiosk screen in a real browser: Debian's headless Chromium (scripts/chromium_cdp.py) follows
whole sessions of the real daemon (models, file camera, signed results; MQTT off) on
variants of the replay of a real person (tests/screen_videos.py), and the test asserts
what the page showed, in order, and its result screen. (scripts/screens.py takes the
screenshots of every screen in docs/screens/.)"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

import screen_videos
from screen_terminal import Terminal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from chromium_cdp import Browser, chromium_path  # noqa: E402

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")
SIZES = ((800, 480), (1920, 1080))


@pytest.fixture(scope="module")
def videos(data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("screen-videos")
    original = data_dir / "replay" / "zubair" / "live.webm"
    frames = screen_videos.original_frames(original)
    return {"live": original, "small": screen_videos.small(frames, d / "small.mp4"),
            "dark": screen_videos.dark(frames, d / "dark.mp4"), "two": screen_videos.two_faces(frames, d / "two.mp4")}


@pytest.fixture(scope="module")
def browser():
    with Browser(*SIZES[0]) as b:
        yield b


def follow(browser: Browser, term: Terminal, reference: bytes, challenge=None, shots: str | None = None,
           timeout_s: float = 240) -> list[str]:
    """Open the page, run one session, and return what the page showed (its log)."""
    browser.open(term.url)
    browser.wait("window.facegate && document.body.dataset.screen === 'idle'", 30, "the idle screen")
    term.verify(reference, challenge)
    browser.wait("document.body.dataset.screen === 'result'", timeout_s, "the result screen")
    time.sleep(0.3)
    log = browser.eval("window.facegate.log")
    print(term.url, log)  # shown with -s or when a test fails
    return log


def hints(log: list[str]) -> list[str]:
    """The hints shown in a session, each change once (before the first guidance the page
    says waiting_face's "Look into the camera")."""
    out = [e.split(":", 1)[1] for e in log if e.startswith("session:") and e != "session:waiting_face"]
    return [h for i, h in enumerate(out) if i == 0 or out[i - 1] != h]


def test_a_real_person_is_guided_through_the_turns_to_verified(tmp_path, videos, faces, backend_key, browser):
    term = Terminal(tmp_path, videos["live"], backend_key, "active")
    try:
        log = follow(browser, term, faces["ref"], ["turn_right", "turn_left"])
        shown = hints(log)
        assert log[:2] == ["starting", "idle"] or log[0] == "idle", log
        assert "turn_right" in shown and "turn_left" in shown, shown
        assert shown.index("turn_right") < shown.index("turn_left"), shown
        assert log[-1] == "result:passed:result.passed_sub", log
        assert browser.eval("document.getElementById('headline').textContent") == "Verified"
        assert browser.eval("document.getElementById('prompt').getAttribute('aria-live')") == "polite"
    finally:
        term.stop()


def test_a_person_too_far_away_is_told_to_move_closer_then_the_steps(tmp_path, videos, faces, backend_key, browser):
    term = Terminal(tmp_path, videos["small"], backend_key, "active")
    try:
        log = follow(browser, term, faces["ref"], ["turn_right", "turn_left"])
        shown = hints(log)
        assert "move_closer" in shown and "turn_right" in shown and "turn_left" in shown, shown
        assert shown.index("move_closer") < shown.index("turn_right") < shown.index("turn_left"), shown
        assert log[-1] == "result:passed:result.passed_sub", log
    finally:
        term.stop()


def test_a_person_in_the_dark_is_asked_for_more_light_and_told_to_try_again(tmp_path, videos, faces, backend_key,
                                                                            browser):
    term = Terminal(tmp_path, videos["dark"], backend_key, "none", session_timeout_s=5, language="zh")
    try:
        log = follow(browser, term, faces["ref"])
        assert hints(log) == ["more_light"], log
        assert log[-1] == "result:retry:reason.no_face_in_time", log
        # the terminal's language: the Chinese table
        assert browser.eval("document.getElementById('headline').textContent") == "请重试"
        assert browser.eval("document.documentElement.lang") == "zh-Hans"
    finally:
        term.stop()


def test_two_faces_are_asked_for_one_person_only(tmp_path, videos, faces, backend_key, browser):
    term = Terminal(tmp_path, videos["two"], backend_key, "none", session_timeout_s=5)
    try:
        log = follow(browser, term, faces["ref"])
        assert hints(log) == ["one_face_only"], log
        assert log[-1] == "result:retry:reason.no_face_in_time", log
    finally:
        term.stop()


def test_the_page_survives_a_reload_mid_session_and_a_daemon_restart(tmp_path, videos, faces, backend_key, browser):
    """A reload in the middle of a session catches up with it at once; when the daemon
    goes away the page says so, and it comes back by itself with the next daemon."""
    from broker import free_port

    port = free_port()
    term = Terminal(tmp_path / "a", videos["small"], backend_key, "active", port=port, realtime=True)
    try:
        browser.open(term.url)
        browser.wait("document.body.dataset.screen === 'idle'", 30, "the idle screen")
        term.verify(faces["ref"], ["turn_right", "turn_left"])
        browser.wait("document.body.dataset.hint === 'move_closer'", 30, "move_closer")
        browser.call("Page.reload")
        browser.wait("window.facegate && window.facegate.log.length > 0", 10, "the reloaded page")
        log = browser.wait("window.facegate.log.some(e => e.startsWith('session:')) && window.facegate.log", 5,
                           "the session again")
        assert "idle" not in log, log  # straight back into the running session
        browser.wait("document.body.dataset.screen === 'result'", 120, "the result screen")
    finally:
        term.stop()
    browser.wait("document.body.dataset.screen === 'offline'", 15, "the offline screen")
    assert browser.eval("document.getElementById('headline').textContent") == "Connecting to the terminal…"
    again = Terminal(tmp_path / "b", videos["live"], backend_key, "none", port=port)
    try:
        browser.wait("document.body.dataset.screen === 'idle'", 30, "idle with the new daemon")
        browser.wait("document.getElementById('preview').naturalWidth > 0", 15, "the new daemon's preview")
    finally:
        again.stop()


def test_demo_screen_prints_the_url_and_waits_for_the_page(tmp_path, data_dir, browser):
    """`facegate demo --screen`: the URL is told, the session starts once a page is open, and
    the page follows it to the result."""
    import re

    from facegate import demo

    video, ref = demo.replay_inputs(tmp_path, data_dir.parent)
    lines: list[str] = []
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(res=demo.run_demo(
        video, ref, tmp_path, "none", None, lines.append, screen="127.0.0.1:0")), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not any("kiosk screen: open" in line for line in lines):
        assert time.monotonic() < deadline and t.is_alive(), lines
        time.sleep(0.05)
    url = re.search(r"open (http://127\.0\.0\.1:\d+/)", "\n".join(lines)).group(1)
    time.sleep(1.0)
    assert not any("waiting_face" in line for line in lines), lines  # no page yet: no session
    browser.open(url)
    browser.wait("document.body.dataset.screen === 'result'", 120, "the demo's result screen")
    assert browser.eval("window.facegate.log").count("result:passed:result.passed_sub") == 1
    t.join(60)
    assert box["res"].payload["decision"] == "match"
