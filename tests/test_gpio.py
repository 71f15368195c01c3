"""GPIO indicators on gpiozero's MockFactory: pin histories for LEDs, relay, buzzer and
the button; the factory chosen explicitly, never by fallback."""
from __future__ import annotations

import sys
import time

import pytest
from gpiozero.pins.mock import MockFactory  # gpiozero is in the dev and pi extras

from facegate.adapters.gpio import GpioError, GpiozeroIndicators, NoIndicators, open_indicators
from facegate.config import GpioConfig

LEDS = {"ready": 5, "busy": 6, "pass": 13, "fail": 19}
RELAY, BUTTON, BUZZER = 17, 27, 22


def _cfg(**kw) -> GpioConfig:
    base = dict(enabled=True, pin_factory="mock", led_ready=5, led_busy=6, led_pass=13, led_fail=19,
                relay_pin=RELAY, button_pin=BUTTON, buzzer_pin=BUZZER, relay_pulse_ms=200, result_show_s=0.3)
    base.update(kw)
    return GpioConfig(**base)


@pytest.fixture(autouse=True)
def clean_mock_pins():
    MockFactory().reset()  # mock pins and reservations are shared by every MockFactory
    yield
    MockFactory().reset()


@pytest.fixture
def ind():
    ind = GpiozeroIndicators(_cfg())
    yield ind
    ind.close()


def _levels(ind, pin) -> list:
    """A mock pin's history of levels (its `timestamp`s are seconds since the previous change)."""
    return [s.state for s in ind.factory.pin(pin).states]


def _lit(ind) -> set:
    return {name for name, pin in LEDS.items() if ind.factory.pin(pin).state}


def _wait_for(cond, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_one_led_per_state(ind):
    assert isinstance(ind.factory, MockFactory)
    assert _lit(ind) == set()
    for state in ("ready", "busy", "fail", "ready", "off"):
        ind.show(state)
        assert _lit(ind) == ({state} if state != "off" else set())
    with pytest.raises(ValueError, match="unknown indicator state"):
        ind.show("green")


def test_pass_stays_for_result_show_s_then_ready_without_blocking(ind):
    ind.show("busy")
    ind.show("pass")
    # non-blocking, by order not by the wall clock (issue 25): a call that waited out
    # result_show_s would return with ready already lit
    assert _lit(ind) == {"pass"}
    assert _wait_for(lambda: _lit(ind) == {"ready"})
    lit_for = ind.factory.pin(LEDS["pass"]).states[-1].timestamp  # mock pin times: since the previous change
    assert 0.29 <= lit_for < 1.0
    assert _levels(ind, LEDS["pass"]) == [False, True, False]
    assert ind.state == "ready"


def test_a_new_state_cancels_the_return_to_ready(ind):
    ind.show("fail")
    ind.show("busy")  # the next session started before the fail light timed out
    time.sleep(0.45)
    assert _lit(ind) == {"busy"}
    assert _levels(ind, LEDS["ready"]) == [False]  # ready never came on


def test_relay_pulse_active_high(ind):
    ind.pulse_relay()
    pin = ind.factory.pin(RELAY)
    # non-blocking, by order (issue 25): a call that waited out the pulse would return with
    # the relay already released (3 states); it returns mid-pulse
    assert len(pin.states) == 2 and pin.state, pin.states
    assert _wait_for(lambda: len(pin.states) == 3)
    assert _levels(ind, RELAY) == [False, True, False]
    width = pin.states[2].timestamp  # seconds since the previous change (the pulse start)
    assert 0.195 <= width < 0.6  # relay_pulse_ms = 200


def test_relay_pulse_active_low():
    ind = GpiozeroIndicators(_cfg(relay_active_high=False, relay_pulse_ms=40))
    try:
        pin = ind.factory.pin(RELAY)
        assert pin.state is True  # de-energised = high for an active-low relay
        n = len(pin.states)  # the mock pin's history starts low before setup drives it high
        ind.pulse_relay()
        assert _wait_for(lambda: len(pin.states) == n + 2)
        assert _levels(ind, RELAY)[n - 1:] == [True, False, True]
        assert 0.035 <= pin.states[n + 1].timestamp < 0.3
    finally:
        ind.close()


def test_beep(ind):
    ind.beep()
    assert _wait_for(lambda: len(ind.factory.pin(BUZZER).states) == 3)
    assert _levels(ind, BUZZER) == [False, True, False]


def test_button_calls_back(ind):
    presses = []
    ind.on_button(lambda: presses.append(1))
    pin = ind.factory.pin(BUTTON)
    pin.drive_low()  # pulled up: pressed = low
    assert _wait_for(lambda: presses == [1])
    pin.drive_high()
    time.sleep(0.06)  # past the debounce time
    pin.drive_low()
    assert _wait_for(lambda: presses == [1, 1])
    pin.drive_high()


def test_close_turns_off_and_releases_every_pin():
    ind = GpiozeroIndicators(_cfg(relay_pulse_ms=5000))
    ind.show("pass")
    ind.pulse_relay()
    assert _wait_for(lambda: ind.factory.pin(RELAY).state)
    ind.close()
    ind.close()  # idempotent
    assert not ind.factory.pin(RELAY).state  # a pulse in progress ends at close
    time.sleep(0.2)
    assert ind.state == "pass"  # the return-to-ready timer was cancelled
    again = GpiozeroIndicators(_cfg())  # every pin is free again
    again.close()


def test_rgb_led_colours():
    ind = GpiozeroIndicators(GpioConfig(enabled=True, pin_factory="mock", rgb_led=[16, 20, 21], result_show_s=0))
    try:
        rgb = [ind.factory.pin(p) for p in (16, 20, 21)]
        ind.show("busy")
        assert [p.state for p in rgb] == [1, 0.5, 0]  # amber, by PWM
        ind.show("pass")
        time.sleep(0.05)
        assert [p.state for p in rgb] == [0, 1, 0]  # result_show_s = 0: stays until the next show
        ind.show("ready")
        assert [p.state for p in rgb] == [0, 0, 1]
    finally:
        ind.close()


def test_partial_fit_only_drives_what_is_there():
    ind = GpiozeroIndicators(GpioConfig(enabled=True, pin_factory="mock", led_ready=5))
    try:
        ind.show("busy")
        ind.pulse_relay()
        ind.beep()
        ind.on_button(lambda: None)
        assert ind.relay is None and ind.buzzer is None and ind.button is None
        assert not ind.factory.pin(5).state
    finally:
        ind.close()


def test_disabled_is_no_indicators_and_failure_is_an_error(monkeypatch):
    off = open_indicators(GpioConfig(enabled=False, relay_pin=17))
    assert isinstance(off, NoIndicators)
    off.show("pass"), off.pulse_relay(), off.beep(), off.on_button(lambda: None), off.close()
    with pytest.raises(ValueError):
        off.show("maybe")

    monkeypatch.setitem(sys.modules, "gpiozero.pins.lgpio", None)  # lgpio unusable here
    with pytest.raises(GpioError, match=r'pin factory lgpio failed.*gpio.pin_factory = "mock"'):
        open_indicators(GpioConfig(enabled=True, pin_factory="lgpio", relay_pin=17))
