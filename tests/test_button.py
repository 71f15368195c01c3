"""The button (gpio.button_pin) cancels: pressed during a session it ends that session at
once, decided error / cancelled (signed like any result, no relay pulse); pressed while
idle it does nothing, and a press before a session does not end the next one. The daemon
in process, MQTT off, gpiozero's MockFactory pins."""
from __future__ import annotations

import time

import pytest

from daemon_helpers import ask, in_process, local_config, outbox_payloads
from facegate import status
from facegate.vocab import Failure, Verdict
from timeouts import wait_until

BUTTON, RELAY, PASS, FAIL = 27, 17, 13, 19


@pytest.fixture
def terminal(tmp_path, faces, backend_key, model_dir):
    with in_process(local_config(
            "button-1", tmp_path, faces["video"], backend_key,
            camera="realtime = true\nrestart_each_session = true\n",  # sessions last: the clip plays 13 s
            daemon='liveness = "active"\n', liveness="step_timeout_s = 30.0\n",
            gpio=f"led_pass = {PASS}\nled_fail = {FAIL}\nrelay_pin = {RELAY}\nbutton_pin = {BUTTON}\n"
                 "result_show_s = 0\n")) as d:
        yield d


def results(d) -> dict:
    return {rid: (p["decision"], p["reason"]) for rid, p in outbox_payloads(d).items()}


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
    wait_until(lambda: d.state[0] == "challenge", 30, interval_s=0.05)
    t = time.monotonic()
    press(d)
    got = wait_until(lambda: results(d).get(rid), 10, interval_s=0.05)
    assert got == (Verdict.ERROR, Failure.CANCELLED) and time.monotonic() - t < 3.0
    wait_until(lambda: d.indicators.factory.pin(FAIL).state, 5, interval_s=0.05)  # shown just after the result is stored
    assert not any(s.state for s in d.indicators.factory.pin(RELAY).states)
    wait_until(lambda: d.state[0] == "idle", 10, interval_s=0.05)
    # the next session runs to its own end: the earlier press does not carry over
    rid2 = ask(d, backend_key, faces["ref"], ["turn_right", "turn_left"])
    assert wait_until(lambda: results(d).get(rid2), 60, interval_s=0.05) == (Verdict.MATCH, None)
    # MQTT is off: the daemon's publisher is the explicit NullPublisher; results stay in the outbox
    assert status.read(d.state_dir)["broker"] == {"enabled": False, "connected": False, "error": ""}
    assert d.outbox.depth() >= 2
