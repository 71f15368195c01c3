"""FakePublisher: ports.Publisher in memory, for tests and for running without a broker.

It records what happened, as gpiozero's mock pins record their history: every event
(connect, disconnect, publish, ack, drop, refuse) in `events`, with views `published`,
`acked`, `dropped` and `retained`. A test tells it what the broker does:

- `connect()` / `disconnect()`: the connection comes and goes; a disconnect drops every
  message not yet acknowledged (its `on_ack` never fires), as `PahoPublisher` drops paho's
  own re-sends on reconnect.
- `ack_delay_s`: 0 acknowledges a QoS 1/2 publish at once (inside `publish`, as an early
  PUBACK does), > 0 from a timer thread after that many seconds (as paho's network
  thread does), None holds the acks until the test calls `ack()`.
- `refuse_publishes(reason)`: the broker answers PUBACKs with a failure reason code; like
  `PahoPublisher` it counts them in `refused` and still calls `on_ack` (the broker has
  answered: re-sending cannot help). `refuse_connection(reason)`: the next `connect()`
  fails with `last_error` set.
- `receive(...)`: a message from the broker to a subscribed topic.

`publish` raises ValueError for a topic no broker takes (wildcards, over 65,535 bytes) and
for a QoS other than 0, 1, 2, as paho does. Chosen only by name, never as a fallback.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..config import Config
from ..ports import Inbound
from ..registry import PUBLISHERS
from ..vocab import PublisherKind


@dataclass(frozen=True)
class Sent:
    """One message the fake broker took: its mid (1, 2, ... in publish order), the
    publish arguments, and `t` (the fake's clock, seconds) when it was taken."""

    mid: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    correlation: bytes | None
    t: float


@dataclass(frozen=True)
class Event:
    """One entry of the history. kind: "connect" | "connect_refused" | "disconnect" |
    "subscribe" | "publish" | "ack" | "refuse" | "drop" | "receive" | "stop"; sent: the
    message for publish / ack / refuse / drop; detail: a topic or reason."""

    t: float
    kind: str
    sent: Sent | None = None
    detail: str = ""


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching: `+` one level, `#` the rest (including none)."""
    p, t = pattern.split("/"), topic.split("/")
    for i, part in enumerate(p):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(p) == len(t)


@PUBLISHERS.register(PublisherKind.FAKE)
class FakePublisher:
    """ports.Publisher without a broker. Thread-safe; callbacks run outside its lock."""

    @classmethod
    def from_config(cls, cfg: Config, will: tuple[str, bytes] | None = None) -> FakePublisher:
        """In memory, connected on start, every publish acknowledged at once."""
        return cls()

    def __init__(self, *, connect_on_start: bool = True, ack_delay_s: float | None = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.connected = False
        self.refused = 0  # publishes answered with a failure reason code (as PahoPublisher counts)
        self.last_error = ""
        self.ack_delay_s = ack_delay_s
        self.connect_on_start = connect_on_start
        self.clock = clock
        self.events: list[Event] = []
        self.subscriptions: list[str] = []
        self.retained: dict[str, bytes] = {}
        self.after_publish: Callable[[Sent], None] | None = None  # called after each taken publish
        # called on entering publish(), before the connection is looked at: a test holds a
        # publisher's caller here (as a thread descheduled on its way into paho)
        self.before_publish: Callable[[str, bytes], None] | None = None
        self._refuse_publish: str | None = None
        self._refuse_connect: str | None = None
        self._unacked: dict[int, tuple[Sent, Callable[[], None] | None]] = {}
        self._mid = 0
        self._cv = threading.Condition()
        self._gate = threading.RLock()  # connect() + on_connect vs. publish(), as in PahoPublisher
        self._on_message: Callable[[Inbound], None] | None = None
        self._on_connect: Callable[[], None] | None = None
        self._on_disconnect: Callable[[], None] | None = None

    # -- history -------------------------------------------------------------------------
    def _record(self, kind: str, sent: Sent | None = None, detail: str = "") -> None:
        """Append to the history; the caller holds the lock."""
        self.events.append(Event(self.clock(), kind, sent, detail))
        self._cv.notify_all()

    def _of(self, kind: str) -> list[Sent]:
        with self._cv:
            return [e.sent for e in self.events if e.kind == kind and e.sent is not None]

    @property
    def published(self) -> list[Sent]:
        """Every message the broker took, in publish order (re-sends appear again)."""
        return self._of("publish")

    @property
    def acked(self) -> list[Sent]:
        """Acknowledged messages whose on_ack has returned, in that order (refused ones
        included)."""
        return self._of("ack")

    @property
    def dropped(self) -> list[Sent]:
        """Messages a disconnect dropped before their acknowledgement."""
        return self._of("drop")

    @property
    def unacked(self) -> list[Sent]:
        """Messages taken and waiting for their acknowledgement, oldest first."""
        with self._cv:
            return [s for s, _ in sorted(self._unacked.values(), key=lambda v: v[0].mid)]

    def on(self, topic: str) -> list[bytes]:
        """The payloads published on `topic`, in order."""
        return [s.payload for s in self.published if s.topic == topic]

    def wait_for(self, pred: Callable[[FakePublisher], object], timeout_s: float = 10.0):
        """Block until pred(self) is truthy (re-checked on every event); returns its value.
        Raises TimeoutError with the last events."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                value = pred(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(f"{e.kind} {e.sent.topic if e.sent else ''} {e.detail}" for e in self.events[-20:])
                    raise TimeoutError(f"condition not met in {timeout_s} s; last events:\n{tail}")
                self._cv.wait(left)

    # -- what the broker does (the test drives these) ---------------------------------------
    def connect(self) -> bool:
        """The connection is up (again): calls on_connect. False if refused (see
        refuse_connection) or already connected."""
        with self._gate:  # as PahoPublisher: no publish between the connect and its on_connect
            with self._cv:
                if self.connected:
                    return False
                if self._refuse_connect is not None:
                    self.last_error = f"connection refused: {self._refuse_connect}"
                    self._record("connect_refused", detail=self._refuse_connect)
                    return False
                self.connected = True
                self.last_error = ""
                self._record("connect")
                cb = self._on_connect
            if cb:
                cb()
        return True

    def disconnect(self, reason: str = "connection lost") -> list[Sent]:
        """The connection is gone: unacknowledged messages are dropped (returned), then
        on_disconnect is called."""
        with self._cv:
            if not self.connected:
                return []
            self.connected = False
            self.last_error = f"disconnected: {reason}"
            self._record("disconnect", detail=reason)
            dropped = self._drop_unacked()
            cb = self._on_disconnect
        if cb:
            cb()
        return dropped

    def _drop_unacked(self) -> list[Sent]:
        dropped = [s for s, _ in sorted(self._unacked.values(), key=lambda v: v[0].mid)]
        self._unacked.clear()
        for s in dropped:
            self._record("drop", s)
        return dropped

    def refuse_connection(self, reason: str | None = "Not authorized") -> None:
        """Refuse every connect() with this reason from now on; None accepts again."""
        with self._cv:
            self._refuse_connect = reason

    def refuse_publishes(self, reason: str | None = "Not authorized") -> None:
        """Answer every later QoS 1/2 publish with this failure reason; None stops."""
        with self._cv:
            self._refuse_publish = reason

    def ack(self, n: int | None = None, mids: Iterable[int] | None = None) -> list[Sent]:
        """Acknowledge waiting messages: the given mids in that order, else the oldest n
        (all when n is None). Returns the acknowledged messages."""
        with self._cv:
            order = sorted(self._unacked) if mids is None else [m for m in mids if m in self._unacked]
            if n is not None:
                order = order[:n]
            fire = [self._take_ack(mid) for mid in order]
        for sent, cb in fire:
            self._acknowledge(sent, cb)
        return [sent for sent, _ in fire]

    def _take_ack(self, mid: int) -> tuple[Sent, Callable[[], None] | None]:
        """Take a message out of the waiting ones for its PUBACK; the caller holds the lock
        and then calls _acknowledge outside it."""
        sent, cb = self._unacked.pop(mid)
        if self._refuse_publish is not None:
            self.refused += 1
            self._record("refuse", sent, self._refuse_publish)
        return sent, cb

    def _acknowledge(self, sent: Sent, cb: Callable[[], None] | None) -> None:
        """Call on_ack, then record the ack: a test that waits for it sees its effect."""
        if cb:
            cb()
        with self._cv:
            self._record("ack", sent)

    def _ack_later(self, mid: int, delay_s: float) -> None:
        def fire() -> None:
            with self._cv:
                if mid not in self._unacked:  # dropped by a disconnect meanwhile
                    return
                sent, cb = self._take_ack(mid)
            self._acknowledge(sent, cb)
        timer = threading.Timer(delay_s, fire)
        timer.daemon = True
        timer.start()

    def receive(self, topic: str, payload: bytes, response_topic: str | None = None,
                correlation: bytes | None = None, redelivered: bool = False) -> bool:
        """A message from the broker: passed to on_message when connected and a
        subscription matches. Returns whether it was passed."""
        with self._cv:
            ok = self.connected and any(topic_matches(s, topic) for s in self.subscriptions)
            self._record("receive", detail=topic if ok else f"{topic} (not delivered)")
            cb = self._on_message
        if ok and cb:
            cb(Inbound(topic, payload, response_topic, correlation, redelivered))
        return ok

    # -- ports.Publisher -------------------------------------------------------------------
    def start(self, on_message: Callable[[Inbound], None], on_connect: Callable[[], None],
              on_disconnect: Callable[[], None]) -> None:
        self._on_message, self._on_connect, self._on_disconnect = on_message, on_connect, on_disconnect
        if self.connect_on_start:
            self.connect()

    def subscribe(self, topic: str) -> None:
        with self._cv:
            if topic not in self.subscriptions:
                self.subscriptions.append(topic)
            self._record("subscribe", detail=topic)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                correlation: bytes | None = None, on_ack: Callable[[], None] | None = None,
                only_if: Callable[[], bool] | None = None) -> bool:
        if self.before_publish:
            self.before_publish(topic, payload)
        if "+" in topic or "#" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")
        if len(topic.encode()) > 65535:
            raise ValueError("Publish topic is too long.")
        if qos not in (0, 1, 2):
            raise ValueError("Invalid QoS level.")
        with self._gate, self._cv:
            if not self.connected or (only_if is not None and not only_if()):
                return False
            self._mid += 1
            sent = Sent(self._mid, topic, bytes(payload), qos, retain, correlation, self.clock())
            self._record("publish", sent)
            if retain:
                self.retained[topic] = sent.payload
            fire = None
            if qos > 0:
                self._unacked[sent.mid] = (sent, on_ack)
                if self.ack_delay_s == 0:
                    fire = self._take_ack(sent.mid)
                elif self.ack_delay_s is not None:
                    self._ack_later(sent.mid, self.ack_delay_s)
            hook = self.after_publish
        if fire:
            self._acknowledge(*fire)
        if hook:
            hook(sent)
        return True

    def stop(self, last: Iterable[tuple[str, bytes]] = ()) -> None:
        """Publish `last` (retained, QoS 1) when connected, then go away for good."""
        for topic, payload in last:
            self.publish(topic, payload, qos=1, retain=True)
        with self._cv:
            self.connected = False
            self._record("stop")
            self._drop_unacked()
