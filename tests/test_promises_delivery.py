"""Delivery's mutation survivors (issue 25), at its promises, in process: a real SQLite
outbox and the in-memory FakePublisher (as tests/test_delivery_inprocess.py). Nothing is
published between a lost connection and the handling of the reconnect; no MQTT (publisher
None) keeps results in the outbox without a crash; a late PUBACK of a connection since
replaced is harmless; an idle delivery thread waits instead of spinning; a retry records
the PUBACKs the full disk missed even while results are still held; drain() publishes all
that waits, pass after pass, within its time."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

from facegate import outbox as outbox_mod
from facegate.adapters.fake_mqtt import FakePublisher
from facegate.delivery import Delivery
from facegate.outbox import Outbox
from test_delivery_inprocess import FlakyOutbox, result, seqs


@contextmanager
def wired(ob: Outbox, ack_delay_s: float | None = 0.0, inflight: int = 4, poll_s: float = 1.0,
          thread: bool = True, mqtt: bool = True):
    """The delivery under test on `ob`, with a FakePublisher wired to it (none when not
    `mqtt`) and its own thread (none when not `thread`: drain() by hand); afterwards the
    thread stopped and the outbox closed. Yields (publisher, delivery, thread)."""
    pub = FakePublisher(ack_delay_s=ack_delay_s) if mqtt else None
    d = Delivery(ob, pub, inflight, poll_s=poll_s)
    if pub is not None:
        pub.start(lambda m: None, d.connected, d.connection_lost)
    t = threading.Thread(target=d.run, daemon=True) if thread else None
    if t is not None:
        t.start()
    try:
        yield pub, d, t
    finally:
        if t is not None:
            d.stop()
            t.join(5)
        ob.close()


def test_nothing_goes_out_between_a_lost_connection_and_the_handled_reconnect(tmp_path):
    """The publisher may say connected again before its on_connect ran connected(): rows
    published then would be put back in line by connected() and go out twice."""
    ob = Outbox(tmp_path / "outbox.sqlite")
    with wired(ob, poll_s=0.05) as (pub, d, _):
        d.store(result)
        pub.wait_for(lambda p: len(p.acked) == 1)
        d.connection_lost()  # paho's on_disconnect; the publisher (reconnected) says connected
        d.store(result)
        time.sleep(0.5)  # ten of the thread's passes
        assert seqs(pub.published) == [1] and ob.depth() == 1
        d.connected()
        pub.wait_for(lambda p: len(p.acked) == 2)
        assert seqs(pub.published) == [1, 2]


def test_without_mqtt_results_stay_in_the_outbox_and_the_thread_lives(tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite")
    with wired(ob, poll_s=0.05, mqtt=False) as (_, d, t):
        assert d.store(result) == 1
        d.wake()
        time.sleep(0.3)
        assert t.is_alive() and ob.depth() == 1
        d.drain(0.1)  # nothing to drain into: returns
        assert ob.depth() == 1


def test_a_late_puback_of_a_replaced_connection_is_harmless(tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite")
    with wired(ob, ack_delay_s=None, poll_s=0.05) as (pub, d, t):
        d.store(result)
        pub.wait_for(lambda p: len(p.published) == 1)
        late = pub.published[0]
        d.connection_lost()  # the delivery side forgets what was in flight
        d.connected()
        pub.wait_for(lambda p: len(p.published) == 2)  # sent again on the "new" connection
        pub.ack(mids=[late.mid])  # the old PUBACK arrives after all: recorded, no error
        pub.ack()
        assert ob.depth() == 0 and t.is_alive()


def test_an_idle_delivery_thread_waits_for_work_instead_of_spinning(tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite")
    passes = []
    real = ob.pending

    def pending(*a, **kw):
        passes.append(1)
        return real(*a, **kw)
    ob.pending = pending  # type: ignore[method-assign]
    with wired(ob, poll_s=0.2) as (pub, d, _):
        d.store(result)
        pub.wait_for(lambda p: len(p.acked) == 1)
        time.sleep(0.3)
        before = len(passes)
        time.sleep(1.0)  # idle: a pass per poll_s (5), not thousands
        assert len(passes) - before <= 10
        d.store(result)  # a wake-up is still acted on at once
        pub.wait_for(lambda p: len(p.acked) == 2, timeout_s=5)


def test_a_retry_records_missed_pubacks_even_while_results_are_still_held(tmp_path, caplog):
    caplog.set_level(logging.INFO, "facegate.delivery")
    ob = FlakyOutbox(tmp_path / "outbox.sqlite")
    with wired(ob, poll_s=0.05) as (pub, d, _):
        ob.full_delivered = True
        d.store(result)
        pub.wait_for(lambda p: len(p.acked) == 1)
        assert ob.depth() == 1 and d.needs_retry
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert said == ["outbox: database or disk is full; result 1 is delivered and will be dropped from the outbox "
                        "later"]
        ob.full_add = True
        assert d.store(result) is None and d.held == 1
        ob.full_delivered = False
        d.retry()  # the disk takes the PUBACK's record, not yet the held result
        assert ob.depth() == 0 and d.held == 1
        ob.full_add = False
        caplog.clear()
        d.retry()
        assert d.held == 0 and not d.needs_retry
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
            "a held result is stored now (0 still held)"]
        pub.wait_for(lambda p: len(p.acked) == 2)
        assert seqs(pub.published) == [1, 2]


def test_drain_publishes_everything_that_waits_pass_after_pass(tmp_path):
    """No delivery thread (a clean exit): one in flight at a time, immediate PUBACKs - ten
    passes, a few tens of milliseconds apart, well within the 5 s given."""
    ob = Outbox(tmp_path / "outbox.sqlite")
    # each PUBACK from the network thread, after its pass
    with wired(ob, ack_delay_s=0.01, inflight=1, thread=False) as (pub, d, _):
        for _ in range(10):
            d.store(result)
        d.drain(5.0)
        assert seqs(pub.acked) == list(range(1, 11)) and ob.depth() == 0
        d.store(result)
        d.drain(5.0)  # one alone is drained too
        pub.wait_for(lambda p: len(p.acked) == 11)
        assert ob.depth() == 0 and seqs(pub.acked)[-1] == 11
        passes = []
        real = ob.pending
        ob.pending = lambda *a, **kw: passes.append(1) or real(*a, **kw)  # type: ignore[method-assign]
        d.drain(5.0)  # nothing waits: no pass at all
        assert passes == []


def test_a_row_not_acknowledged_in_time_is_published_again_without_a_wake_up(tmp_path, monkeypatch):
    """ACK_TIMEOUT_S (30 s; 0.3 s here): a publish whose PUBACK never came goes out again
    on the thread's own pass (poll_s), with no other event to wake it."""
    import facegate.delivery as delivery_mod

    monkeypatch.setattr(delivery_mod, "ACK_TIMEOUT_S", 0.3)
    ob = Outbox(tmp_path / "outbox.sqlite")
    with wired(ob, ack_delay_s=None, poll_s=0.1) as (pub, d, _):
        d.store(result)
        pub.wait_for(lambda p: len(p.published) >= 2, timeout_s=10)
        assert seqs(pub.published)[:2] == [1, 1]


def test_a_reconnect_says_what_it_puts_back_in_line_and_why_it_cannot(tmp_path, caplog):
    caplog.set_level(logging.INFO, "facegate.delivery")
    ob = Outbox(tmp_path / "outbox.sqlite", keep_acked_s=60)
    pub = FakePublisher(ack_delay_s=0.0)
    d = Delivery(ob, pub, 4)
    pub.start(lambda m: None, d.connected, d.connection_lost)
    d.store(result)
    d.store(result)
    d.drain(5.0)
    assert seqs(pub.acked) == [1, 2]
    pub.disconnect()
    caplog.clear()
    pub.connect()  # both acknowledged within keep_acked_s: a crashed broker may have lost them
    assert [r.getMessage() for r in caplog.records] == [
        "re-publishing 2 message(s) acknowledged shortly before the reconnect"]
    pub.disconnect()
    ob.close()
    caplog.clear()
    pub.connect()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "outbox: Cannot operate on a closed database.")]


def test_an_answer_goes_out_with_the_correlation_data_it_was_stored_with(tmp_path):
    """A refusal / result for an MQTT 5 request carries the request's correlation data."""
    with wired(Outbox(tmp_path / "outbox.sqlite"), thread=False) as (pub, d, _):
        d.store(lambda seq: [("replies/backend/x", b"answer %d" % seq, b"corr-7"), ("dev/result", b"r %d" % seq, None)])
        d.drain(5.0)
        assert sorted((s.topic, s.correlation or b"") for s in pub.acked) == [("dev/result", b""),
                                                                               ("replies/backend/x", b"corr-7")]


def test_an_outbox_that_cannot_be_read_is_said_and_ends_the_drain(tmp_path, caplog):
    caplog.set_level(logging.ERROR, "facegate.delivery")
    ob = Outbox(tmp_path / "outbox.sqlite")
    with wired(ob, ack_delay_s=None, thread=False) as (pub, d, _):
        d.store(result)
        ob.pending = lambda *a, **kw: (_ for _ in ()).throw(  # type: ignore[method-assign]
            outbox_mod.OutboxError("outbox: disk I/O error"))
        d.drain(3.0)  # one pass, it cannot read: no retry until the deadline
        assert [r.getMessage() for r in caplog.records] == ["outbox: disk I/O error"]
        assert pub.published == []


def test_what_cannot_be_stored_or_published_is_said_and_counted(tmp_path, caplog):
    caplog.set_level(logging.ERROR, "facegate.delivery")
    ob = FlakyOutbox(tmp_path / "outbox.sqlite")
    with wired(ob, thread=False) as (pub, d, _):
        ob.full_add = True
        assert d.store(result) is None
        assert [r.getMessage() for r in caplog.records] == [
            "a result cannot be stored yet (outbox cannot store a result: database or disk is full); held in memory "
            "and retried"]
        ob.full_add = False
        d.retry()
        caplog.clear()
        for _ in range(2):
            d.store(lambda seq: result(seq, "replies/+/wildcard"))
        d.drain(5.0)
        assert d.undeliverable == 2 and ob.depth() == 0 and seqs(pub.acked) == [1]
        assert [r.getMessage() for r in caplog.records] == [
            f"result {n} cannot be published on 'replies/+/wildcard' (Publish topic cannot contain wildcards.): dropped"
            for n in (2, 3)]
