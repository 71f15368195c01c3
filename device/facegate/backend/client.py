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
from dataclasses import dataclass, field
from pathlib import Path

from ..contract import Command, Result, SignatureError, SigningKey, Topics
from ..contract.cose import unverified_kid
from ..errors import FacegateError
from ..imageio import header_size
from ..signing import load_key
from ..vocab import Verdict
from .config import BackendConfig
from .mqtt import BrokerClient, Message
from .registry import Registry
from .store import Store


class ClientError(FacegateError):
    """Base of the request client's typed errors."""


class DeviceNotTrusted(ClientError):
    """The device has no active (enrolled or approved, not revoked) key."""


class ReferenceRefused(ClientError):
    """The reference is not something the terminals take (format, pixels, bytes): said
    before sending, instead of a silent broker drop or a bare `bad_reference`."""


class VerifyTimeout(ClientError):
    """No acceptable answer within the timeout; `refused` lists why answers that did come
    were not believed (e.g. bad_signature, wrong_nonce); `hint` says what to check."""

    def __init__(self, device: str, request_id: str, timeout_s: float, refused: list[str], hint: str = ""):
        why = f"; refused answers: {', '.join(refused)}" if refused else ""
        super().__init__(f"no answer from {device} to request {request_id} within {timeout_s:g} s{why}"
                         + (f": {hint}" if hint else ""))
        self.device, self.request_id, self.timeout_s, self.refused = device, request_id, timeout_s, refused
        self.hint = hint


@dataclass(frozen=True)
class VerifiedResult:
    """A terminal's answer that passed every check: the typed result's fields, and
    message: the signed bytes as received (proof for later), topic: the topic they are
    signed for."""

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
    detail: str = ""  # a rejected command's what-is-wrong, as the terminal signed it
    result: Result | None = field(default=None, repr=False)  # the typed result whole (every field, a new one too)

    @classmethod
    def of(cls, r: Result, kid: bytes, topic: str, message: bytes) -> VerifiedResult:
        return cls(r.dev, r.decision, r.reason, r.request_id or "", r.session, r.seq, float(r.iat), r.boot,
                   r.liveness, r.quality, r.models, r.policy, kid.hex(), topic, message, r.detail, r)

    def payload(self) -> dict:
        return {"dev": self.device, "decision": self.decision, "reason": self.reason, "request_id": self.request_id,
                "session": self.session, "seq": self.seq, "iat": self.iat, "boot": self.boot,
                "liveness": self.liveness, "quality": self.quality, "models": self.models, "policy": self.policy}


class VerifyRejected(ClientError):
    """The terminal refused the command (decision `rejected`), e.g. busy, expired,
    bad_reference; `result` is its verified answer; `detail` says what is wrong with a
    bad_reference (format, size: what the client can tell from the bytes it sent)."""

    def __init__(self, result: VerifiedResult, detail: str = ""):
        super().__init__(f"{result.device} rejected request {result.request_id}: {result.reason}"
                         + (f" ({detail})" if detail else ""))
        self.result, self.reason, self.detail = result, result.reason, detail


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
        self._status: dict[str, str] = {}  # device -> its retained R/status (online, offline, stopped)
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
            if msg.topic != self.reply_topic and msg.topic.endswith("/status"):
                dev = msg.topic.split("/")[-2]
                if msg.payload:
                    self._status[dev] = msg.payload.decode(errors="replace")[:32]
                else:  # the retained status was cleared
                    self._status.pop(dev, None)
                return
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
            raise DeviceNotTrusted(self._why_untrusted(device))
        self._check_reference(reference)
        topics = Topics.of(self.cfg.mqtt.prefix, device)
        now = time.time()
        cmd = Command.new(reference, now, min(self.cfg.command_lifetime_s, timeout_s + 30), request_id, challenge)
        signed = cmd.sign(self.key, topics.cmd_verify)
        if len(signed) > self.cfg.max_command_bytes:
            raise ReferenceRefused(f"the command would be {len(signed):,} bytes, over the terminals' limit of "
                                   f"{self.cfg.max_command_bytes:,} (daemon.max_command_bytes; the broker would drop it "
                                   "without a word): send a smaller reference (a JPEG of the portrait, not a scan)")
        broker = self._connect()
        with self._connect_lock:
            if device not in self._watched:
                broker.subscribe(topics.result, 1)
                broker.subscribe(topics.status, 1)
                self._watched.add(device)
        corr = os.urandom(16)
        wait = _Wait(device, cmd.request_id, queue.Queue())
        with self._lock:
            self._waits[corr] = wait
        refused: list[str] = []
        try:
            broker.publish(topics.cmd_verify, signed, 1,
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
                        raise VerifyRejected(result, result.detail or (_reference_detail(reference)
                                             if result.reason == "bad_reference" else ""))
                    return result
                if why:
                    refused.append(why)
        finally:
            with self._lock:
                self._waits.pop(corr, None)
        raise VerifyTimeout(device, cmd.request_id, timeout_s, refused, self._why_silent(device, refused))

    def _check_reference(self, reference: bytes) -> None:
        """A reference over the terminals' limits is refused here, with its size (the
        terminal would answer a bare bad_reference, or the broker drop the command)."""
        head = header_size(reference)
        if head is not None and head[1] * head[2] > self.cfg.max_reference_pixels:
            fmt, w, h = head
            raise ReferenceRefused(f"the reference is {w}x{h} ({w * h / 1e6:.1f} MP); the terminals take at most "
                                   f"{self.cfg.max_reference_pixels / 1e6:.1f} MP (daemon.max_reference_pixels): "
                                   "scale it down (an ID portrait needs well under 1 MP)")

    def _why_untrusted(self, device: str) -> str:
        rows = self.store.keys(device)
        pending = [r.kid for r in rows if r.state == "pending"]
        if pending:
            return (f"{device}'s key {pending[0]} is pending, not approved: facegate backend devices approve {device}"
                    " (after checking it is the terminal's: 'facegate keys show' on it)")
        if any(r.state == "revoked" for r in rows):
            return (f"{device}'s key is revoked: it gets no commands. To trust the terminal again, give it a new key "
                    f"('facegate keys rotate' on it) and enrol that: facegate backend devices enrol FILE --device {device}")
        return (f"{device} is not enrolled: on the terminal 'facegate keys show > {device}.key', then "
                f"facegate backend devices enrol {device}.key --device {device}")

    def _why_silent(self, device: str, refused: list[str]) -> str:
        """What a timeout most likely means, from what did (not) arrive."""
        with self._lock:
            status = self._status.get(device)
        unknown = [w.split(" ", 1)[1] for w in refused if w.startswith("unknown_key ")]
        if unknown:
            kid = unknown[0]
            pend = [r for r in self.store.keys(device) if r.kid == kid and r.state == "pending"]
            if pend:
                return (f"its answers are signed by its pending key {kid} (a key rotation?): approve it with "
                        f"facegate backend devices approve {device}")
            return (f"its answers are signed by key {kid}, which is not {device}'s enrolled key (a key rotation?): "
                    f"facegate backend devices pending --scan 2, then facegate backend devices approve {device}")
        if status is None:
            return (f"{device} never connected to this broker (no retained {self.cfg.mqtt.prefix}/{device}/status): "
                    "check its device_id, its [mqtt] section and its broker user ('facegate selftest' on it)")
        if status != "online":
            return f"{device} is {status} (its retained status): start it, or check its network and broker login"
        return (f"{device} is online but silent: it most likely does not trust this backend's key (kid "
                f"{self.key.kid.hex()}): its mqtt.trusted_keys must hold {self.key.public.hex()} "
                "(on the terminal: 'facegate status' counts such commands as 'ignored: unknown_key')")

    def _check(self, msg: Message, device: str, keys: dict, cmd: Command, sent: float
               ) -> tuple[VerifiedResult | None, str | None]:
        """(result, None) for a good answer; (None, reason) for a refused one; (None, None)
        for another request's result on the device's R/result."""
        try:
            r, v = Result.verify(msg.payload, keys, msg.topic)
        except SignatureError as exc:
            if str(exc) == "unknown_key" and (kid := unverified_kid(msg.payload)):
                return None, f"unknown_key {kid.hex()}"
            return None, str(exc)
        if r.dev != device:
            return None, "wrong_device"
        if r.request_id != cmd.request_id:
            return None, None if msg.topic != self.reply_topic else "wrong_request_id"
        if r.nonce != cmd.nonce:
            return None, "wrong_nonce"
        skew = self.cfg.clock_skew_s
        if not (int(sent) - skew <= r.iat <= time.time() + skew):
            return None, "stale"
        if not self.store.advance_client_seq(device, r.seq):
            return None, "replayed_seq"
        return VerifiedResult.of(r, v.kid, msg.topic, msg.payload), None


def _reference_detail(reference: bytes) -> str:
    """Why a terminal refused these bytes as bad_reference, as far as their header tells."""
    head = header_size(reference)
    if head is None:
        return "not a JPEG, PNG, BMP or WebP image"
    fmt, w, h = head
    if w * h == 0:
        return f"corrupt: no image size in its {fmt.upper()} header"
    return f"a {w}x{h} {fmt.upper()} the terminal could not decode (corrupt or truncated?), or smaller than 16 pixels"
