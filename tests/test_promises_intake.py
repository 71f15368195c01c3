"""admission's intake on its threads (issue 25: its 107 mutants had no test but the daemon's,
too slow to run per mutant): what paho's thread does with a message (`Intake.receive`), the
bounded queue between the threads (`InboundQueue`), and what the command thread does with
each command (`Intake.act` / `run`): exactly one of queued / answered `rejected` / counted
ignored / counted dropped, in arrival order, never dying of one message. In process, with
real signed commands, a real outbox and the real Gate."""
from __future__ import annotations

import logging
import queue
import threading
import time

import cv2
import numpy as np
import pytest

from daemon_helpers import DEV, ROOT, command
from facegate import signing
from facegate.admission import INBOUND_SLOTS, Gate, InboundQueue, Intake, Refused, Request
from facegate.config import Config
from facegate.messages import Topics
from facegate.outbox import Outbox
from facegate.ports import Inbound
from facegate.status import Health
from facegate.vocab import Refusal

TOPIC = f"{ROOT}/cmd/verify"
REPLY = "facegate/v1/replies/backend/x"
REFERENCE = cv2.imencode(".jpg", np.full((64, 48, 3), 120, np.uint8))[1].tobytes()


class Rig:
    """An Intake on a real Gate and outbox; answers and accepted requests recorded."""

    def __init__(self, tmp_path, key, slots: int = 4, **daemon):
        cfg = Config.model_validate({"device_id": DEV, "mqtt": {"trusted_keys": [key.public.hex()]},
                                     "daemon": {"state_dir": str(tmp_path), "min_free_mb": 0, **daemon}})
        self.outbox = Outbox(tmp_path / "outbox.sqlite")
        self.gate = Gate(cfg, Topics.of(cfg.mqtt.prefix, DEV), self.outbox, time.time)
        self.health = Health()
        self.requests: queue.Queue[Request] = queue.Queue(maxsize=slots)
        self.answers: list[Refused] = []
        self.stop = threading.Event()
        self.intake = Intake(self.gate, self.health, self.requests, self.answers.append, self.stop)

    def taken(self) -> list[str]:
        out = []
        while not self.requests.empty():
            out.append(self.requests.get_nowait().command.request_id)
        return out


@pytest.fixture
def rig(tmp_path, backend_key):
    r = Rig(tmp_path, backend_key)
    yield r
    r.stop.set()
    r.outbox.close()


def said(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "facegate.admission" and r.levelno == level]


def test_paho_s_thread_queues_what_is_authentic_and_counts_what_is_not(rig, backend_key, caplog):
    caplog.set_level(logging.DEBUG, "facegate.admission")
    rig.intake.receive(Inbound(f"{ROOT}/cmd/other", b"anything"))  # not a command topic: not even counted
    stranger = signing.SigningKey.generate()
    rig.intake.receive(Inbound(TOPIC, command(stranger, REFERENCE)[0]))
    rig.intake.receive(Inbound(TOPIC, b"\x00not cbor"))
    assert rig.intake.inbound.get(0.01) is None  # nothing queued
    assert sum(rig.health.ignored.values()) == 2 and rig.health.ignored.get(Refusal.UNKNOWN_KEY) == 1
    assert said(caplog, logging.DEBUG)[0] == f"ignored a message on {TOPIC}: unknown_key"
    msg, p = command(backend_key, REFERENCE)
    rig.intake.receive(Inbound(TOPIC, msg, response_topic=REPLY, correlation=b"c1"))
    assert rig.intake.inbound.bytes == len(msg)  # queued, counted in bytes
    a = rig.intake.inbound.get(0.01)
    assert a.msg.payload == msg and a.verified.payload["request_id"] == p["request_id"]
    assert rig.requests.empty() and rig.answers == []  # admitting is the command thread's work
    assert said(caplog, logging.WARNING) == []  # queued: nothing to say


def test_each_authentic_command_is_exactly_one_of_taken_refused_ignored_or_dropped(tmp_path, backend_key, caplog):
    caplog.set_level(logging.INFO, "facegate.admission")
    r = Rig(tmp_path, backend_key, slots=1)
    first, p1 = command(backend_key, REFERENCE)
    r.intake.handle(Inbound(TOPIC, first, response_topic=REPLY, correlation=b"c1"))
    (req,) = [r.requests.get_nowait()]
    assert (req.command.request_id, req.response_topic, req.correlation) == (p1["request_id"], REPLY, b"c1")
    r.requests.put_nowait(req)  # the only session slot is taken now
    busy, p2 = command(backend_key, REFERENCE)
    r.intake.handle(Inbound(TOPIC, busy, response_topic=REPLY, correlation=b"c2"))
    assert r.answers == [Refused(Refusal.BUSY, p2["request_id"], p2["nonce"], REPLY, b"c2")]
    assert r.health.rejected == 1 and r.requests.qsize() == 1
    busy2, p3 = command(backend_key, REFERENCE)
    r.intake.handle(Inbound(TOPIC, busy2))
    assert r.health.rejected == 2 and [a.request_id for a in r.answers] == [p2["request_id"], p3["request_id"]]
    assert said(caplog, logging.INFO) == [f"command accepted (request {p1['request_id']}, 1 waiting)"] + [
        f"command rejected: busy (request {p['request_id']})" for p in (p2, p3)]
    caplog.clear()
    r.intake.handle(Inbound(TOPIC, first))  # the same bytes again: ignored, not answered
    r.intake.handle(Inbound(TOPIC, first, redelivered=True))
    assert r.health.ignored == {Refusal.REPLAYED_REQUEST_ID: 1, Refusal.REDELIVERED: 1}
    assert len(r.answers) == 2 and r.health.rejected == 2
    assert said(caplog, logging.INFO) == ["command ignored: replayed_request_id", "command ignored: redelivered"]
    r.outbox.close()  # the ids cannot be spent: nothing may be answered, the loss is counted
    for _ in range(2):
        r.intake.handle(Inbound(TOPIC, command(backend_key, REFERENCE)[0], response_topic=REPLY))
    assert r.health.dropped_commands == 2 and len(r.answers) == 2 and r.health.rejected == 2
    assert r.requests.qsize() == 1 and sum(r.health.ignored.values()) == 2
    errors = said(caplog, logging.ERROR)
    assert errors == ["command dropped, outbox unusable: outbox: Cannot operate on a closed database."] * 2


def test_the_command_thread_takes_them_in_order_and_survives_a_failing_answer(rig, backend_key, caplog):
    ids, calls = [], []
    answered = []

    def answer(ref: Refused) -> None:
        answered.append(ref.request_id)
        raise OSError("the publish failed")  # must not end the command thread
    rig.intake.answer = answer
    for _ in range(3):
        msg, p = command(backend_key, REFERENCE)
        ids.append(p["request_id"])
        rig.intake.receive(Inbound(TOPIC, msg))
    expired, pe = command(backend_key, REFERENCE, iat=int(time.time()) - 3600, exp=int(time.time()) - 3000)
    rig.intake.receive(Inbound(TOPIC, expired))
    later, pl = command(backend_key, REFERENCE)
    rig.intake.receive(Inbound(TOPIC, later))
    t = threading.Thread(target=rig.intake.run, args=(lambda: calls.append(1),), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while rig.requests.qsize() < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rig.taken() == [*ids, pl["request_id"]]  # in arrival order; the one after the failure too
    assert answered == [pe["request_id"]] and rig.health.rejected == 1
    assert t.is_alive() and calls  # `between` runs while it waits
    failed = [r for r in caplog.records if r.name == "facegate.admission" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == [f"handling a message on {TOPIC}"] and failed[0].exc_info
    time.sleep(1.5)  # idle: its waits for a command run out (0.5 s each)
    msg, p = command(backend_key, REFERENCE)
    rig.intake.receive(Inbound(TOPIC, msg))
    deadline = time.monotonic() + 10
    while rig.requests.empty() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rig.taken() == [p["request_id"]]  # taken after an idle spell too
    rig.stop.set()
    t.join(5)
    assert not t.is_alive()  # a stop ends it within its wait


def test_a_full_queue_makes_paho_s_thread_wait_and_a_stop_releases_it(rig, backend_key, caplog):
    msgs = [command(backend_key, REFERENCE)[0] for _ in range(INBOUND_SLOTS + 1)]
    for m in msgs[:INBOUND_SLOTS]:
        rig.intake.receive(Inbound(TOPIC, m))
    done = threading.Event()
    t = threading.Thread(target=lambda: (rig.intake.receive(Inbound(TOPIC, msgs[-1])), done.set()), daemon=True)
    t.start()
    assert not done.wait(0.5)  # INBOUND_SLOTS waiting: the next one waits for room
    assert rig.intake.inbound.get(0.01).msg.payload == msgs[0]  # room: it goes in
    assert done.wait(5)
    got = [rig.intake.inbound.get(0.01).msg.payload for _ in range(INBOUND_SLOTS)]
    assert got == msgs[1:] and rig.intake.inbound.get(0.01) is None
    for m in msgs[:INBOUND_SLOTS]:
        rig.intake.receive(Inbound(TOPIC, m))
    assert said(caplog, logging.WARNING) == []
    rig.stop.set()
    rig.intake.receive(Inbound(TOPIC, msgs[-1]))  # stopping: returns instead of waiting forever
    assert said(caplog, logging.WARNING) == ["stopping: an authentic command was not queued"]
    assert rig.intake.inbound.get(0.01).msg.payload == msgs[0]


def test_commands_waiting_for_the_command_thread_hold_at_most_twice_the_largest_command(tmp_path, backend_key):
    """The intake's memory bound: 2 x daemon.max_command_bytes of authentic commands wait;
    the next one waits in paho's thread (the broker holds the rest back)."""
    msgs = [command(backend_key, REFERENCE)[0] for _ in range(12)]
    size = max(len(m) for m in msgs)
    limit = max(1000, size)
    r = Rig(tmp_path, backend_key, max_command_bytes=limit)
    fit = 2 * limit // size
    assert 1 <= fit < min(3 * limit // size, INBOUND_SLOTS, len(msgs))  # the byte bound is what stops it
    done = threading.Event()

    def feed():
        for m in msgs:
            r.intake.receive(Inbound(TOPIC, m))
        done.set()
    threading.Thread(target=feed, daemon=True).start()
    deadline = time.monotonic() + 10
    while r.intake.inbound.bytes < fit * size and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # room for one more, were there any
    assert r.intake.inbound.bytes <= 2 * limit and r.intake.inbound.bytes == sum(len(m) for m in msgs[:fit])
    assert not done.is_set()
    r.stop.set()
    assert done.wait(5)
    r.outbox.close()


def test_the_queue_is_bounded_in_count_and_bytes_first_in_first_out():
    q, stop = InboundQueue(max_items=2, max_bytes=100), threading.Event()
    assert q.put("a", 10, stop) and q.put("b", 10, stop) and q.bytes == 20
    stop.set()
    assert q.put("c", 10, stop) is False and q.bytes == 20  # two items: full by count, not by bytes
    stop.clear()
    assert q.get(0.01) == "a" and q.bytes == 10
    assert q.put("c", 90, stop) and q.bytes == 100  # exactly max_bytes fits
    stop.set()
    assert q.put("d", 1, stop) is False  # one byte more does not (and a stop is heard)
    assert [q.get(0.01), q.get(0.01), q.get(0.01)] == ["b", "c", None] and q.bytes == 0
    assert q.put("big", 500, stop)  # alone in an empty queue, larger than the bound: still taken
    waited = time.monotonic()
    assert q.get(0.0) == "big" and q.get(0.2) is None and time.monotonic() - waited >= 0.2  # waits its timeout
