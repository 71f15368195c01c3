"""The contract room, end to end: every message type goes encode -> sign -> verify ->
decode through the terminal's code and the backend's, and comes out equal; garbage,
unsigned, wrongly signed, re-topiced and wrongly typed input gets its defined error (a
SignatureError / CommandRejected reason, MalformedMessage, or None for an attestation) -
never an exception of another kind. The bytes themselves are held by
test_contract_golden.py; which files a new result field touches by
test_contract_room.py."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import cbor2
import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from facegate import config
from facegate.backend.store import KeyRow, ResultRow
from facegate.backend.trust import Keyring, check_attest, check_result
from facegate.contract import (
    Attest,
    Command,
    CommandRejected,
    HealthReport,
    MalformedMessage,
    Result,
    SignatureError,
    SigningKey,
    Topics,
    event_json,
    guide_json,
    health_json,
    parse_verify,
    presence,
    sign,
    state_json,
)
from facegate.policy import MatchPolicy
from facegate.results import Results
from facegate.vocab import FaceReason, Presence, Refusal, State, Step, Verdict

PREFIX = "facegate/v1"
T = Topics.of(PREFIX, "kiosk-1")
DEVICE = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
BACKEND = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))))
STRANGER = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96))))
MODELS = {"embed": "ab" * 32}
LIMITS = {"max_bytes": 1_000_000, "max_age_s": 300.0, "skew_s": 30.0, "max_pixels": 4_000_000}


def _png() -> bytes:
    img = np.zeros((48, 40, 3), np.uint8)
    img[8:40, 8:32] = (40, 120, 200)
    return cv2.imencode(".png", img)[1].tobytes()


def _ring(*rows: tuple[str, SigningKey, str]) -> Keyring:
    now = time.time()
    return Keyring.of(KeyRow(dev, k.kid.hex(), k.public, state, "enrol", None, now, now) for dev, k, state in rows)


def _result(**over) -> Result:
    r = Result.of(dev="kiosk-1", boot="b007", seq=41, iat=time.time(), session="s-1", request_id="req-1",
                  nonce=b"\x05" * 16, decision=Verdict.SPOOF, reason="presentation_attack",
                  liveness={"steps": [Step.BLINK], "active_pass": True, "passive_pass": False},
                  quality={"probe": {"face_px": 120, "yaw_deg": 3}, "frames": 9}, models=MODELS, policy="fmr h=1")
    return replace(r, **over)


class _Rows:
    """Delivery.store without an outbox: the rows a result makes, for seq 41."""

    def __init__(self):
        self.rows: list[tuple[str, bytes, bytes | None]] = []

    def store(self, make):
        self.rows = make(41)
        return 41


# -- round trips -------------------------------------------------------------------------
def test_a_command_from_the_backend_is_the_command_the_terminal_runs():
    ref = _png()
    for challenge in (None, [], [Step.TURN_LEFT, Step.BLINK]):
        cmd = Command.new(ref, time.time(), 60, None, challenge)
        got = parse_verify(cmd.sign(BACKEND, T.cmd_verify), T.cmd_verify, {BACKEND.kid: BACKEND.private.public_key()},
                           time.time(), **LIMITS)
        assert (got.request_id, got.nonce, got.iat, got.exp, got.kid) == (
            cmd.request_id, cmd.nonce, float(cmd.iat), float(cmd.exp), BACKEND.kid)
        assert got.challenge == (None if challenge is None else list(challenge))
        assert got.reference.shape == (48, 40, 3) and got.reference[20, 20].tolist() == [40, 120, 200]
        assert len(cmd.nonce) == 16 and cmd.exp - cmd.iat == 60


def test_a_result_the_terminal_signs_is_the_result_both_backend_ends_read():
    """Results.emit (the daemon's path, on R/result and a response topic) -> the request
    client's Result.verify and the worker's check_result -> the same typed Result, and the
    audit row the store writes from it."""
    cfg = config.Config.model_validate({"device_id": "kiosk-1"})
    rows = _Rows()
    emitter = Results(cfg, T, lambda: DEVICE, "b007", MODELS, rows, lambda: 1_765_000_000.9,  # type: ignore[arg-type]
                      MatchPolicy(0.45, 1e-4, "lfw5-1", "int8", 0.01, 1e-4))
    reply = f"{PREFIX}/replies/backend/c1"
    assert emitter.emit(Verdict.MATCH, None, session="s-9", request_id="req-9", nonce=b"\x09" * 16,
                        liveness={"steps": ["blink"], "active_pass": True, "score": 0.99},
                        quality={"probe": {"face_px": 99.0, "similarity": 0.8}, "frames": 4},
                        response_topic=reply, correlation=b"c") == 41
    (topic, message, corr), (rtopic, rmessage, rcorr) = rows.rows
    assert (topic, corr, rtopic, rcorr) == (T.result, None, reply, b"c")
    want = Result(dev="kiosk-1", boot="b007", seq=41, iat=1_765_000_000, session="s-9", request_id="req-9",
                  nonce=b"\x09" * 16, decision=Verdict.MATCH, reason=None,
                  liveness={"steps": ["blink"], "active_pass": True}, quality={"face_px": 99.0, "frames": 4},
                  models=MODELS, policy=emitter.policy)
    client_side, v = Result.verify(rmessage, {DEVICE.kid: DEVICE.private.public_key()}, reply)
    assert client_side == want and v.kid == DEVICE.kid
    verdict = check_result(message, T.result, PREFIX, _ring(("kiosk-1", DEVICE, "active")))
    assert verdict.accepted and verdict.result == want and verdict.kid == DEVICE.kid
    row = ResultRow.of(want, dev="kiosk-1", kid=DEVICE.kid.hex(), topic=topic, message=message, received_at=1.0,
                       stored_at=2.0, worker="w")
    assert (row.seq, row.decision, row.iat, json.loads(row.liveness), row.message) == (
        41, "match", 1_765_000_000.0, {"steps": ["blink"], "active_pass": True}, message)


@pytest.mark.parametrize("over", [{}, {"detail": "reference is too large", "decision": Verdict.REJECTED,
                                       "reason": Refusal.BAD_REFERENCE, "session": None},
                                  {"request_id": None, "nonce": None, "liveness": {}, "quality": {}, "models": {},
                                   "decision": Verdict.NO_FACE, "reason": FaceReason.TOO_DARK}])
def test_every_result_shape_round_trips(over):
    r = _result(**over)
    back, _ = Result.verify(r.sign(DEVICE, T.result), DEVICE.private.public_key(), T.result)
    assert back == r and back.to_map() == r.to_map() and isinstance(back.decision, Verdict)
    assert ("detail" in r.to_map()) == bool(r.detail)


def test_an_attestation_round_trips_on_both_ends():
    a = Attest.of(DEVICE, dev="kiosk-1", version="1.2.3", models=MODELS, boot="b007", iat=1_765_000_000.7)
    message = a.sign(DEVICE, T.attest)
    assert Attest.verify(message, T.attest, "kiosk-1") == a == check_attest(message, T.attest, PREFIX)
    assert a.iat == 1_765_000_000 and a.kid == DEVICE.kid


def test_the_json_topics_round_trip():
    assert json.loads(state_json(State.CHALLENGE, Step.BLINK, "s")) == {"state": "challenge", "step": "blink",
                                                                        "session": "s"}
    assert json.loads(event_json("s", "r", Verdict.NO_MATCH, 1.23456)) == {"session": "s", "request_id": "r",
                                                                           "decision": "no_match", "ts": 1.235}
    g = {"session": "s", "state": State.CHALLENGE, "step": "blink", "hint": "blink", "step_progress": 0.5,
         "progress": 0.25, "seconds_left": 3.0, "step_seconds_left": None}
    assert json.loads(guide_json(g)) == g
    doc = {"uptime_s": 1.5, "outbox_depth": 3, "camera_ok": False, "clock_synchronized": None}
    h = HealthReport.parse(health_json(doc))
    assert (h.doc, h.outbox_depth, h.flag("camera_ok"), h.flag("clock_synchronized")) == (doc, 3, False, None)
    assert [presence(p) for p in Presence] == [b"online", b"offline", b"stopped"]


# -- what is refused, and how ------------------------------------------------------------
def test_garbage_unsigned_wrong_key_and_wrong_topic_results():
    r = _result()
    good = r.sign(DEVICE, T.result)
    keys = {DEVICE.kid: DEVICE.private.public_key()}
    tag = cbor2.loads(good)
    cases = {
        b"": "not_cose", b"\xff\x00garbage": "not_cose",
        cbor2.dumps(r.to_map()): "not_cose",  # unsigned: the bare map
        cbor2.dumps(cbor2.CBORTag(18, [tag.value[0], {}, tag.value[2], b""])): "bad_signature",  # signature removed
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7, 4: DEVICE.kid}), {}, tag.value[2], tag.value[3]])):
            "bad_header",
        r.sign(STRANGER, T.result): "unknown_key",
        r.sign(DEVICE, f"{PREFIX}/kiosk-2/result"): "bad_signature",  # signed for another topic
    }
    for message, reason in cases.items():
        with pytest.raises(SignatureError) as exc:
            Result.verify(message, keys, T.result)
        assert str(exc.value) == reason, message[:20]
    ring = _ring(("kiosk-1", DEVICE, "active"), ("kiosk-2", STRANGER, "active"))
    assert check_result(r.sign(STRANGER, T.result), T.result, PREFIX, ring).reason == "wrong_device"
    assert check_result(good, T.result, PREFIX, _ring(("kiosk-1", DEVICE, "revoked"))).reason == "revoked_key"
    assert check_result(good, f"{PREFIX}/kiosk-1/health", PREFIX, ring).reason == "wrong_topic"


@pytest.mark.parametrize("over", [{"decision": "maybe"}, {"seq": -1}, {"seq": "7"}, {"seq": 2**63}, {"v": 2},
                                  {"iat": float("nan")}, {"dev": "x" * 65}, {"reason": "a\x00b"},
                                  {"liveness": None}, {"models": [1]}, {"quality": {"a": {"b": {"c": {"d": {
                                      "e": {"f": {"g": {"h": {}}}}}}}}}}])
def test_a_result_of_the_wrong_shape_is_bad_payload(over):
    p = {**_result().to_map(), **over}
    with pytest.raises(MalformedMessage, match="bad_payload"):
        Result.of_map(p)
    with pytest.raises(SignatureError, match="bad_payload"):
        Result.verify(sign(p, DEVICE, T.result), DEVICE.private.public_key(), T.result)
    ring = _ring(("kiosk-1", DEVICE, "active"))
    assert check_result(sign(p, DEVICE, T.result), T.result, PREFIX, ring).reason == "bad_payload"


def test_one_message_type_is_not_taken_for_another():
    """An attestation is not a result, a result not an attestation nor a command, a
    command not a result: each refused with its own defined answer."""
    attest = Attest.of(DEVICE, dev="kiosk-1", version="1", models={}, boot="b", iat=1.0)
    with pytest.raises(SignatureError, match="bad_payload"):
        Result.verify(attest.sign(DEVICE, T.result), DEVICE.private.public_key(), T.result)
    assert Attest.verify(_result().sign(DEVICE, T.attest), T.attest, "kiosk-1") is None
    cmd = Command.new(_png(), time.time(), 60, "req-1")
    with pytest.raises(SignatureError, match="bad_payload"):
        Result.verify(cmd.sign(DEVICE, T.result), DEVICE.private.public_key(), T.result)
    backend_keys = {BACKEND.kid: BACKEND.private.public_key()}
    with pytest.raises(CommandRejected) as exc:  # a result's map signed as a command: no exp
        parse_verify(sign(_result().to_map(), BACKEND, T.cmd_verify), T.cmd_verify, backend_keys, time.time(),
                     **LIMITS)
    assert (exc.value.reason, exc.value.request_id) == ("missing_exp", "req-1")


def test_garbage_unsigned_and_wrong_key_commands_and_attestations():
    keys = {BACKEND.kid: BACKEND.private.public_key()}
    cmd = Command.new(_png(), time.time(), 60, "req-1", [Step.BLINK])
    for message, reason in ((b"junk", "not_cose"), (cbor2.dumps(cmd.to_map()), "not_cose"),
                            (cmd.sign(STRANGER, T.cmd_verify), "unknown_key"),
                            (cmd.sign(BACKEND, T.result), "bad_signature")):
        with pytest.raises(CommandRejected) as exc:
            parse_verify(message, T.cmd_verify, keys, time.time(), **LIMITS)
        assert (exc.value.reason, exc.value.request_id, exc.value.nonce) == (reason, None, None)
    bad_step = replace(cmd, challenge=("wink",))
    with pytest.raises(CommandRejected) as exc:
        parse_verify(bad_step.sign(BACKEND, T.cmd_verify), T.cmd_verify, keys, time.time(), **LIMITS)
    assert (exc.value.reason, exc.value.request_id) == ("bad_challenge", "req-1")
    a = Attest.of(DEVICE, dev="kiosk-1", version="1", models={}, boot="b", iat=1.0)
    for message, topic, dev in ((b"junk", T.attest, "kiosk-1"), (cbor2.dumps(a.to_map()), T.attest, "kiosk-1"),
                                (a.sign(STRANGER, T.attest), T.attest, "kiosk-1"),  # not the key it announces
                                (a.sign(DEVICE, T.attest), T.attest, "kiosk-2"),  # another device's
                                (replace(a, sw="x\x00").sign(DEVICE, T.attest), T.attest, "kiosk-1"),
                                (replace(a, pub=b"short").sign(DEVICE, T.attest), T.attest, "kiosk-1")):
        assert Attest.verify(message, topic, dev) is None


@pytest.mark.parametrize("data,why", [(b"{", "not_json"), (b"[1]", "not_an_object"), (b"[" * 20, "too_deep"),
                                      (b" " * 20000, "too_large"), (b'{"a": "\\u0000"}', "bad_value")])
def test_bad_health_is_a_malformed_message(data, why):
    with pytest.raises(MalformedMessage, match=why):
        HealthReport.parse(data)
