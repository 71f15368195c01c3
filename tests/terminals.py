"""Lightweight simulated terminals for the backend tests and scripts/fleet_soak.py: each
has a real Ed25519 key and builds its results and attestation with the package's own
contract code (messages.result_payload / attest_payload, signing.sign) — no camera, no
models, no daemon. Each publishes over its own MQTT connection as its own broker user (the
test broker's ACL lets a terminal write only its own topics) and, like the daemon, re-sends
what the broker acknowledged shortly before a lost connection (a crashed broker forgets
what came since its last save)."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker import Mosquitto, password
from facegate import messages, signing

PREFIX = "facegate/v1"
MODELS = {"embed": hashlib.sha256(b"sface").hexdigest(), "detect_short": hashlib.sha256(b"blazeface").hexdigest()}


@dataclass
class Terminal:
    dev: str
    key: signing.SigningKey = field(default_factory=signing.SigningKey.generate)
    seq: int = 0
    boot: str = field(default_factory=lambda: os.urandom(8).hex())

    @property
    def topics(self) -> messages.Topics:
        return messages.Topics.of(PREFIX, self.dev)

    def result(self, decision: str = "match", reason: str | None = None, request_id: str | None = None,
               nonce: bytes | None = None, topic: str | None = None, **over) -> tuple[int, bytes]:
        """(seq, signed result) for R/result (or `topic`), the next seq; `over` replaces
        payload fields after the contract built it (for malformed results)."""
        self.seq += 1
        p = messages.result_payload(dev=self.dev, boot=self.boot, seq=self.seq, iat=time.time(),
                                    session=os.urandom(6).hex(), request_id=request_id or os.urandom(8).hex(),
                                    nonce=nonce or os.urandom(16), decision=decision, reason=reason,
                                    liveness={"passive_pass": True}, quality={"frames": 5}, models=MODELS,
                                    policy="0123456789abcdef")
        p.update({k.rstrip("_"): v for k, v in over.items()})
        return self.seq, signing.sign(p, self.key, topic or self.topics.result)

    def attest(self) -> bytes:
        p = messages.attest_payload(dev=self.dev, kid=self.key.kid, public=self.key.public, version="0.1.0",
                                    models=MODELS, boot=self.boot, iat=time.time())
        return signing.sign(p, self.key, self.topics.attest)

    def keys_show(self) -> str:
        """What `facegate keys show` prints on this terminal."""
        return (f"path        /var/lib/facegate/signing.key\nkid         {self.key.kid.hex()}\n"
                f"public_key  {self.key.public.hex()}\nalgorithm   EdDSA (Ed25519)\n")


def add_users(broker: Mosquitto, users) -> None:
    """Put many terminals' users in the broker's password file and ACL, then one SIGHUP."""
    broker.add_users(users)


class Link:
    """One terminal's MQTT 5 connection (as broker user `user`) publishing QoS 1; keeps
    what the broker acknowledged in the last `redeliver_s` and sends it again after a
    reconnect."""

    def __init__(self, broker: Mosquitto, user: str, redeliver_s: float = 3.0):
        self.redeliver_s = redeliver_s
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, bytes, bool]] = {}  # mid -> message not yet acknowledged
        self._acked: deque = deque()  # (t_acked, topic, payload, retain)
        self._early: set[int] = set()
        self.published = 0
        self.connected = threading.Event()
        add_users(broker, [user])
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{os.urandom(3).hex()}",
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password(user))
        c.tls_set(ca_certs=str(broker.tls["ca"]))
        c.reconnect_delay_set(0.2, 1)
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self.client = c
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        c.connect_async("127.0.0.1", broker.port, keepalive=5, clean_start=True, properties=props)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        if rc.is_failure:
            return
        with self._lock:
            # paho re-sends what was never acknowledged; we add what was acknowledged lately
            again = [(t, p, r) for (_, t, p, r) in self._acked]
            self._acked.clear()
        self.connected.set()
        for topic, payload, retain in again:
            self._send(topic, payload, retain)

    def _on_disconnect(self, client, userdata, flags, rc, props) -> None:
        self.connected.clear()
        with self._lock:
            cutoff = time.monotonic() - self.redeliver_s
            while self._acked and self._acked[0][0] < cutoff:
                self._acked.popleft()

    def _on_publish(self, client, userdata, mid, rc, props) -> None:
        # paho calls this holding its message lock: never wait here for a lock that is
        # held around client.publish()
        with self._lock:
            m = self._pending.pop(mid, None)
            if m is None:  # acknowledged before _send recorded it
                self._early.add(mid)
                return
            self._acked_now(m)

    def _acked_now(self, m) -> None:
        self._acked.append((time.monotonic(), *m))
        cutoff = time.monotonic() - 60
        while self._acked and self._acked[0][0] < cutoff:
            self._acked.popleft()

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        # not connected: paho keeps the message and sends it after the reconnect
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._acked_now((topic, payload, retain))
            else:
                self._pending[info.mid] = (topic, payload, retain)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._send(topic, payload, retain)
        self.published += 1

    def unacked(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Links:
    """One Link per terminal."""

    def __init__(self, broker: Mosquitto, devs, redeliver_s: float = 3.0):
        add_users(broker, devs)
        self.by_dev = {d: Link(broker, d, redeliver_s) for d in devs}

    def wait_connected(self, timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        return all(lk.connected.wait(max(0.0, deadline - time.monotonic())) for lk in self.by_dev.values())

    def publish(self, dev: str, topic: str, payload: bytes, retain: bool = False) -> None:
        self.by_dev[dev].publish(topic, payload, retain)

    def unacked(self) -> int:
        return sum(lk.unacked() for lk in self.by_dev.values())

    def close(self) -> None:
        for lk in self.by_dev.values():
            lk.close()
