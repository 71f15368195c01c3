"""A worker's check that its own session still receives: an idle worker sends itself a
QoS 1 message every `every_s`; one that does not come back while the worker stayed idle
means the broker stopped sending to this session, and the connection is made again (the
persistent session, and what it holds, is kept).

Why: Mosquitto 2.0.11 does not give back the send quota (our Receive Maximum) of a message
it dropped because it exceeded our Maximum Packet Size; after receive_max of them it sends
the session nothing more until it reconnects (measured: 199 oversized messages on a result
topic leave a worker receiving, 200 stop it for good; a reconnect resumes it)."""
from __future__ import annotations

import logging
import time

from .mqtt import BrokerClient, BrokerError, Message

log = logging.getLogger(__name__)


class Probe:
    def __init__(self, client: BrokerClient, topic: str, every_s: float):
        self.client, self.topic, self.every_s = client, topic, every_s
        self.sent_at = self.back_at = 0.0
        self.reconnects = 0

    def receive(self, m: Message) -> bool:
        """In paho's thread: True (and acknowledged) when `m` is this probe."""
        if m.topic != self.topic:
            return False
        self.back_at = time.monotonic()
        self.client.ack(m)
        return True

    def tick(self, busy_at: float) -> bool:
        """From the worker's loop while its inbox is empty; busy_at: when it last finished a
        batch. True when the session was found stalled (and reconnected)."""
        now = time.monotonic()
        if now - self.sent_at < self.every_s or not self.client.connected:
            return False
        stalled = self.back_at < self.sent_at and busy_at < self.sent_at
        if stalled:
            self.reconnects += 1
            log.warning("%s: the broker did not deliver our own probe within %g s while we were idle: "
                        "reconnecting (Mosquitto leaks send quota on messages above our Maximum Packet Size)",
                        self.client.client_id, self.every_s)
            self.client.reconnect()
        try:
            self.client.publish(self.topic, b"probe", 1, wait=False)
        except BrokerError as exc:
            log.warning("%s: probe not sent: %s", self.client.client_id, exc)
        self.sent_at = now
        return stalled
