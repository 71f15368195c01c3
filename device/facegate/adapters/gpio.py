"""Status LEDs (or one RGB LED), the relay, the cancel button and the buzzer via gpiozero.

The pin factory is chosen explicitly (gpio.pin_factory): "" = gpiozero's default on a Pi
(lgpio on a Pi 5 and, on current Raspberry Pi OS, a Pi 4), "mock" = gpiozero's
MockFactory, whose pins record their history (tests, demos off a Pi). GPIO off
(gpio.enabled = false) means `NoIndicators`; a failing factory is an error, never a silent
fallback. Nothing here blocks: timed outputs run on gpiozero's / threading's threads.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..config import GpioConfig
from ..errors import FacegateError
from ..ports import Indicators
from ..vocab import Indicator

log = logging.getLogger(__name__)

STATES = tuple(Indicator)
# one RGB LED: (red, green, blue) brightness 0..1 per state
RGB_COLOURS: dict[str, tuple[float, float, float]] = {Indicator.OFF: (0, 0, 0), Indicator.READY: (0, 0, 1), Indicator.BUSY: (1, 0.5, 0),
               Indicator.PASS: (0, 1, 0), Indicator.FAIL: (1, 0, 0)}
BEEP_S = 0.15


class GpioError(FacegateError):
    """GPIO is enabled but its pins cannot be driven."""


def _check(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown indicator state {state!r} (one of {', '.join(STATES)})")


class NoIndicators:
    """Indicators when gpio.enabled is false: accepts every call, drives nothing."""

    def show(self, state: str) -> None:
        _check(state)

    def pulse_relay(self) -> None:
        pass

    def beep(self) -> None:
        pass

    def on_button(self, callback: Callable[[], None]) -> None:
        pass

    def close(self) -> None:
        pass


def make_pin_factory(name: str, pwm: bool = False):
    """The gpiozero pin factory gpio.pin_factory names; None = gpiozero's default.
    pwm: a mock factory whose pins accept PWM (for an RGB LED)."""
    if name == "":
        return None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin) if pwm else MockFactory()
    if name == "lgpio":
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()
    if name == "rpigpio":
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    if name == "native":
        from gpiozero.pins.native import NativeFactory

        return NativeFactory()
    raise GpioError(f"unknown gpio.pin_factory {name!r}")


class GpiozeroIndicators:
    """Indicators on real (or mock) pins; BCM pin numbers from GpioConfig, None = not fitted.

    show(state): exactly one of the ready / busy / pass / fail LEDs lit (or the RGB LED in
    that state's colour, RGB_COLOURS); pass and fail fall back to ready after
    cfg.result_show_s (0 = stay until the next show), unless another show() came first.
    pulse_relay(): one pulse of cfg.relay_pulse_ms, active high or low per
    cfg.relay_active_high. beep(): one BEEP_S beep. on_button(cb): cb() on each press
    (gpiozero's thread). close(): relay off, every device released; idempotent.
    pin_factory: a gpiozero factory to use instead of cfg.pin_factory's.
    Attributes: factory (the gpiozero factory in use, None = gpiozero's default), state.
    Raises GpioError when the factory or a pin cannot be set up.
    """

    def __init__(self, cfg: GpioConfig, pin_factory=None):
        self.cfg = cfg
        self.state: str = Indicator.OFF
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._generation = 0
        self._closed = False
        self._callback: Callable[[], None] | None = None
        self._devices: list = []
        self.leds: dict = {}
        self.rgb = self.relay = self.button = self.buzzer = None
        try:
            self.factory = pin_factory if pin_factory is not None else make_pin_factory(
                cfg.pin_factory, pwm=bool(cfg.rgb_led))
            from gpiozero import LED, RGBLED, Button, Buzzer, DigitalOutputDevice

            kw = {"pin_factory": self.factory}
            if cfg.rgb_led:
                self.rgb = self._add(RGBLED(*cfg.rgb_led, pwm=True, **kw))
            else:
                for name in STATES[1:]:
                    pin = getattr(cfg, f"led_{name}")
                    if pin is not None:
                        self.leds[name] = self._add(LED(pin, **kw))
            if cfg.relay_pin is not None:
                self.relay = self._add(DigitalOutputDevice(cfg.relay_pin, active_high=cfg.relay_active_high,
                                                           initial_value=False, **kw))
            if cfg.buzzer_pin is not None:
                self.buzzer = self._add(Buzzer(cfg.buzzer_pin, **kw))
            if cfg.button_pin is not None:
                self.button = self._add(Button(cfg.button_pin, pull_up=True, bounce_time=0.05, **kw))
                self.button.when_pressed = self._pressed
        except GpioError:
            self.close()
            raise
        except Exception as exc:  # ImportError, BadPinFactory, GPIOPinInUse, OSError, ...
            self.close()
            factory = cfg.pin_factory or "gpiozero's default"
            raise GpioError(f"GPIO is enabled but pin factory {factory} failed: {type(exc).__name__}: {exc}. "
                            'Off a Raspberry Pi set gpio.pin_factory = "mock" or gpio.enabled = false') from None

    def _add(self, device):
        self._devices.append(device)
        return device

    def show(self, state: str) -> None:
        _check(state)
        with self._lock:
            if self._closed:
                return
            self._generation += 1
            self._cancel_timer()
            self._light(state)
            if state in (Indicator.PASS, Indicator.FAIL) and self.cfg.result_show_s > 0:
                self._timer = threading.Timer(self.cfg.result_show_s, self._result_done, (self._generation,))
                self._timer.daemon = True
                self._timer.start()

    def _result_done(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation and not self._closed:
                self._light(Indicator.READY)

    def _light(self, state: str) -> None:
        self.state = state
        if self.rgb is not None:
            self.rgb.color = RGB_COLOURS[state]
        for name, led in self.leds.items():
            led.value = name == state

    def pulse_relay(self) -> None:
        if self.relay is not None and not self._closed:
            self.relay.blink(on_time=self.cfg.relay_pulse_ms / 1000.0, off_time=0, n=1, background=True)

    def beep(self) -> None:
        if self.buzzer is not None and not self._closed:
            self.buzzer.beep(on_time=BEEP_S, off_time=0, n=1, background=True)

    def on_button(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def _pressed(self) -> None:
        cb = self._callback
        if cb is not None:
            try:
                cb()
            except Exception:
                log.exception("button callback failed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._generation += 1
            self._cancel_timer()
        if self.relay is not None:
            try:
                self.relay.off()  # stops a running pulse, de-energised
            except Exception as exc:
                log.warning("relay off at close: %s", exc)
        for device in reversed(self._devices):
            try:
                device.close()
            except Exception as exc:
                log.warning("closing %r: %s", device, exc)
        self._devices.clear()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def open_indicators(cfg: GpioConfig) -> Indicators:
    """GpiozeroIndicators when gpio.enabled, else NoIndicators (raises GpioError, no fallback)."""
    return GpiozeroIndicators(cfg) if cfg.enabled else NoIndicators()
