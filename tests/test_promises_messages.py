"""What the terminal tells Home Assistant and dashboards agrees with what it publishes
(mutation testing: ha_discovery, event_json, state_json, attest_payload, policy_hash had
no test that reaches them outside the daemon tests - 286 mutants "no tests"). Every
`value_json.X` a discovery template reads is a key of the payload on its state topic;
availability is the contract's `online` / `offline`; the event entity knows every decision."""
from __future__ import annotations

import hashlib
import json
import re
import typing

import pytest

from facegate import messages
from facegate.status import HealthDoc
from facegate.vocab import State, Verdict

T = messages.Topics.of("facegate/v1", "kiosk-9")


def _configs(prefix: str = "homeassistant") -> dict[str, dict]:
    return {topic: json.loads(p) for topic, p in messages.ha_discovery(T, "kiosk-9", "1.2.3", prefix)}


def test_discovery_topics_ids_device_and_availability():
    cfgs = _configs("ha")
    keys = {"online", "state", "decision", "outbox_depth", "fps", "uptime_s", "sessions", "camera"}
    assert set(cfgs) == {f"ha/{c}/facegate_kiosk-9/{k}/config" for c, k in
                         [("binary_sensor", "online"), ("sensor", "state"), ("event", "decision"),
                          ("sensor", "outbox_depth"), ("sensor", "fps"), ("sensor", "uptime_s"),
                          ("sensor", "sessions"), ("binary_sensor", "camera")]}
    for topic, c in cfgs.items():
        key = topic.split("/")[3]
        assert c["unique_id"] == c["object_id"] == f"facegate_kiosk-9_{key}" and key in keys
        assert c["device"] == {"identifiers": ["facegate_kiosk-9"], "name": "facegate kiosk-9",
                               "manufacturer": "facegate", "model": "face verification terminal",
                               "sw_version": "1.2.3"}
        if key == "online":
            assert (c["state_topic"], c["payload_on"], c["payload_off"], c["device_class"]) == (
                T.status, "online", "offline", "connectivity")
        else:
            assert (c["availability_topic"], c["payload_available"], c["payload_not_available"]) == (
                T.status, "online", "offline")
        assert c["name"]


def test_every_template_reads_a_key_its_topic_carries():
    carried = {T.health: set(typing.get_type_hints(HealthDoc)),
               T.state: set(json.loads(messages.state_json(State.IDLE))),
               T.event: set(json.loads(messages.event_json("s", "r", Verdict.MATCH, 1.0)))}
    seen = set()
    for topic, c in _configs().items():
        for name in re.findall(r"value_json\.(\w+)", c.get("value_template", "")):
            assert name in carried[c["state_topic"]], (topic, name)
            seen.add((c["state_topic"], name))
        if c["state_topic"] == T.health:
            assert c["entity_category"] == "diagnostic"
    assert {(T.health, k) for k in ("outbox_depth", "fps", "uptime_s", "sessions", "camera_ok")} <= seen
    assert (T.state, "state") in seen and (T.event, "decision") in seen
    cfgs = _configs()
    decision = cfgs["homeassistant/event/facegate_kiosk-9/decision/config"]
    assert decision["event_types"] == list(Verdict) and decision["state_topic"] == T.event
    assert cfgs["homeassistant/sensor/facegate_kiosk-9/state/config"]["json_attributes_topic"] == T.state
    units = {k: cfgs[f"homeassistant/sensor/facegate_kiosk-9/{k}/config"].get("unit_of_measurement")
             for k in ("outbox_depth", "fps", "uptime_s", "sessions")}
    assert units == {"outbox_depth": None, "fps": "fps", "uptime_s": "s", "sessions": None}
    camera = cfgs["homeassistant/binary_sensor/facegate_kiosk-9/camera/config"]
    assert "'ON' if value_json.camera_ok else 'OFF'" in camera["value_template"] and camera["device_class"] == "running"
    # Home Assistant compares the rendered template with payload_on / payload_off (ON / OFF by
    # default): anything around the expression would render neither
    assert camera["value_template"] == "{{ 'ON' if value_json.camera_ok else 'OFF' }}"
    assert {"payload_on", "payload_off"}.isdisjoint(camera)


def test_event_state_attest_and_policy_hash_by_value():
    assert json.loads(messages.event_json("s1", "r1", Verdict.SPOOF, 12.34567)) == {
        "session": "s1", "request_id": "r1", "decision": "spoof", "ts": 12.346}
    assert json.loads(messages.state_json(State.CHALLENGE, "blink", "s1")) == {
        "state": "challenge", "step": "blink", "session": "s1"}
    a = messages.attest_payload(dev="d", kid=b"k", public=b"p", version="1", models={"embed": "h"}, boot="b",
                                iat=99.9)
    assert a == {"v": messages.RESULT_VERSION, "dev": "d", "kid": b"k", "pub": b"p", "sw": "1",
                 "models": {"embed": "h"}, "boot": "b", "iat": 99}
    settings = {"b": 1, "a": [0.5, "x"]}
    assert messages.policy_hash(settings) == hashlib.sha256(b'{"a":[0.5,"x"],"b":1}').hexdigest()[:16]


def test_only_the_public_quality_and_liveness_figures_are_published():
    """The result's quality / liveness maps by value: probe figures as floats, frames as an
    int, pass / fail as bools - and nothing else (no scores: README "never a score")."""
    q = {"probe": {"face_px": 41, "sharpness": 12.5, "brightness": 99, "yaw_deg": -3, "pitch_deg": 4,
                   "similarity": 0.9, "pad_score": 0.1}, "frames": 7.0, "reference": {"face_px": 50},
         "similarity": 0.8}
    out = messages.public_quality(q)
    assert out == {"face_px": 41.0, "sharpness": 12.5, "brightness": 99.0, "yaw_deg": -3.0, "pitch_deg": 4.0,
                   "frames": 7}
    assert all(type(v) is float for k, v in out.items() if k != "frames") and type(out["frames"]) is int
    assert messages.public_quality({}) == {} and messages.public_quality({"probe": None, "frames": 2}) == {"frames": 2}
    lv = {"steps": ("blink", "turn_left"), "active_pass": 1, "passive_pass": 0, "scores": [0.3], "p_real": 0.2}
    assert messages.public_liveness(lv) == {"steps": ["blink", "turn_left"], "active_pass": True, "passive_pass": False}
    assert messages.public_liveness({"steps": []}) == {"steps": [], "active_pass": False}
    assert messages.public_liveness({"passive_pass": True}) == {"passive_pass": True}
    assert messages.public_liveness({}) == {}


def test_a_backend_s_command_round_trips_through_parse_verify():
    """verify_command (what a backend signs) and parse_verify (authenticate, then check)."""
    import cv2
    import numpy as np

    from facegate import signing

    key = signing.SigningKey.generate()
    ref = cv2.imencode(".png", np.zeros((20, 16, 3), np.uint8))[1].tobytes()
    p = messages.verify_command(ref, 1000.4, 60, challenge=["blink"])
    assert set(p) == {"request_id", "nonce", "iat", "exp", "reference", "challenge"}
    assert len(p["nonce"]) == 16 and len(p["request_id"]) == 16 and (p["iat"], p["exp"]) == (1000, 1060)
    assert "challenge" not in messages.verify_command(ref, 0, 1) and messages.verify_command(ref, 0, 1, "r")[
        "request_id"] == "r"
    topic = T.cmd_verify
    msg = signing.sign(p, key, topic)
    keys = {key.kid: signing.public_from_hex(key.public.hex())}
    c = messages.parse_verify(msg, topic, keys, 1001, max_bytes=10_000, max_age_s=600, skew_s=5, max_pixels=10_000)
    assert (c.request_id, c.nonce, c.challenge, c.reference.shape) == (p["request_id"], p["nonce"], ["blink"],
                                                                         (20, 16, 3))
    for kw, reason in (({"topic": T.result}, "bad_signature"), ({"now": 2000}, "expired")):
        try:
            messages.parse_verify(msg, kw.get("topic", topic), keys, kw.get("now", 1001), max_bytes=10_000,
                                  max_age_s=600, skew_s=5, max_pixels=10_000)
        except messages.CommandRejected as rej:
            assert rej.reason == reason
        else:
            raise AssertionError(reason)


def test_templates_prefix_slash_and_the_size_limit_exactly():
    """Survivors: a template wrapped in other text renders another value; a prefix given
    with its trailing slash; a command of exactly max_command_bytes is accepted.
    (Equivalent, not tested: the entities' display names; typing.cast's first argument.)"""
    from facegate import signing

    cfgs = _configs()
    assert cfgs["homeassistant/sensor/facegate_kiosk-9/state/config"]["value_template"] == "{{ value_json.state }}"
    assert cfgs["homeassistant/event/facegate_kiosk-9/decision/config"]["value_template"] == \
        '{ "event_type": "{{ value_json.decision }}" }'
    assert cfgs["homeassistant/sensor/facegate_kiosk-9/fps/config"]["value_template"] == "{{ value_json.fps }}"
    assert messages.Topics.of("facegate/v1/", "k").root == "facegate/v1/k" == messages.Topics.of("facegate/v1", "k").root
    assert messages.Topics.of("/x/", "k").root == "/x/k"
    assert messages.Topics.of("acme/X", "k").root == "acme/X/k"  # only the slash goes, not the letters before it
    key = signing.SigningKey.generate()
    msg = signing.sign({"request_id": "r"}, key, T.cmd_verify)
    keys = {key.kid: signing.public_from_hex(key.public.hex())}
    assert messages.authenticate(msg, T.cmd_verify, keys, max_bytes=len(msg)).payload == {"request_id": "r"}
    try:
        messages.authenticate(msg, T.cmd_verify, keys, max_bytes=len(msg) - 1)
    except messages.CommandRejected as rej:
        assert rej.reason == "too_large"
    else:
        raise AssertionError("too_large")


def test_a_result_carries_detail_only_when_there_is_one():
    """contract.md: `detail` is a rejected command's what-is-wrong, absent otherwise."""
    base = dict(dev="kiosk-9", boot="b", seq=1, iat=1.0, session=None, request_id="r", nonce=b"n",
                reason=None, liveness={}, quality={}, models={}, policy="p")
    assert "detail" not in messages.result_payload(decision="match", **base)
    assert "detail" not in messages.result_payload(decision="match", detail="", **base)
    assert messages.result_payload(decision="rejected", detail="too big", **base)["detail"] == "too big"


def test_the_guide_carries_exactly_its_keys_and_the_contract_s_words():
    """R/guide: the keys of GUIDE_KEYS, a State and a Hint from vocab, nothing else (no box,
    score or image); anything else is a programming error, refused before it is sent."""
    from facegate.vocab import Hint

    g = {"session": "s1", "state": State.WAITING_FACE.value, "step": None, "hint": next(iter(Hint)).value,
         "step_progress": 0.5, "progress": 0.25, "seconds_left": 12.0, "step_seconds_left": None}
    assert json.loads(messages.guide_json(g)) == g
    assert list(json.loads(messages.guide_json(dict(reversed(g.items()))))) == list(messages.GUIDE_KEYS)
    for bad in ({**g, "box": [1, 2, 3, 4]}, {k: v for k, v in g.items() if k != "progress"},
                {**g, "state": "dreaming"}, {**g, "hint": "smile"}):
        with pytest.raises(AssertionError):
            messages.guide_json(bad)
