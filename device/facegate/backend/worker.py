"""The fleet consumer (`facegate backend serve`): one worker of a shared-subscription group.

Every worker of a group subscribes to $share/{group}/{prefix}/+/result (and +/health) on a
persistent session, so the broker spreads the fleet's results over the workers, on one
machine or many, and keeps a stopped worker's share (and what it had in flight) for it
until it comes back under the same name. Status and attestations are retained and few:
each worker subscribes to them directly.

Results are taken in batches: each one checked (trust.check_result), written in ONE
database transaction — the audit row once per (dev, seq) with INSERT ... ON CONFLICT DO
NOTHING, or a quarantine row with the reason — and only after the COMMIT acknowledged
(PUBACK, paho's manual ack) in the order received. A worker killed at any point loses
nothing: the broker sends what was not acknowledged again, and what was already stored is
a duplicate that changes nothing. A database that fails (StoreError.outage: connection,
lock, disk, serialization) keeps the batch unacknowledged and retried with back-off.

A message that cannot be stored never stalls the rest: every terminal-supplied field is
checked before the database (limits.py) and a message that fails is quarantined with its
reason; anything that still fails to store (any other exception, or a database refusal of
the data) sends the batch through again one message per transaction, and the message that
fails alone becomes a quarantine row `unstorable` (or, if even that fails, is counted in
`dropped`) and is acknowledged.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

from ..contract import HealthReport, MalformedMessage
from ..vocab import Presence
from . import limits
from .config import BackendConfig
from .metrics import NoMetrics
from .mqtt import BrokerClient, BrokerError, Message
from .probe import Probe
from .registry import Registry
from .store import ResultRow, Store, StoreError, json_text
from .trust import Keyring, Verdict, check_attest, check_result, topic_device

log = logging.getLogger(__name__)
QUARANTINE_LOG_S = 60.0  # one log line per device and reason this often
QUARANTINE_HINTS = {"revoked_key": " ({dev}'s key is revoked: 'facegate backend devices' shows it)",
                    "unapproved_key": " (a key of {dev} not yet approved: facegate backend devices approve {dev})",
                    "unknown_device": " (not enrolled: facegate backend devices enrol FILE --device {dev})"}
STATUS_WORDS = tuple(Presence)
STATS_EVERY_S = 60.0  # the worker's counters in its log


@dataclass
class WorkerStats:
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    other: int = 0  # status, health, attest
    batches: int = 0
    db_errors: int = 0
    not_acked: int = 0  # acks whose connection was gone (the broker re-sends those)
    unstorable: int = 0  # messages the database refused alone: quarantined as `unstorable`
    dropped: int = 0  # messages that could not even be quarantined (acknowledged, logged)
    purged: int = 0  # quarantine rows deleted for age
    reconnects: int = 0  # sessions found stalled by the probe (probe.py) and reconnected


def _outage(exc: BaseException) -> bool:
    """The database failed (retry later), as opposed to the message being unstorable."""
    return isinstance(exc, StoreError) and exc.outage


class Worker:
    def __init__(self, cfg: BackendConfig, store: Store | None = None, metrics: NoMetrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or NoMetrics()  # metrics.WorkerMetrics: counted after each COMMIT
        s = cfg.serve
        self.name = s.worker
        self.client_id = f"{cfg.mqtt.client_id or 'facegate-backend'}-w{s.worker}"
        self._quarantine_said: dict[tuple[str | None, str], float] = {}  # (dev, reason) -> last logged
        self.prefix = cfg.mqtt.prefix.rstrip("/")
        self.store = store
        self.stats = WorkerStats()
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._ring, self._ring_at, self._ring_stale = Keyring(), 0.0, False
        self.subscriptions = ((f"$share/{s.group}/{self.prefix}/+/result", 1),
                              (f"$share/{s.group}/{self.prefix}/+/health", 0),
                              (f"{self.prefix}/+/status", 1), (f"{self.prefix}/+/attest", 1),
                              (self._probe_topic(self.client_id), 1))
        self.broker = BrokerClient(cfg.mqtt, self.client_id, on_message=self._receive,
                                   session_expiry_s=s.session_expiry_s, manual_ack=True, receive_max=s.receive_max)
        self._probes = {self._probe_topic(self.client_id): Probe(self.broker, self._probe_topic(self.client_id),
                                                                 s.probe_s)}
        self._busy_at = 0.0
        # the journal: one more persistent session with a plain (not shared) subscription to
        # every result, which a broker restores after a restart even where it forgets shared
        # subscriptions (Mosquitto 2.0); its copies are mostly duplicates, stored at most once
        self.journal = None
        if s.journal:
            self.journal = BrokerClient(cfg.mqtt, f"{self.client_id}-journal", on_message=self._receive,
                                        session_expiry_s=s.session_expiry_s, manual_ack=True,
                                        receive_max=s.receive_max, journal=True)
            topic = self._probe_topic(f"{self.client_id}-journal")
            self._probes[topic] = Probe(self.journal, topic, s.probe_s)

    def _probe_topic(self, client_id: str) -> str:
        return f"{self.prefix}/_probe/{client_id}/ping"  # three levels: no +/result etc. matches it

    def _receive(self, m: Message) -> None:
        """paho's thread: a message for the inbox, or one of our probes coming back."""
        probe = self._probes.get(m.topic)
        if probe is None or not probe.receive(m):
            self._inbox.put(m)

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> WorkerStats:
        """Consume until `stop` is set; the batch in hand is committed and acknowledged."""
        if self.store is None:
            self.store = Store.open(self.cfg.store)
        self.broker.start(wait=False)
        if self.journal:
            self.journal.start(wait=False)
        try:
            if not self._wait_for_broker(self.broker, stop):
                return self.stats
            for topic, qos in self.subscriptions:  # each SUBACK awaited; renewed on every reconnect
                self.broker.subscribe(topic, qos)
            if self.journal:
                if not self._wait_for_broker(self.journal, stop):
                    return self.stats
                self.journal.subscribe(f"{self.prefix}/+/result", 1)
                self.journal.subscribe(self._probe_topic(f"{self.client_id}-journal"), 1)
            log.info("worker %s (client id %s) subscribed: %s", self.name, self.client_id,
                     ", ".join(t for t, _ in self.subscriptions))
            if ready:
                ready.set()
            next_log = time.monotonic()
            while not stop.is_set():
                if self.broker.taken_over:  # a second worker under this name: refuse to flap forever
                    raise BrokerError(self.broker.taken_over)
                if time.monotonic() >= next_log:
                    self._purge()
                    log.info("worker %s: %s", self.name, self.stats)
                    next_log += STATS_EVERY_S
                try:
                    batch = [self._inbox.get(timeout=0.2)]
                except queue.Empty:
                    for probe in self._probes.values():
                        self.stats.reconnects += probe.tick(self._busy_at)
                    continue
                while len(batch) < self.cfg.serve.batch_max:
                    try:
                        batch.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                self._commit_with_retry(batch, stop)
                self._busy_at = time.monotonic()
        finally:
            self.broker.close()
            if self.journal:
                self.journal.close()
            if self.store:
                self.store.close()
        return self.stats

    def _wait_for_broker(self, client: BrokerClient, stop: threading.Event) -> bool:
        """Wait for the first connection until `stop` (a broker down at start, or restarting,
        is waited for, and said so in the log every connect_timeout_s); False when stopped."""
        waited, every = 0.0, self.cfg.mqtt.connect_timeout_s
        while not stop.is_set():
            try:
                client.wait_connected(0.5)
                return True
            except BrokerError:
                waited += 0.5
                if waited >= every:
                    log.warning("worker %s: no connection to the broker for %g s (%s); still trying", self.name,
                                every, client.last_error or "no answer")
                    waited = 0.0
        return False

    def _purge(self) -> None:
        try:
            n = self._db.purge_quarantine(time.time() - self.cfg.serve.quarantine_max_age_s)
        except StoreError as exc:
            log.error("purging the quarantine failed: %s", exc)
            return
        self.stats.purged += n
        if n:
            log.info("worker %s: %d quarantine row(s) older than %g s purged", self.name, n,
                     self.cfg.serve.quarantine_max_age_s)

    def _commit_with_retry(self, batch: list[Message], stop: threading.Event) -> None:
        delay = 0.5
        while True:
            try:
                try:
                    self.process(batch)
                except Exception as exc:
                    if _outage(exc):
                        raise
                    log.warning("a message in a batch of %d cannot be stored (%s); storing them one by one",
                                len(batch), _why(exc))
                    for m in batch:
                        self._store_alone(m)
                break
            except Exception as exc:  # the database failed: nothing acked, the batch retried
                self.stats.db_errors += 1
                log.error("storing %d message(s) failed (retrying in %.1f s): %s", len(batch), delay, exc)
                if stop.wait(delay):
                    return  # not acknowledged: the broker sends them again to whoever takes them
                delay = min(delay * 2, 10.0)
                self._reopen()
        for m in batch:
            client = self.journal if m.via_journal and self.journal else self.broker
            if not client.ack(m):
                self.stats.not_acked += 1

    def _store_alone(self, m: Message) -> None:
        """One message in its own transaction; a failure that is not an outage makes it an
        `unstorable` quarantine row (raises on an outage)."""
        try:
            self.process([m])
            return
        except Exception as exc:
            if _outage(exc):
                raise
            why = _why(exc)
        self.stats.unstorable += 1
        log.warning("message on %.200r unstorable (%s): quarantined", m.topic, why)
        try:
            self.metrics.begin()  # what the failed attempt staged is not counted
            with self._db.transaction():
                self._quarantine(m, topic_device(m.topic, self.prefix, m.topic.rsplit("/", 1)[-1]),
                                 "unstorable", time.time(), WorkerStats())
            self.stats.quarantined += 1
            self.metrics.committed()
        except Exception as exc:
            if _outage(exc):
                raise
            self.stats.dropped += 1
            log.error("message on %.200r could not be quarantined either (%s): dropped", m.topic, _why(exc))

    def _reopen(self) -> None:
        try:
            if self.store:
                self.store.close()
            self.store = Store.open(self.cfg.store)
        except Exception as exc:  # still down: the next retry tries again
            log.error("reopening the database failed: %s", exc)

    @property
    def _db(self) -> Store:
        assert self.store is not None, "run() opens the store"
        return self.store

    # -- one batch, one transaction ---------------------------------------------------
    def _keyring(self, force: bool = False) -> Keyring:
        now = time.monotonic()
        if force or now - self._ring_at >= self.cfg.serve.key_refresh_s:
            self._ring, self._ring_at = Registry(self._db).keyring(), now
        return self._ring

    def process(self, batch: list[Message]) -> None:
        """Check and store every message of `batch` in one transaction (no acks here)."""
        counts = WorkerStats()
        ring = self._keyring()
        devices: list[tuple[str, int, str | None]] = []  # (dev, seq, decision or None: seen only)
        self.metrics.begin()
        with self._db.transaction():
            now = time.time()
            for m in batch:
                if len(m.payload) > self.cfg.mqtt.max_packet_bytes:  # the broker should not have sent it
                    self._quarantine(m, topic_device(m.topic, self.prefix, m.topic.rsplit("/", 1)[-1]), "too_large",
                                     now, counts)
                elif m.topic.endswith("/result"):
                    if self._ring_stale:  # an attestation in this batch added a key
                        ring, self._ring_stale = self._keyring(force=True), False
                    v = check_result(m.payload, m.topic, self.prefix, ring)
                    if not v.accepted and v.reason in ("unknown_key", "unknown_device") and \
                            time.monotonic() - self._ring_at > 0.5:  # enrolled a moment ago?
                        ring = self._keyring(force=True)
                        v = check_result(m.payload, m.topic, self.prefix, ring)
                    self._store_result(m, v, now, counts, ring, devices)
                else:
                    self._store_other(m, now, counts)
                    counts.other += 1
            # the devices rows last and in one order: two workers upserting the same rows in
            # their batches' orders deadlocked on PostgreSQL (retried, but a batch lost 0.5 s)
            for dev, seq, decision in sorted(devices, key=lambda d: (d[0], d[1])):
                if decision is None:
                    self._db.device_seen(dev, now)
                else:
                    self._db.device_result(dev, seq, decision, now)
        s = self.stats
        s.stored += counts.stored
        s.duplicates += counts.duplicates
        s.quarantined += counts.quarantined
        s.other += counts.other
        s.batches += 1
        self.metrics.committed()

    def _quarantine(self, m: Message, dev: str | None, reason: str, now: float, counts: WorkerStats) -> None:
        """A quarantine row: the digest of the whole message, and the message itself only
        when it may be stored later (a key not yet trusted; `unstorable`, which a fixed
        backend can ingest again) and fits a packet, else its first QUARANTINE_KEEP_BYTES."""
        digest = hashlib.sha256(m.topic.encode() + b"\0" + m.payload).hexdigest()
        whole = reason in (*KEY_REASONS, "unstorable") and len(m.payload) <= self.cfg.mqtt.max_packet_bytes
        kept = m.payload if whole else m.payload[:limits.QUARANTINE_KEEP_BYTES]
        topic = m.topic[:limits.MAX_TEXT * 2].replace("\x00", "?")
        new = self._db.quarantine(digest, topic, dev, reason, kept, m.t_received, self.name, len(m.payload))
        counts.quarantined += 1
        self.metrics.quarantined(reason, new)
        if now - self._quarantine_said.get((dev, reason), -QUARANTINE_LOG_S) >= QUARANTINE_LOG_S:  # no flood
            self._quarantine_said[(dev, reason)] = now
            log.warning("a result on %s quarantined: %s%s", m.topic, reason, QUARANTINE_HINTS.get(reason, "")
                        .format(dev=dev))

    def _store_result(self, m: Message, v: Verdict, now: float, counts: WorkerStats, ring: Keyring,
                      devices: list[tuple[str, int, str | None]]) -> None:
        """The audit row (or a quarantine row); what it changes in `dev`'s devices row is
        appended to `devices`, for process() to write at the end."""
        if not v.accepted:
            self._quarantine(m, v.dev, v.reason or "bad_payload", now, counts)
            return
        r = v.result
        assert r is not None and v.dev is not None and v.kid is not None  # accepted: check_result filled them
        row = ResultRow.of(r, dev=v.dev, kid=v.kid.hex(), topic=m.topic, message=m.payload, received_at=m.t_received,
                           stored_at=now, worker=self.name)
        if self._db.insert_result(row):
            counts.stored += 1
            self.metrics.stored(r.decision, r.iat)
            if v.retired:  # signed before a rotation: in the audit, never the device's newest
                devices.append((v.dev, r.seq, None))
                return
            devices.append((v.dev, r.seq, r.decision))
            if r.seq <= ring.retired_bound.get(v.dev, -1):
                # the new key's first result: the retired key vouches for nothing from this seq on
                self._db.cap_retired(v.dev, r.seq)
                self._ring_stale = True
        elif self._db.stored_message(v.dev, r.seq) == m.payload:
            counts.duplicates += 1  # at-least-once delivery: the same signed bytes again
        else:  # the device signed two different results with one seq: keep the first, show the second
            self._quarantine(m, v.dev, "conflicting_duplicate", now, counts)

    def _store_other(self, m: Message, now: float, counts: WorkerStats) -> None:
        leaf = m.topic.rsplit("/", 1)[-1]
        dev = topic_device(m.topic, self.prefix, leaf)
        if dev is None:
            return
        if leaf == "status":
            word = m.payload.decode("utf-8", "replace").strip()
            if word in STATUS_WORDS:
                self._db.device_status(dev, word, now, seen=not m.retain)
        elif leaf == "health":
            try:
                health = HealthReport.parse(m.payload)
            except MalformedMessage:
                self._quarantine(m, dev, "bad_health", now, counts)
                return
            self._db.device_health(dev, json_text(health.doc), health.outbox_depth, now)
        elif leaf == "attest":
            att = check_attest(m.payload, m.topic, self.prefix)
            if att is None:
                self._quarantine(m, dev, "bad_attest", now, counts)
            elif Registry(self._db).observe_attest(att, now):
                self._ring_stale = True
                log.warning("%s announced a key not yet approved (kid %s): 'facegate backend devices pending'",
                            att.dev, att.kid.hex())


def _local_worker(store: Store, prefix: str, name: str) -> Worker:
    """A worker for results that come some other way than the broker (never started)."""
    return Worker(BackendConfig.model_validate({"mqtt": {"prefix": prefix}, "serve": {"worker": name}}), store)


def ingest(store: Store, prefix: str, topic: str, message: bytes, worker: str = "local") -> str:
    """Store one result received some other way (a file, the demo's outbox) exactly as a
    serve worker would; returns 'stored', 'duplicate' or 'quarantined: <reason>'."""
    w = _local_worker(store, prefix, worker)
    w.process([Message(topic, message, 1, 0, False, False, None, 0)])
    if w.stats.stored:
        return "stored"
    if w.stats.duplicates:
        return "duplicate"
    reason = store.query("SELECT reason FROM quarantine WHERE digest = ?",
                         (hashlib.sha256(topic.encode() + b"\0" + message).hexdigest(),))
    return f"quarantined: {reason[0][0] if reason else '?'}"


KEY_REASONS = ("unknown_device", "unknown_key", "unapproved_key")


def _why(exc: BaseException) -> str:
    """An exception in one bounded line for the log (a poison message's text is the attacker's)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]!r}"


def recheck_quarantine(store: Store, prefix: str, dev: str) -> int:
    """After an enrolment or approval: `dev`'s results quarantined for want of a trusted key
    are checked again; those that verify now are stored (with their received_at) and leave
    the quarantine. Returns how many."""
    rows = store.query(f"SELECT digest, topic, message, received_at FROM quarantine WHERE dev = ? AND reason IN "
                       f"({', '.join('?' for _ in KEY_REASONS)}) ORDER BY received_at", (dev, *KEY_REASONS))
    w, moved = _local_worker(store, prefix, "recheck"), 0
    for digest, topic, message, received_at in rows:
        before = w.stats.stored + w.stats.duplicates
        w.process([Message(topic, bytes(message), 1, 0, False, False, None, 0, t_received=received_at)])
        if w.stats.stored + w.stats.duplicates > before:
            with store.transaction():
                store.execute("DELETE FROM quarantine WHERE digest = ?", (digest,))
            moved += 1
    return moved


def scan_attestations(cfg: BackendConfig, store: Store, seconds: float) -> int:
    """Listen to the retained {prefix}/+/attest messages for `seconds` and record their keys
    (new ones as pending); returns how many attestations were seen."""
    got: queue.Queue[Message] = queue.Queue()
    prefix = cfg.mqtt.prefix.rstrip("/")
    b = BrokerClient(cfg.mqtt, f"{cfg.mqtt.client_id or 'facegate-backend'}-scan-{time.monotonic_ns() % 10**8}",
                     on_message=got.put, subscriptions=((f"{prefix}/+/attest", 1),))
    b.start()
    try:
        time.sleep(seconds)
    finally:
        b.close()
    registry, seen = Registry(store), 0
    while not got.empty():
        m = got.get()
        att = check_attest(m.payload, m.topic, prefix)
        if att is not None:
            registry.observe_attest(att, time.time())
            seen += 1
    return seen
