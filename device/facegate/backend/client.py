"""The request client: one verification on one terminal, start to verified answer.

`BackendClient.verify(device, reference)` signs a verify command with the backend's key,
publishes it to {prefix}/{device}/cmd/verify with an MQTT 5 response topic
({response_prefix}/{client_id}) and fresh correlation data, and waits for the terminal's
signed answer, on the response topic or (if the terminal did not honour it) on its
R/result. An answer is believed only when it is signed by the device's enrolled (active)
key for the topic it came on, names the device, echoes the request_id and the nonce, was
made after the command (iat, within the clock skew) and carries a seq above every seq
accepted from that device before. Anything else is refused and counted; the wait goes on
until a good answer or the timeout.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import FacegateError
from ..messages import Topics, verify_command
from ..signing import SignatureError, SigningKey, load_key, sign, verify
from ..vocab import Verdict
from .config import BackendConfig
from .mqtt import BrokerClient, Message
from .registry import Registry
from .store import Store
from .trust import payload_problem


class ClientError(FacegateError):
    """Base of the request client's typed errors."""


class DeviceNotTrusted(ClientError):
    """The device has no active (enrolled or approved, not revoked) key."""


class VerifyTimeout(ClientError):
    """No acceptable answer within the timeout; `refused` lists why answers that did come
    were not believed (e.g. bad_signature, wrong_nonce)."""

    def __init__(self, device: str, request_id: str, timeout_s: float, refused: list[str]):
        why = f"; refused answers: {', '.join(refused)}" if refused else ""
        super().__init__(f"no answer from {device} to request {request_id} within {timeout_s:g} s{why}")
        self.device, self.request_id, self.timeout_s, self.refused = device, request_id, timeout_s, refused


@dataclass(frozen=True)
class VerifiedResult:
    """A terminal's answer that passed every check. message: the signed bytes as received
    (proof for later), topic: the topic they are signed for."""

    device: str
    decision: str
    reason: str | None
    request_id: str
    session: str | None
    seq: int
    iat: float
    boot: str | None
    liveness: dict
    quality: dict
    models: dict
    policy: str | None
    kid: str
    topic: str
    message: bytes

    def payload(self) -> dict:
        return {"dev": self.device, "decision": self.decision, "reason": self.reason, "request_id": self.request_id,
                "session": self.session, "seq": self.seq, "iat": self.iat, "boot": self.boot,
                "liveness": self.liveness, "quality": self.quality, "models": self.models, "policy": self.policy}


class VerifyRejected(ClientError):
    """The terminal refused the command (decision `rejected`), e.g. busy, expired,
    bad_reference; `result` is its verified answer."""

    def __init__(self, result: VerifiedResult):
        super().__init__(f"{result.device} rejected request {result.request_id}: {result.reason}")
        self.result, self.reason = result, result.reason


@dataclass
class _Wait:
    device: str
    request_id: str
    inbox: queue.Queue[Message]


class BackendClient:
    """Sends verify commands and checks the answers (thread-safe; one MQTT connection)."""

    def __init__(self, cfg: BackendConfig, store: Store | None = None, key: SigningKey | None = None):
        self.cfg = cfg
        self.store = store or Store.open(cfg.store)
        self.registry = Registry(self.store)
        self.key = key or load_key(Path(cfg.key_file))
        self.client_id = cfg.mqtt.client_id or f"facegate-backend-{os.urandom(4).hex()}"
        self.reply_topic = f"{cfg.mqtt.replies}/{self.client_id}"
        self._waits: dict[bytes, _Wait] = {}
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._watched: set[str] = set()
        self._broker: BrokerClient | None = None

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._broker:
            self._broker.close()
            self._broker = None

    def _connect(self) -> BrokerClient:
        with self._connect_lock:  # not self._lock: _on_message needs it while we wait for the SUBACK
            if self._broker is None:
                b = BrokerClient(self.cfg.mqtt, self.client_id, on_message=self._on_message)
                b.start()
                b.subscribe(self.reply_topic, 1)
                self._broker = b
            return self._broker

    def _on_message(self, msg: Message) -> None:
        with self._lock:
            if msg.topic == self.reply_topic:
                w = self._waits.get(msg.correlation or b"")
                targets = [w] if w else []
            else:  # a device's R/result: every request waiting on that device looks at it
                targets = [w for w in self._waits.values()
                           if msg.topic == Topics.of(self.cfg.mqtt.prefix, w.device).result]
        for w in targets:
            w.inbox.put(msg)

    def verify(self, device: str, reference: bytes, challenge: list[str] | None = None, timeout_s: float = 60.0,
               request_id: str | None = None) -> VerifiedResult:
        """One verification on `device` with the ID portrait `reference` (JPEG / PNG bytes);
        challenge: fixed steps ([] = none; None = the terminal draws them). Returns the
        verified answer (any decision but `rejected`); raises VerifyRejected, VerifyTimeout,
        DeviceNotTrusted, or BrokerError when the broker cannot be reached."""
        keys = self.registry.keyring().public_keys(device)
        if not keys:
            raise DeviceNotTrusted(f"{device} has no active key: enrol it ('facegate backend devices enrol') "
                                   "or approve its pending key")
        broker = self._connect()
        topics = Topics.of(self.cfg.mqtt.prefix, device)
        with self._connect_lock:
            if device not in self._watched:
                broker.subscribe(topics.result, 1)
                self._watched.add(device)
        now = time.time()
        cmd = verify_command(reference, now, min(self.cfg.command_lifetime_s, timeout_s + 30), request_id, challenge)
        corr = os.urandom(16)
        wait = _Wait(device, cmd["request_id"], queue.Queue())
        with self._lock:
            self._waits[corr] = wait
        refused: list[str] = []
        try:
            broker.publish(topics.cmd_verify, sign(cmd, self.key, topics.cmd_verify), 1,
                           response_topic=self.reply_topic, correlation=corr, timeout_s=min(timeout_s, 10.0))
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = wait.inbox.get(timeout=left)
                except queue.Empty:
                    break
                result, why = self._check(msg, device, keys, cmd, now)
                if result is not None:
                    if result.decision == Verdict.REJECTED:
                        raise VerifyRejected(result)
                    return result
                if why:
                    refused.append(why)
        finally:
            with self._lock:
                self._waits.pop(corr, None)
        raise VerifyTimeout(device, cmd["request_id"], timeout_s, refused)

    def _check(self, msg: Message, device: str, keys: dict, cmd: dict, sent: float
               ) -> tuple[VerifiedResult | None, str | None]:
        """(result, None) for a good answer; (None, reason) for a refused one; (None, None)
        for another request's result on the device's R/result."""
        try:
            v = verify(msg.payload, keys, msg.topic)
        except SignatureError as exc:
            return None, str(exc)
        p = v.payload
        if payload_problem(p):
            return None, "bad_payload"
        if p["dev"] != device:
            return None, "wrong_device"
        if p.get("request_id") != cmd["request_id"]:
            return None, None if msg.topic != self.reply_topic else "wrong_request_id"
        if p.get("nonce") != cmd["nonce"]:
            return None, "wrong_nonce"
        skew = self.cfg.clock_skew_s
        if not (int(sent) - skew <= p["iat"] <= time.time() + skew):
            return None, "stale"
        if not self.store.advance_client_seq(device, p["seq"]):
            return None, "replayed_seq"
        return VerifiedResult(device, p["decision"], p.get("reason"), p["request_id"], p.get("session"), p["seq"],
                              float(p["iat"]), p.get("boot"), p.get("liveness") or {}, p.get("quality") or {},
                              p.get("models") or {}, p.get("policy"), v.kid.hex(), msg.topic, msg.payload), None
