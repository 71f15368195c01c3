"""One contract for every publisher (ports.Publisher): FakePublisher, and PahoPublisher
against a real Mosquitto (tests/broker.py, with its TLS, passwords and per-device ACL).
The same tests hold both to the same behaviour, so what the daemon's tests prove with the
fake holds on the broker: connect, publish -> PUBACK -> on_ack, commands in, a refused
publish answered, offline (publish False, no ack, on_disconnect), back online, only_if,
topics no broker takes, stop with last words, stop twice."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from broker import Backend, Mosquitto, password
from facegate.adapters.fake_mqtt import FakePublisher
from facegate.config import MqttConfig
from facegate.ports import Inbound, Publisher
from facegate.registry import PUBLISHERS
from facegate.vocab import PublisherKind

DEVICE = "kiosk-c"
OWN = f"facegate/v1/{DEVICE}"  # the ACL lets the terminal write its own status topics ...
CMD = f"{OWN}/cmd/verify"  # ... and read its own command topic
FOREIGN = "facegate/v1/someone-else/result"  # a topic its ACL refuses


@dataclass
class Harness:
    """A publisher and the broker it talks to. seen(topic): the payloads the broker took
    on topic; send(topic, payload): the broker delivers a message; offline() / online():
    the broker goes away / comes back."""

    pub: Publisher
    seen: Callable[[str], list[bytes]]
    send: Callable[[str, bytes], None]
    offline: Callable[[], None]
    online: Callable[[], None]
    inbound: list[Inbound] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    cv: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        def note(lst, item):
            with self.cv:
                lst.append(item)
                self.cv.notify_all()
        self.pub.start(lambda m: note(self.inbound, m), lambda: note(self.connects, time.monotonic()),
                       lambda: note(self.disconnects, time.monotonic()))

    def wait(self, pred, timeout_s: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        with self.cv:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(what)
                self.cv.wait(min(left, 0.1))


def _fake() -> tuple[Harness, Callable[[], None]]:
    pub = FakePublisher()
    return Harness(pub, pub.on, lambda t, p: pub.receive(t, p), pub.disconnect, pub.connect), lambda: None


def _paho(tmp_path) -> tuple[Harness, Callable[[], None]]:
    from facegate.adapters.mqtt import PahoPublisher

    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker")
    broker.add_user(DEVICE)
    broker.start()
    pw = tmp_path / "pw"
    pw.write_text(password(DEVICE) + "\n")
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, tls=True, ca_file=str(broker.tls["ca"]),
                     username=DEVICE, password_file=str(pw), reconnect_min_s=1, reconnect_max_s=1, keepalive_s=5)
    pub = PahoPublisher(cfg, f"contract-{DEVICE}-{time.monotonic_ns()}", will=None, persistent=False)
    backend = Backend(broker)  # reads the terminals' topics, writes their commands
    backend.wait_for(lambda _: backend.client.is_connected(), 20)

    def seen(topic: str) -> list[bytes]:
        return [m.payload for m in backend.on(topic)]

    def close() -> None:
        backend.close()
        broker.stop()
    return Harness(pub, seen, lambda t, p: backend.publish(t, p), broker.stop, broker.start), close


@pytest.fixture(params=[PublisherKind.FAKE, PublisherKind.MQTT])
def h(request, tmp_path):
    """Every registered publisher that talks to a broker (null is the one that never does)."""
    harness, close = _fake() if request.param == PublisherKind.FAKE else _paho(tmp_path)
    assert type(harness.pub) is PUBLISHERS.get(request.param)
    harness.start()
    harness.wait(lambda: harness.connects, what="the first connect")
    try:
        yield harness
    finally:
        harness.pub.stop()
        close()


def _ack_waiter(h: Harness):
    acks: list[int] = []

    def on_ack():
        with h.cv:
            acks.append(1)
            h.cv.notify_all()
    return acks, on_ack


def test_a_qos1_publish_reaches_the_broker_and_is_acked_once(h):
    assert h.pub.connected
    acks, on_ack = _ack_waiter(h)
    assert h.pub.publish(f"{OWN}/result", b"r1", qos=1, on_ack=on_ack) is True
    h.wait(lambda: acks, what="the PUBACK")
    deadline = time.monotonic() + 20
    while h.seen(f"{OWN}/result") != [b"r1"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.seen(f"{OWN}/result") == [b"r1"]
    time.sleep(0.2)
    assert acks == [1]  # once
    assert getattr(h.pub, "refused", 0) == 0


def test_a_subscribed_command_comes_in_as_an_inbound(h):
    h.pub.subscribe(CMD)
    deadline = time.monotonic() + 20
    while not h.inbound:  # sent again until the subscription is in place (no SUBACK to wait for)
        h.send(CMD, b"cmd-1")
        try:
            h.wait(lambda: h.inbound, min(1.0, max(deadline - time.monotonic(), 0.01)))
        except TimeoutError:
            assert time.monotonic() < deadline, "the command never came in"
    assert (h.inbound[0].topic, h.inbound[0].payload) == (CMD, b"cmd-1")


def test_a_publish_the_broker_refuses_is_answered_and_counted(h):
    """The per-device ACL refuses a foreign topic: PahoPublisher gets a failing PUBACK, the
    fake is told to refuse; both count it and still call on_ack (re-sending cannot help)."""
    if isinstance(h.pub, FakePublisher):
        h.pub.refuse_publishes()
    acks, on_ack = _ack_waiter(h)
    assert h.pub.publish(FOREIGN, b"x", qos=1, on_ack=on_ack) is True
    h.wait(lambda: acks, what="the refusing PUBACK")
    assert h.pub.refused == 1  # type: ignore[attr-defined]


def test_offline_publishes_nothing_acks_nothing_and_comes_back(h):
    h.offline()
    h.wait(lambda: h.disconnects, what="on_disconnect")
    assert not h.pub.connected
    acks, on_ack = _ack_waiter(h)
    assert h.pub.publish(f"{OWN}/result", b"lost", qos=1, on_ack=on_ack) is False
    h.online()
    h.wait(lambda: len(h.connects) == 2, 30, "on_connect again")
    assert h.pub.connected and acks == []
    assert h.pub.publish(f"{OWN}/result", b"back", qos=1, on_ack=on_ack) is True
    h.wait(lambda: acks, what="the PUBACK after the reconnect")
    assert b"lost" not in h.seen(f"{OWN}/result")


def test_only_if_false_sends_nothing(h):
    assert h.pub.publish(f"{OWN}/state", b"no", qos=1, only_if=lambda: False) is False
    assert h.pub.publish(f"{OWN}/state", b"yes", qos=1, only_if=lambda: True) is True
    deadline = time.monotonic() + 20
    while not h.seen(f"{OWN}/state") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.seen(f"{OWN}/state") == [b"yes"]


@pytest.mark.parametrize("topic", [f"{OWN}/+", f"{OWN}/#"])
def test_a_topic_no_broker_takes_is_a_value_error(h, topic):
    with pytest.raises(ValueError):
        h.pub.publish(topic, b"x", qos=1)
    with pytest.raises(ValueError):
        h.pub.publish(f"{OWN}/result", b"x", qos=3)


def test_stop_sends_the_last_words_retained_and_twice_is_harmless(h):
    h.pub.stop([(f"{OWN}/status", b"offline")])
    deadline = time.monotonic() + 20
    while not h.seen(f"{OWN}/status") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.seen(f"{OWN}/status") == [b"offline"]
    assert not h.pub.connected
    h.pub.stop([(f"{OWN}/status", b"again")])  # no error, nothing more sent
    time.sleep(0.3)
    assert h.seen(f"{OWN}/status") == [b"offline"]
    assert h.pub.publish(f"{OWN}/result", b"after", qos=1) is False


def test_the_null_publisher_never_connects_and_sends_nothing():
    """mqtt.enabled = false: the registered null member keeps the same calls harmless."""
    from facegate.config import Config

    pub = PUBLISHERS.get(PublisherKind.NULL).from_config(Config(), will=("x/status", b"offline"))
    calls: list[str] = []
    pub.start(lambda m: calls.append("msg"), lambda: calls.append("connect"), lambda: calls.append("disconnect"))
    pub.subscribe(CMD)
    acks: list[int] = []
    assert pub.publish(f"{OWN}/result", b"r", qos=1, on_ack=lambda: acks.append(1)) is False
    pub.stop([(f"{OWN}/status", b"offline")])
    pub.stop()
    assert not pub.connected and calls == [] and acks == []
