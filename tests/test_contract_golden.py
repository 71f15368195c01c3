"""The MQTT bytes, fixed: every message type the terminal and the backend put on the wire,
built from fixed inputs (keys, clock, nonces, ids) and compared byte for byte with
tests/golden/contract.json, which was recorded from the code *before* the contract room
(issue 21) existed. Ed25519 signatures are deterministic, so a signed message is the same
bytes every time: a re-ordered map key, a field renamed or added, an int that became a
float, a changed signing structure or header - each changes the hex and fails here.

The record was made with the pre-room API (messages.result_payload / verify_command /
attest_payload, signing.sign, literal status words: commit f445849); the test now builds
the same messages through the contract room, and the record is unchanged.

Regenerate only for an intended contract change: FACEGATE_WRITE_GOLDEN=1 pytest this file
(and say why in the commit)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from facegate.contract import (
    Attest,
    Command,
    Result,
    SigningKey,
    Topics,
    event_json,
    guide_json,
    ha_discovery,
    health_json,
    policy_hash,
    presence,
    state_json,
)
from facegate.vocab import Presence

GOLDEN = Path(__file__).parent / "golden" / "contract.json"
DEVICE_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
BACKEND_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))))
T = Topics.of("facegate/v1", "kiosk-1")
REPLY = "facegate/v1/replies/backend/client-1"
NOW = 1_765_000_000.75
POLICY = "fmr=1e-04 table=lfw5-1 int8 h=0123456789abcdef"
MODELS = {"detect": "a1" * 32, "embed": "b2" * 32, "pad": "c3" * 32}
LIVENESS = {"steps": ["blink", "turn_left"], "active_pass": True, "passive_pass": True, "score": 0.93}
QUALITY = {"probe": {"face_px": 141, "sharpness": 37.25, "brightness": 0.5, "yaw_deg": -3.5, "pitch_deg": 2,
                     "similarity": 0.77}, "frames": 12, "embedding": [0.1]}
GUIDE = {"session": "s-0001", "state": "challenge", "step": "blink", "hint": "blink", "step_progress": 0.25,
         "progress": 0.5, "seconds_left": 7.5, "step_seconds_left": None}
HEALTH = {"uptime_s": 12.5, "fps": 14.9, "latency_ms": {"detect": 11.0}, "outbox_depth": 0, "outbox_expired": 0,
          "camera_ok": True, "models_ok": True, "storage_ok": True, "clock_synchronized": None, "sessions": 3,
          "rejected": 1, "ignored": {"unknown_key": 2}, "unstored": 0, "undeliverable": 0, "dropped_commands": 0,
          "publish_refused": 0}


@pytest.fixture
def fixed_random(monkeypatch):
    """os.urandom as a counter: the request ids and nonces a command draws are fixed."""
    state = {"n": 0}

    def urandom(n: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] * 17 + i) % 256 for i in range(n))
    monkeypatch.setattr(os, "urandom", urandom)


def _results() -> dict[str, bytes]:
    full = Result.of(dev="kiosk-1", boot="0f0e0d0c0b0a0908", seq=7, iat=NOW, session="s-0001",
                                   request_id="req-1", nonce=b"\x01" * 16, decision="match", reason=None,
                                   liveness=LIVENESS, quality=QUALITY, models=MODELS, policy=POLICY)
    rejected = Result.of(dev="kiosk-1", boot="0f0e0d0c0b0a0908", seq=8, iat=NOW + 1, session=None,
                                       request_id="req-2", nonce=b"\x02" * 16, decision="rejected",
                                       reason="bad_reference", liveness={}, quality={}, models=MODELS,
                                       policy=POLICY, detail="reference is not a JPEG, PNG, BMP or WebP image")
    error = Result.of(dev="kiosk-1", boot="0f0e0d0c0b0a0908", seq=9, iat=NOW + 2, session="s-0002",
                                    request_id=None, nonce=None, decision="error", reason="camera_failed",
                                    liveness={"passive_pass": False}, quality={"frames": 0}, models={},
                                    policy=POLICY)
    return {"result_match": full.sign(DEVICE_KEY, T.result),
            "result_match_response_topic": full.sign(DEVICE_KEY, REPLY),
            "result_rejected_detail": rejected.sign(DEVICE_KEY, T.result),
            "result_error_no_ids": error.sign(DEVICE_KEY, T.result)}


def _commands() -> dict[str, bytes]:
    fixed = Command.new(b"\xff\xd8 a reference", NOW, 60.0, "req-1", ["blink", "turn_right"])
    drawn = Command.new(b"\x89PNG reference", NOW, 90.0)
    none = Command.new(b"ref", NOW, 30.0, "req-3", [])
    return {"command_fixed_challenge": fixed.sign(BACKEND_KEY, T.cmd_verify),
            "command_drawn_ids": drawn.sign(BACKEND_KEY, T.cmd_verify),
            "command_empty_challenge": none.sign(BACKEND_KEY, T.cmd_verify)}


def _plain() -> dict[str, bytes]:
    attest = Attest.of(DEVICE_KEY, dev="kiosk-1", version="0.9.0", models=MODELS, boot="0f0e0d0c0b0a0908", iat=NOW)
    out = {"attest": attest.sign(DEVICE_KEY, T.attest),
           "state_idle": state_json("idle"),
           "state_challenge": state_json("challenge", "blink", "s-0001"),
           "event": event_json("s-0001", "req-1", "match", NOW + 0.123456),
           "event_no_ids": event_json(None, None, "error", NOW),
           "guide": guide_json(GUIDE),
           "health": health_json(HEALTH),
           "policy_hash": policy_hash({"verify": {"t": 0.45}, "mode": "both", "x": [1, 2.5]}).encode()}
    for word in Presence:  # R/status: the announcer's, the will's, the last words
        out["status_" + word] = presence(word)
    for topic, payload in ha_discovery(T, "kiosk-1", "0.9.0", "homeassistant"):
        out["ha " + topic] = payload
    return out


def produce() -> dict[str, str]:
    return {k: v.hex() for k, v in {**_results(), **_commands(), **_plain()}.items()}


def test_every_message_is_the_recorded_bytes(fixed_random):
    got = produce()
    if os.environ.get("FACEGATE_WRITE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


def test_the_golden_file_holds_every_topic_s_message():
    """The record names every kind of message that crosses MQTT (so none is left out)."""
    names = json.loads(GOLDEN.read_text())
    kinds = {n.split("_")[0].split(" ")[0] for n in names}
    assert kinds == {"result", "command", "attest", "state", "event", "guide", "health", "status", "policy", "ha"}


def test_the_old_addresses_build_the_same_maps(fixed_random):
    """messages.py / signing.py (kept for tests and scripts) are the room's code: the maps
    and signatures they give are the room's."""
    from facegate import messages, signing

    kw = dict(dev="kiosk-1", boot="b", seq=1, iat=NOW, session=None, request_id="r", nonce=b"n", decision="spoof",
              reason="timeout", liveness=LIVENESS, quality=QUALITY, models=MODELS, policy=POLICY)
    assert messages.result_payload(**kw) == Result.of(**kw).to_map()
    assert signing.sign(Result.of(**kw).to_map(), DEVICE_KEY, T.result) == Result.of(**kw).sign(DEVICE_KEY, T.result)
    assert messages.attest_payload(dev="d", kid=DEVICE_KEY.kid, public=DEVICE_KEY.public, version="1", models=MODELS,
                                   boot="b", iat=NOW) == Attest.of(DEVICE_KEY, dev="d", version="1", models=MODELS,
                                                                   boot="b", iat=NOW).to_map()
    old, new = messages.verify_command(b"x", NOW, 60, "r", ["blink"]), Command.new(b"x", NOW, 60, "r", ["blink"]).to_map()
    assert list(old) == list(new) and {**old, "nonce": b""} == {**new, "nonce": b""}  # a fresh nonce each
