"""The button (gpio.button_pin) cancels: pressed during a session it ends that session at
once, decided error / cancelled (signed like any result, no relay pulse); pressed while
idle it does nothing, and a press before a session does not end the next one. The daemon
in process, MQTT off, gpiozero's MockFactory pins."""
from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from gpiozero.pins.mock import MockFactory

from facegate import config as config_mod
from facegate import daemon as daemon_mod
from facegate import signing
from facegate.ports import Inbound
from facegate.vocab import Failure, Verdict

BUTTON, RELAY, PASS, FAIL = 27, 17, 13, 19


@pytest.fixture
def terminal(tmp_path, faces, backend_key, model_dir):
    MockFactory().reset()
    cfg = config_mod.parse(f'''
device_id = "button-1"
[camera]
source = "file"
path = "{faces["video"]}"
realtime = true
restart_each_session = true
[daemon]
state_dir = "{tmp_path}"
liveness = "active"
[liveness]
step_timeout_s = 30.0
[mqtt]
enabled = false
trusted_keys = ["{backend_key.public.hex()}"]
[gpio]
enabled = true
pin_factory = "mock"
led_pass = {PASS}
led_fail = {FAIL}
relay_pin = {RELAY}
button_pin = {BUTTON}
result_show_s = 0
''')
    d = daemon_mod.build(cfg)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not d.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.ready
    yield d
    d.request_stop()
    t.join(30)
    MockFactory().reset()


def ask(d, key, reference: bytes, challenge: list[str]) -> str:
    topic, now, rid = d.topics.cmd_verify, int(time.time()), uuid.uuid4().hex
    d.handle_inbound(Inbound(topic, signing.sign({"request_id": rid, "nonce": os.urandom(16), "iat": now,
                                                  "exp": now + 120, "reference": reference,
                                                  "challenge": challenge}, key, topic)))
    return rid


def results(d) -> dict:
    out = {}
    for row in d.outbox.pending(1000):
        p = signing.verify(row.message, signing.public_from_hex(d.key.public.hex()), row.topic).payload
        out[p["request_id"]] = (p["decision"], p["reason"])
    return out


def wait(pred, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError


def press(d) -> None:
    pin = d.indicators.factory.pin(BUTTON)
    pin.drive_low()  # pulled up: pressed = low
    time.sleep(0.1)  # past the 50 ms debounce
    pin.drive_high()
    time.sleep(0.1)


def test_the_button_cancels_the_running_session_and_nothing_else(terminal, faces, backend_key):
    d = terminal
    press(d)  # idle: nothing starts, nothing is answered, nothing is remembered
    time.sleep(0.3)
    assert results(d) == {} and d.state[0] == "idle"
    # a step the clip never shows: without the press this session would run ~13 s (the clip's end)
    rid = ask(d, backend_key, faces["ref"], ["blink"])
    wait(lambda: d.state[0] == "challenge", 30)
    t = time.monotonic()
    press(d)
    got = wait(lambda: results(d).get(rid), 10)
    assert got == (Verdict.ERROR, Failure.CANCELLED) and time.monotonic() - t < 3.0
    assert d.indicators.factory.pin(FAIL).state and not any(s.state for s in d.indicators.factory.pin(RELAY).states)
    wait(lambda: d.state[0] == "idle", 10)
    # the next session runs to its own end: the earlier press does not carry over
    rid2 = ask(d, backend_key, faces["ref"], ["turn_right", "turn_left"])
    assert wait(lambda: results(d).get(rid2), 60) == (Verdict.MATCH, None)
