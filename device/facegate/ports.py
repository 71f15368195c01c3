"""Narrow interfaces to everything that touches the world.

Each port has a real adapter and a fake in `facegate.adapters`; code above the adapters
only sees these protocols.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .types import Frame


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and affine quantization (real = scale * (q - zero_point)) of one
    model tensor; scale 0.0 means not quantized."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0


@dataclass(frozen=True)
class DelegateReport:
    """How much of a model graph runs inside the accelerator delegate (XNNPACK)."""

    nodes: int
    delegated: int
    partitions: int

    @property
    def undelegated(self) -> int:
        return self.nodes - self.delegated


class Runner(Protocol):
    """Runs one model: arrays in (matching `inputs`), arrays out (matching `outputs`)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]: ...

    def delegate_report(self) -> DelegateReport: ...


class Camera(Protocol):
    """A source of frames; `frames()` yields until the source ends or `close()`."""

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class Clock(Protocol):
    """Monotonic seconds, wall-clock (Unix) seconds, and whether the wall clock is
    synchronised to a time source (None: cannot tell)."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def synchronized(self) -> bool | None: ...


class Indicators(Protocol):
    """What the customer and technician see and what the terminal switches: status LEDs,
    the relay, the buzzer; and the button the person presses to cancel. `show` takes a
    vocab.Indicator (off | ready | busy | pass | fail)."""

    def show(self, state: str) -> None: ...

    def pulse_relay(self) -> None: ...

    def beep(self) -> None: ...

    def on_button(self, callback: Callable[[], None]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Inbound:
    """One received MQTT message. response_topic / correlation: MQTT 5 request-response
    properties, when the sender set them. redelivered: the broker's own retransmission
    (MQTT DUP flag) of a message it may have delivered before, not a new publish."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    redelivered: bool = False


class Publisher(Protocol):
    """The one MQTT communicator. `publish` returns False when not connected; `on_ack` is
    called (on a network thread) once the broker acknowledged a QoS 1 message.

    A connection is made in one step with its `on_connect`: nothing another thread
    publishes goes out on a new connection before `on_connect` has returned. `only_if`,
    when given, is asked inside that same step, just before the message is taken (False:
    nothing is sent, publish returns False): a caller whose decision to publish belongs to
    an older connection finds out there, never after its message went out on the new one."""

    connected: bool

    def start(self, on_message: Callable[[Inbound], None], on_connect: Callable[[], None],
              on_disconnect: Callable[[], None]) -> None: ...

    def subscribe(self, topic: str) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                correlation: bytes | None = None, on_ack: Callable[[], None] | None = None,
                only_if: Callable[[], bool] | None = None) -> bool: ...

    def stop(self, last: Sequence[tuple[str, bytes]] = ()) -> None: ...
