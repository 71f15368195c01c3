"""The contract room's promises a backend leans on, at their edges (mutation testing of
facegate/contract/ found them untested): what an older terminal's result map without the
later fields reads as, the smallest sequence number, the unverified peeks a backend uses to
name a key or a device in its refusals, and a terminal's health as the fleet view reads it."""
from __future__ import annotations

import json

import cbor2
import pytest

from facegate.contract import Result, SigningKey
from facegate.contract.cose import unverified_field, unverified_kid
from facegate.contract.result import MalformedMessage, payload_problem
from facegate.contract.telemetry import HealthReport
from facegate.vocab import Verdict

TOPIC = "facegate/v1/kiosk-1/result"
OLDEST = {"v": 1, "dev": "kiosk-1", "boot": "b1", "seq": 0, "iat": 1_700_000_000, "session": None,
          "request_id": None, "nonce": None, "decision": "error", "reason": "camera_unavailable"}


def test_a_result_map_without_the_later_fields_reads_with_their_empty_values():
    """The first result a terminal makes has seq 0; a map without liveness, quality,
    models, policy and detail (an older terminal) is believed with {} / None / ''."""
    assert payload_problem(OLDEST) is None
    r = Result.of_map(OLDEST)
    assert (r.seq, r.decision, r.reason) == (0, Verdict.ERROR, "camera_unavailable")
    assert (r.liveness, r.quality, r.models, r.policy, r.detail) == ({}, {}, {}, None, "")
    assert payload_problem({**OLDEST, "seq": -1}) == "bad_payload"


@pytest.mark.parametrize("detail", [5, None, b"bytes", ["x"]])
def test_a_detail_that_is_not_text_reads_as_none_given(detail):
    assert Result.of_map({**OLDEST, "detail": detail}).detail == ""


def test_a_result_with_detail_keeps_it():
    assert Result.of_map({**OLDEST, "decision": "rejected", "detail": "image is too large"}).detail \
        == "image is too large"


def test_the_unverified_peeks_name_the_signer_and_the_claimed_device_or_nothing():
    key = SigningKey.generate()
    message = Result.of_map(OLDEST).sign(key, TOPIC)
    assert unverified_kid(message) == key.kid
    assert unverified_field(message, "dev") == "kiosk-1" and unverified_field(message, "nope") is None
    tag = cbor2.loads(message)
    protected, unprotected, payload, signature = tag.value
    for kid in ("text-kid", 7, None):  # a kid that is not bytes names no key
        hdr = cbor2.dumps({1: -8, 4: kid})
        assert unverified_kid(cbor2.dumps(cbor2.CBORTag(18, [hdr, unprotected, payload, signature]))) is None
    not_a_map = cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, cbor2.dumps(["dev", "x"]), signature]))
    assert unverified_field(not_a_map, "dev") is None
    for garbage in (b"", b"\xff\x00", cbor2.dumps([1, 2]), cbor2.dumps({"a": 1})):
        assert unverified_kid(garbage) is None and unverified_field(garbage, "dev") is None


def test_a_health_report_as_the_fleet_view_reads_it():
    h = HealthReport.parse(json.dumps({"outbox_depth": 3, "camera_ok": False, "models_ok": "yes"}).encode())
    assert h.outbox_depth == 3 and h.flag("camera_ok") is False
    assert h.flag("models_ok") is None and h.flag("storage_ok") is None  # only a real false is false
    for depth in ("3", 2.5, True, None):
        assert HealthReport.parse(json.dumps({"outbox_depth": depth}).encode()).outbox_depth is None
    big = json.dumps({"pad": "x" * 100}).encode()
    with pytest.raises(MalformedMessage, match="too_large"):
        HealthReport.parse(big, max_bytes=50)
    assert HealthReport.parse(big, max_bytes=len(big)).doc["pad"] == "x" * 100
    with pytest.raises(MalformedMessage, match="^not_json$"):
        HealthReport.parse(b"{not json")
