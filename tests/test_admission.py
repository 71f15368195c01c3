"""Command admission in process, no broker: facegate.admission.Gate with a real outbox,
real signatures and a real JPEG reference. Each gate's answer is typed: Accepted, Refused
(one signed answer bound to the ids), Ignored (counted, never answered), Dropped."""
from __future__ import annotations

import os
import time
import uuid

import cv2
import numpy as np
import pytest

from daemon_helpers import DEV, REPLY, ROOT, command
from facegate import signing
from facegate.admission import Accepted, Authentic, Dropped, Gate, Ignored, Refused, valid_response_topic
from facegate.config import Config
from facegate.messages import Topics
from facegate.outbox import Outbox
from facegate.ports import Inbound
from facegate.vocab import Refusal

TOPIC = f"{ROOT}/cmd/verify"
REFERENCE = cv2.imencode(".jpg", np.full((64, 48, 3), 120, np.uint8))[1].tobytes()


@pytest.fixture
def gate(tmp_path, backend_key):
    cfg = Config.model_validate({"device_id": DEV, "mqtt": {"trusted_keys": [backend_key.public.hex()]},
                                 "daemon": {"state_dir": str(tmp_path), "min_free_mb": 0}})
    outbox = Outbox(tmp_path / "outbox.sqlite", cfg.daemon.outbox_max_age_s, cfg.daemon.outbox_max_rows)
    held = {"n": 0}
    g = Gate(cfg, Topics.of(cfg.mqtt.prefix, DEV), outbox, time.time, lambda: held["n"])
    g.held_box = held  # the test's handle on the delivery's held count
    yield g
    outbox.close()


def inbound(message: bytes, **kw) -> Inbound:
    return Inbound(TOPIC, message, **kw)


def through(gate: Gate, msg: Inbound, busy: bool = False):
    a = gate.authenticate(msg)
    return a if not isinstance(a, Authentic) else gate.admit(a, busy)


def test_an_authentic_command_is_accepted_with_where_to_answer(gate, backend_key):
    msg, payload = command(backend_key, REFERENCE)
    r = through(gate, inbound(msg, response_topic=f"{REPLY}/x", correlation=b"c1"))
    assert isinstance(r, Accepted)
    assert r.request.command.request_id == payload["request_id"] and r.request.command.nonce == payload["nonce"]
    assert (r.request.response_topic, r.request.correlation) == (f"{REPLY}/x", b"c1")
    # a response topic under the device's own topics is not honoured; the answer goes to R/result
    msg, _ = command(backend_key, REFERENCE)
    r = through(gate, inbound(msg, response_topic=f"{ROOT}/result/evil", correlation=b"c2"))
    assert isinstance(r, Accepted) and (r.request.response_topic, r.request.correlation) == (None, None)


@pytest.mark.parametrize("make, reason", [
    (lambda k: b"\xa1\x01\x02", Refusal.NOT_COSE),
    (lambda k: command(signing.SigningKey.generate(), REFERENCE)[0], Refusal.UNKNOWN_KEY),
    (lambda k: command(k, REFERENCE, topic=f"{ROOT}/other")[0], Refusal.BAD_SIGNATURE),  # signed for another topic
    (lambda k: b"\x00" * (Config().daemon.max_command_bytes + 1), Refusal.TOO_LARGE),
])
def test_what_is_not_authentic_is_ignored_by_reason(gate, backend_key, make, reason):
    assert through(gate, inbound(make(backend_key))) == Ignored(reason)


def test_other_topics_are_no_command(gate, backend_key):
    assert gate.authenticate(Inbound(f"{ROOT}/result", command(backend_key, REFERENCE)[0])) is None


def test_ids_are_spent_before_any_answer_and_replays_are_ignored(gate, backend_key):
    msg, payload = command(backend_key, REFERENCE)
    assert isinstance(through(gate, inbound(msg)), Accepted)
    assert through(gate, inbound(msg, redelivered=True)) == Ignored(Refusal.REDELIVERED)
    assert through(gate, inbound(msg)) == Ignored(Refusal.REPLAYED_REQUEST_ID)
    other_id, _ = command(backend_key, REFERENCE, nonce=payload["nonce"])
    assert through(gate, inbound(other_id)) == Ignored(Refusal.REPLAYED_NONCE)
    no_ids, _ = command(backend_key, REFERENCE, request_id=None)
    assert through(gate, inbound(no_ids)) == Ignored(Refusal.MISSING_REQUEST_ID)


def test_an_expired_command_is_refused_once_bound_to_its_ids(gate, backend_key):
    now = int(time.time())
    msg, payload = command(backend_key, REFERENCE, iat=now - 600, exp=now - 300)
    r = through(gate, inbound(msg, response_topic=f"{REPLY}/y", correlation=b"c"))
    assert r == Refused(Refusal.EXPIRED, payload["request_id"], payload["nonce"], f"{REPLY}/y", b"c")
    assert through(gate, inbound(msg)) == Ignored(Refusal.REPLAYED_REQUEST_ID)  # answered once, never again


@pytest.mark.parametrize("reference, detail", [
    (b"%PDF-1.7 a scan", "reference is not a JPEG, PNG, BMP or WebP image"),
    (b"\x89PNG\r\n\x1a\n" + bytes([0, 0, 0, 13]) + b"IHDR" + (5472).to_bytes(4, "big") + (3648).to_bytes(4, "big")
     + bytes(80), "reference is too large (5472x3648 pixels > 4000000)"),
])
def test_a_bad_reference_is_refused_with_what_is_wrong(gate, backend_key, reference, detail):
    """A 20 MP photo came back as a bare `rejected (bad_reference)` while local
    `facegate verify` took it: the signed answer now says why (format or size, never content)."""
    msg, payload = command(backend_key, reference)
    r = through(gate, inbound(msg))
    assert r == Refused(Refusal.BAD_REFERENCE, payload["request_id"], payload["nonce"], None, None, detail)


def test_busy_and_storage_are_refusals(gate, backend_key):
    msg, payload = command(backend_key, REFERENCE)
    assert through(gate, inbound(msg), busy=True) == Refused(Refusal.BUSY, payload["request_id"], payload["nonce"])
    gate.held_box["n"] = 1  # a result waits in memory for disk space
    msg, payload = command(backend_key, REFERENCE)
    assert through(gate, inbound(msg)) == Refused(Refusal.STORAGE_FULL, payload["request_id"], payload["nonce"])
    gate.held_box["n"] = 0
    gate.cfg = gate.cfg.model_copy(update={"daemon": gate.cfg.daemon.model_copy(update={"min_free_mb": 1e12})})
    msg, _ = command(backend_key, REFERENCE)
    assert through(gate, inbound(msg)).reason == Refusal.STORAGE_FULL


def test_an_unusable_outbox_drops_the_command(gate, backend_key):
    gate.outbox.close()
    r = through(gate, inbound(command(backend_key, REFERENCE, request_id=uuid.uuid4().hex, nonce=os.urandom(16))[0]))
    assert isinstance(r, Dropped) and r.error


def test_response_topics():
    assert valid_response_topic("a/b/c", "a/b")
    assert not valid_response_topic("a/bc", "a/b")
    assert not valid_response_topic("a/b/#", "a/b") and not valid_response_topic("$SYS/x", "$SYS")
    assert not valid_response_topic("a/b/dev/x", "a/b", ("a/b/dev",))
    assert not valid_response_topic("a/b/x", "")
