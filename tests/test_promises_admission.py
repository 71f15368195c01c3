"""admission's mutation survivors (issue 25): a refusal answers on the command's response
topic with its correlation data; min_free_mb is compared in MiB and at its edge; an
unreadable state dir is not storage; response-topic bounds."""
from __future__ import annotations

import shutil
import time

import cv2
import numpy as np
import pytest

from daemon_helpers import DEV, REPLY, ROOT, command
from facegate.admission import Authentic, Gate, Refused, valid_response_topic
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
    outbox = Outbox(tmp_path / "outbox.sqlite")
    held = {"n": 0}
    g = Gate(cfg, Topics.of(cfg.mqtt.prefix, DEV), outbox, time.time, lambda: held["n"])
    g.held_box = held  # type: ignore[attr-defined]
    yield g
    outbox.close()


def _min_free(gate: Gate, mb: float) -> None:
    gate.cfg = gate.cfg.model_copy(update={"daemon": gate.cfg.daemon.model_copy(update={"min_free_mb": mb})})


@pytest.mark.parametrize("why", [Refusal.BUSY, Refusal.STORAGE_FULL])
def test_a_refusal_answers_on_the_response_topic_with_its_correlation(gate, backend_key, why):
    msg, p = command(backend_key, REFERENCE)
    if why == Refusal.STORAGE_FULL:
        gate.held_box["n"] = 1
    a = gate.authenticate(Inbound(TOPIC, msg, response_topic=REPLY, correlation=b"corr-9"))
    assert isinstance(a, Authentic)
    r = gate.admit(a, busy=why == Refusal.BUSY)
    assert r == Refused(why, p["request_id"], p["nonce"], REPLY, b"corr-9")


def test_min_free_mb_is_mebibytes_at_its_edge(gate, tmp_path, monkeypatch):
    free = 5 * 2**30 + 123
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 0, free))
    _min_free(gate, free / 2**20)
    assert gate.storage_ok()  # exactly enough
    _min_free(gate, free / 2**20 + 1e-6)
    assert not gate.storage_ok()
    _min_free(gate, free / 2**20 * 0.99)
    assert gate.storage_ok()


def test_an_unreadable_state_dir_is_not_storage(gate, monkeypatch):
    def gone(p):
        raise FileNotFoundError(p)
    monkeypatch.setattr(shutil, "disk_usage", gone)
    assert not gate.storage_ok()


def test_response_topic_bounds():
    assert valid_response_topic("a/b/" + "x" * 252, "a/b")  # 256 characters
    assert not valid_response_topic("a/b/" + "x" * 253, "a/b")
    assert not valid_response_topic("", "a/b")
    for bad in ("a/b/+", "a/b/#", "a/b/x\0y"):
        assert not valid_response_topic(bad, "a/b"), bad
    assert valid_response_topic("a/b/c", "a/b/")  # a prefix with its slash
    assert valid_response_topic("a/b/XYZ", "a/b")  # only + # and NUL are forbidden
    assert not valid_response_topic("a/Xc", "a/X")  # under a/X/, not beside it


def test_an_unusable_outbox_says_why_it_dropped_the_command(gate, backend_key):
    from facegate.admission import Dropped

    gate.outbox.close()
    msg, _ = command(backend_key, REFERENCE)
    a = gate.authenticate(Inbound(TOPIC, msg))
    r = gate.admit(a, busy=False) if isinstance(a, Authentic) else a
    assert isinstance(r, Dropped) and "outbox" in r.error and "closed" in r.error, r


def test_never_the_device_s_own_topics_even_under_a_wide_prefix(gate, backend_key):
    """Mutation: the device's root and ha_prefix left out of the excluded roots - fails."""
    gate.cfg = gate.cfg.model_copy(update={"mqtt": gate.cfg.mqtt.model_copy(update={"response_prefix": "facegate/"})})
    for rt, kept in ((f"{ROOT}/result", False), ("facegate/v1/replies/x", True)):
        msg, _ = command(backend_key, REFERENCE)
        a = gate.authenticate(Inbound(TOPIC, msg, response_topic=rt, correlation=b"c"))
        assert isinstance(a, Authentic)
        r = gate.admit(a, busy=True)
        assert (r.response_topic == rt) is kept, (rt, r)
    gate.cfg = gate.cfg.model_copy(update={"mqtt": gate.cfg.mqtt.model_copy(update={"response_prefix": "homeassistant"})})
    msg, _ = command(backend_key, REFERENCE)
    a = gate.authenticate(Inbound(TOPIC, msg, response_topic="homeassistant/x", correlation=b"c"))
    assert isinstance(a, Authentic) and gate.admit(a, busy=True).response_topic is None
