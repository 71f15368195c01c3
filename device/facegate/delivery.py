"""Signed results from the outbox to the broker, in seq order, dropped only on PUBACK.

`Delivery.store(make)` puts a result into the outbox (or, when the disk is full, holds it
in memory in seq order and retries); `run()` (its own thread) publishes undelivered rows
oldest first with at most `max_inflight` unacknowledged, and forgets a row only when the
broker acknowledged it. After a reconnect everything unacknowledged, and what was
acknowledged within the outbox's keep_acked_s (a crashed broker may have lost it), is
re-published from the oldest (at least once: a duplicate carries the same seq and bytes).
The outbox alone drives re-sends: the MQTT adapter drops its client's own retries on
reconnect, so nothing overtakes an older result. A row no broker takes (an
invalid topic) is dropped and counted rather than blocking the rows behind it.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from .outbox import Outbox, OutboxError
from .ports import Publisher

log = logging.getLogger("facegate.delivery")
ACK_TIMEOUT_S = 30.0  # re-publish a row not acknowledged for this long while connected


class Delivery:
    """Thread-safe; `publisher` may be None (MQTT off: results stay in the outbox)."""

    def __init__(self, outbox: Outbox, publisher: Publisher | None, max_inflight: int, poll_s: float = 1.0):
        self.outbox, self.publisher, self.max_inflight = outbox, publisher, max_inflight
        self.poll_s = poll_s  # the thread's pass without a wake-up (a test lengthens it to see lost wake-ups)
        self.undeliverable = 0  # rows dropped because no broker takes their topic
        self._cv = threading.Condition()
        self._inflight: dict[tuple[int, str], float] = {}
        self._held: deque[Callable[[int], list]] = deque()  # result makers waiting for disk space, in order
        self._store_lock = threading.Lock()
        self._acked_unrecorded: set[tuple[int, str]] = set()  # PUBACKed, not yet deleted (disk full)
        self._stop = threading.Event()
        self._generation = 0  # bumped on (re)connect and loss: a publishing pass of an older one stops
        self._lost_at: float | None = None  # outbox clock when the connection was lost
        self._woken = False  # a wake-up the delivery thread has not acted on yet
        self._online = False  # between connected() and connection_lost(): the thread may publish

    @property
    def held(self) -> int:
        """Results waiting in memory for disk space."""
        return len(self._held)

    def store(self, make: Callable[[int], list]) -> int | None:
        """Give the result (a maker of its signed rows for a seq) to the outbox; returns the
        seq, or None when it is held in memory because the outbox cannot take it now."""
        with self._store_lock:
            if self._held:  # keep seq order behind results still waiting for the disk
                self._held.append(make)
                return None
            try:
                seq = self.outbox.add(make)
            except OutboxError as exc:
                self._held.append(make)
                log.error("a result cannot be stored yet (%s); held in memory and retried", exc)
                return None
        self.wake()
        return seq

    @property
    def needs_retry(self) -> bool:
        return bool(self._held or self._acked_unrecorded)

    def retry(self) -> None:
        """Store held results and forget acknowledged rows, as far as the disk allows."""
        with self._store_lock:
            while self._held:
                try:
                    self.outbox.add(self._held[0])
                except OutboxError:
                    break
                self._held.popleft()
                log.info("a held result is stored now (%d still held)", len(self._held))
        for key in list(self._acked_unrecorded):
            try:
                self.outbox.delivered(*key)
            except OutboxError:
                break
            self._acked_unrecorded.discard(key)
        self.wake()

    def wake(self) -> None:
        with self._cv:
            self._woken = True  # kept for run() if it is in a pass now, not waiting
            self._cv.notify_all()

    def acked_cutoff(self) -> float:
        """Acknowledged rows older than this (outbox clock) can go: the keep_acked_s before
        the connection was lost, or before now while connected."""
        lost = self._lost_at
        return (self.outbox.clock() if lost is None else lost) - self.outbox.keep_acked_s

    def connection_lost(self) -> None:
        """The broker is gone: remember when (the redelivery window counts back from
        here) and re-drive from the oldest undelivered row once it is back."""
        self._online = False
        if self._lost_at is None:
            self._lost_at = self.outbox.clock()
        self._restart()

    def connected(self) -> None:
        """(Re)connected: put the rows acknowledged in the keep_acked_s before the
        connection was lost back in line (a crashed broker may have lost them), then
        re-drive from the oldest undelivered row."""
        since = self.acked_cutoff()
        self._lost_at = None
        try:
            n = self.outbox.redeliver(since)
        except OutboxError as exc:
            log.error("%s", exc)
        else:
            if n:
                log.info("re-publishing %d message(s) acknowledged shortly before the reconnect", n)
        self._online = True
        self._restart()

    def _restart(self) -> None:
        with self._cv:
            self._generation += 1
            self._inflight.clear()
            self._woken = True
            self._cv.notify_all()

    def run(self) -> None:
        """The delivery thread: until stop()."""
        while not self._stop.is_set():
            with self._cv:
                if not self._woken:
                    self._cv.wait(timeout=self.poll_s)
                self._woken = False
            p = self.publisher
            # the publisher says connected before its on_connect ran connected(): a pass now
            # would publish rows that connected() is about to put back in line (duplicates)
            if p is None or not p.connected or not self._online or self._stop.is_set():
                continue
            self._publish(p)

    def _publish(self, p: Publisher) -> bool:
        """One pass over the oldest undelivered rows; it ends early when a reconnect
        restarts delivery from the oldest row. False: the outbox cannot be read."""
        now = time.monotonic()
        with self._cv:
            generation = self._generation
        try:
            rows = self.outbox.pending(limit=self.max_inflight * 2)
        except OutboxError as exc:
            log.error("%s", exc)
            return False
        for r in rows:
            key = (r.seq, r.topic)
            if key in self._acked_unrecorded:
                continue
            with self._cv:
                if self._generation != generation:  # reconnected meanwhile: start again from the oldest
                    return True
                t = self._inflight.get(key)
                if t is not None and now - t < ACK_TIMEOUT_S:
                    continue
                if len(self._inflight) >= self.max_inflight:
                    return True
                self._inflight[key] = now
            try:
                sent = p.publish(r.topic, r.message, qos=1, correlation=r.correlation,
                                 on_ack=functools.partial(self._acked, key),
                                 only_if=functools.partial(self._current, generation))
            except ValueError as exc:  # a topic no broker takes: drop it, counted, never block
                log.error("result %d cannot be published on %r (%s): dropped", r.seq, r.topic, exc)
                self.undeliverable += 1
                self._acked(key)
                continue
            if not sent:
                with self._cv:
                    self._inflight.pop(key, None)
                return True
        return True

    def _current(self, generation: int) -> bool:
        """Asked by the publisher in the same step as the message is taken: is the pass that
        decided to publish it still the pass of this connection? A thread held up between
        its check above and the publish would otherwise put a newer row onto the next
        connection ahead of the rows connected() puts back in line."""
        with self._cv:
            return self._generation == generation and self._online

    def _acked(self, key: tuple[int, str]) -> None:
        try:
            self.outbox.delivered(*key)
        except OutboxError as exc:  # delivered all the same: never publish it again
            log.error("%s; result %d is delivered and will be dropped from the outbox later", exc, key[0])
            self._acked_unrecorded.add(key)
        with self._cv:
            self._inflight.pop(key, None)
            self._woken = True
            self._cv.notify_all()

    def drain(self, timeout_s: float) -> None:
        """Before a clean exit: give the broker up to timeout_s to take what waits."""
        self.retry()
        deadline = time.monotonic() + timeout_s
        p = self.publisher
        while p is not None and p.connected and time.monotonic() < deadline and self.outbox.depth() > 0:
            if not self._publish(p):
                break
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self.wake()
