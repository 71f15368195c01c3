"""Command admission: a message on the command topic in, an accepted request, a refusal to
answer or an input to count and ignore out. No broker, no threads of its own: the daemon
calls it from paho's thread (`authenticate`, the first gate) and from its command thread
(`admit`, the second), and acts on the typed answer.

The gates, in order: the size and the COSE signature against the trusted backend keys
(anything else is never answered: ignored, counted by reason); the ids, which are spent
(recorded in the outbox) before anything is answered, so the same bytes again are a replay
(ignored) also once the record was purged (the outbox's replay floor); then the command's
lifetime and payload, the free storage and a free session slot (refused: one signed answer
bound to the command's ids). Where the answer goes: R/result, and an MQTT 5 response topic
only when it is a plain topic under mqtt.response_prefix outside the device's own topics.
"""
from __future__ import annotations

import logging
import queue
import shutil
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .contract import (
    CommandRejected,
    Topics,
    Verified,
    VerifyCommand,
    authenticate,
    check_command,
    identify,
    kid_of,
    public_from_hex,
    public_raw,
)
from .outbox import Outbox, OutboxError
from .ports import Inbound
from .status import Health
from .vocab import Refusal

log = logging.getLogger("facegate.admission")

INBOUND_SLOTS = 64  # authentic commands waiting for the command thread (bounded in bytes too)


def trusted_keys(cfg: Config) -> dict:
    """kid -> Ed25519 public key, for every configured backend key."""
    out = {}
    for text in cfg.mqtt.trusted_keys:
        pub = public_from_hex(text)
        out[kid_of(public_raw(pub))] = pub
    return out


def valid_response_topic(topic: str | None, prefix: str, forbidden: tuple[str, ...] = ()) -> bool:
    """An MQTT 5 response topic the daemon will publish an authenticated command's answer
    to: a plain topic name (no wildcards, not a $SYS-style name, no NUL, at most 256
    characters) under `prefix` (a whole level: "a/b" allows "a/b/x", not "a/bx"; empty
    prefix: none) and under none of the `forbidden` roots (the device's own topics, Home
    Assistant's). Others are ignored and the answer goes to R/result only."""
    if not topic or not prefix or len(topic) > 256 or any(c in topic for c in "+#\0") or topic.startswith("$"):
        return False
    under = lambda root: topic.startswith(root.rstrip("/") + "/")  # noqa: E731
    return under(prefix) and not any(under(root) for root in forbidden)


@dataclass
class Request:
    """A session to run: the checked command plus where to answer."""

    command: VerifyCommand
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True)
class Authentic:
    """A message on the command topic whose signature checked out (contract.authenticate)."""

    msg: Inbound
    verified: Verified


@dataclass(frozen=True)
class Accepted:
    """Admitted: run a session for it."""

    request: Request


@dataclass(frozen=True)
class Refused:
    """Answer `rejected` with `reason`, bound to the command's ids, to R/result (and the
    response topic when there is a valid one)."""

    reason: str
    request_id: str
    nonce: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    detail: str = ""  # what is wrong, in a few words (bad_reference: format or size)


@dataclass(frozen=True)
class Ignored:
    """Never answered, only counted: not authentic, no usable ids, a replay, a redelivery."""

    reason: str


@dataclass(frozen=True)
class Dropped:
    """The ids could not be recorded (the outbox is unusable): nothing can be answered."""

    error: str


Admission = Accepted | Refused | Ignored | Dropped


class InboundQueue:
    """Authentic commands for the command thread, bounded in count and in bytes: put()
    waits for room (the broker holds back what follows) rather than dropping a command
    the broker was told is delivered. One message larger than max_bytes still fits alone."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: deque = deque()
        self._bytes = 0
        self._cv = threading.Condition()

    def put(self, item, nbytes: int, stop: threading.Event) -> bool:
        """Queue item (waiting for room); False only when `stop` was set meanwhile."""
        with self._cv:
            while self._items and (len(self._items) >= self.max_items or self._bytes + nbytes > self.max_bytes):
                if stop.is_set():
                    return False
                self._cv.wait(0.2)
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._cv.notify_all()
            return True

    def get(self, timeout_s: float):
        """The oldest item, or None after timeout_s."""
        with self._cv:
            if not self._items:
                self._cv.wait(timeout_s)
                if not self._items:
                    return None
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cv.notify_all()
            return item

    @property
    def bytes(self) -> int:
        return self._bytes


class Gate:
    """The admission rules of one terminal. outbox: where ids are spent (and the replay
    floor kept); clock: wall time (seconds); held: results waiting in memory for disk
    space (any: storage is not ok); `trusted` is replaced on SIGHUP (trusted_keys)."""

    def __init__(self, cfg: Config, topics: Topics, outbox: Outbox, clock: Callable[[], float],
                 held: Callable[[], int] = lambda: 0):
        self.cfg, self.topics, self.outbox, self.clock, self.held = cfg, topics, outbox, clock, held
        self.trusted = trusted_keys(cfg)
        self.state_dir = Path(cfg.daemon.state_dir)

    def authenticate(self, msg: Inbound) -> Authentic | Ignored | None:
        """The first gate (paho's thread): size and signature; None: not a command."""
        if msg.topic != self.topics.cmd_verify:
            return None
        try:
            return Authentic(msg, authenticate(msg.payload, msg.topic, self.trusted,
                                               max_bytes=self.cfg.daemon.max_command_bytes))
        except CommandRejected as rej:
            return Ignored(rej.reason)

    def storage_ok(self) -> bool:
        """No result held in memory and the state dir has daemon.min_free_mb free."""
        if self.held():
            return False
        try:
            free_mb = shutil.disk_usage(self.state_dir).free / 2**20
        except OSError:
            return False
        return free_mb >= self.cfg.daemon.min_free_mb

    def admit(self, a: Authentic, busy: bool) -> Admission:
        """The second gate: an authentic command gets exactly one signed answer bound to
        its request_id and nonce, or none; its ids are spent before anything is answered.
        busy: no free session slot."""
        d, msg = self.cfg.daemon, a.msg
        try:
            ids = identify(a.verified, skew_s=d.clock_skew_s)
        except CommandRejected as rej:
            return Ignored(rej.reason)
        try:
            replay = self.outbox.remember(ids.request_id, ids.nonce, ids.keep_until)
        except OutboxError as exc:
            return Dropped(str(exc))
        if replay == "same_command":  # QoS 1 is at least once: taken already, or replayed
            return Ignored(Refusal.REDELIVERED if msg.redelivered else Refusal.REPLAYED_REQUEST_ID)
        if replay:
            return Ignored(replay)
        mq = self.cfg.mqtt
        rt = msg.response_topic if valid_response_topic(msg.response_topic, mq.response_prefix,
                                                         (self.topics.root, mq.ha_prefix)) else None
        corr = msg.correlation if rt else None
        try:
            cmd = check_command(a.verified, self.clock(), max_bytes=d.max_command_bytes,
                                max_age_s=d.command_max_age_s, skew_s=d.clock_skew_s,
                                max_pixels=d.max_reference_pixels)
        except CommandRejected as rej:
            return Refused(rej.reason, ids.request_id, ids.nonce, rt, corr, rej.detail)
        if not self.storage_ok():
            return Refused(Refusal.STORAGE_FULL, ids.request_id, ids.nonce, rt, corr)
        if busy:
            return Refused(Refusal.BUSY, ids.request_id, ids.nonce, rt, corr)
        return Accepted(Request(cmd, rt, corr))


class Intake:
    """The gates on their threads. paho's thread: `receive` authenticates and queues what
    is authentic, waiting for room; the command thread (`run`): admits each, puts accepted
    requests in `requests` (the sessions' queue), has refusals answered (`answer`: one
    signed `rejected`), counts the rest in `health`."""

    def __init__(self, gate: Gate, health: Health, requests: queue.Queue, answer: Callable[[Refused], None],
                 stop: threading.Event):
        self.gate, self.health, self.requests, self.answer, self.stop = gate, health, requests, answer, stop
        self.inbound = InboundQueue(INBOUND_SLOTS, 2 * gate.cfg.daemon.max_command_bytes)

    def authenticate(self, msg: Inbound) -> Authentic | None:
        a = self.gate.authenticate(msg)
        if isinstance(a, Ignored):
            self.health.ignore(a.reason)
            log.debug("ignored a message on %s: %s", msg.topic, a.reason)
            return None
        return a

    def receive(self, msg: Inbound) -> None:
        """paho's network thread: authenticate, queue what is authentic (waiting for room)."""
        a = self.authenticate(msg)
        if a is not None and not self.inbound.put(a, len(msg.payload), self.stop):
            log.warning("stopping: an authentic command was not queued")

    def handle(self, msg: Inbound) -> None:
        """One message, start to end, on the calling thread (the demo; tests)."""
        a = self.authenticate(msg)
        if a is not None:
            self.act(a)

    def act(self, a: Authentic) -> None:
        """Admit (Gate.admit) and act: queue, answer or count."""
        r = self.gate.admit(a, busy=self.requests.full())  # only this thread puts: a free slot stays free
        if isinstance(r, Accepted):
            self.requests.put_nowait(r.request)
            log.info("command accepted (request %s, %d waiting)", r.request.command.request_id, self.requests.qsize())
        elif isinstance(r, Refused):
            self.health.rejected += 1
            log.info("command rejected: %s (request %s)", r.reason, r.request_id)
            self.answer(r)
        elif isinstance(r, Ignored):
            self.health.ignore(r.reason)
            log.info("command ignored: %s", r.reason)
        else:
            self.health.dropped_commands += 1
            log.error("command dropped, outbox unusable: %s", r.error)

    def run(self, between: Callable[[], None] = lambda: None) -> None:
        """The command thread, until stop: each queued authentic command in turn; `between`
        runs before each wait (the daemon re-sends Home Assistant discovery there)."""
        while not self.stop.is_set():
            between()
            a = self.inbound.get(timeout_s=0.5)
            if a is None:
                continue
            try:
                self.act(a)
            except Exception:  # never let one message kill the command thread
                log.exception("handling a message on %s", a.msg.topic)
