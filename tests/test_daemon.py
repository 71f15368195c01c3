"""The daemon end to end: a real Mosquitto (TLS, passwords, ACL), `facegate run` as a
subprocess with a video file as its camera, signed commands from a backend client, and
results checked with an independent COSE verifier (plain cbor2 + cryptography)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature

from broker import Backend, Mosquitto
from daemon_helpers import DEV, REPLY, ROOT, DaemonProc, command, independent_verify, results, wait_online, wait_result
from facegate import signing


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory, broker, faces, backend_key, model_dir):
    d = DaemonProc(tmp_path_factory.mktemp("daemon"), broker, faces, backend_key).start()
    be = Backend(broker)
    try:
        wait_online(be)
        yield d, be
    finally:
        be.close()
        d.stop()


# -- the contract -----------------------------------------------------------------------
def test_matching_portrait_gives_a_signed_match_that_verifies_independently(running, faces, backend_key):
    d, be = running
    msg, cmd = command(backend_key, faces["ref"])
    be.publish(f"{ROOT}/cmd/verify", msg, ResponseTopic=REPLY, CorrelationData=b"corr-1")
    r = wait_result(be, d.public, cmd["request_id"])
    assert r["decision"] == "match", (r, d.logtext()[-2000:])
    assert r["v"] == 1 and r["dev"] == DEV and r["nonce"] == cmd["nonce"] and isinstance(r["seq"], int)
    assert set(r) == {"v", "dev", "boot", "seq", "iat", "session", "request_id", "nonce", "decision", "reason",
                      "liveness", "quality", "models", "policy"}
    assert r["liveness"] == {"passive_pass": True}
    assert set(r["models"]) >= {"detect_short", "mesh", "embed", "pad_v2", "pad_v1se"}
    assert all(len(h) == 64 for h in r["models"].values())
    # MQTT 5 request / response: the same result, signed for the response topic
    reply = be.wait_for(lambda ms: [m for m in ms if m.topic == REPLY])[0]
    assert reply.correlation == b"corr-1"
    assert independent_verify(reply.payload, d.public, REPLY)["seq"] == r["seq"]
    # a result copied to another topic does not verify
    with pytest.raises(InvalidSignature):
        independent_verify(be.on(f"{ROOT}/result")[-1].payload, d.public, f"{ROOT}/elsewhere")
    # facegate's own verifier agrees, and so does the CLI reference tool
    saved = d.dir / "result.cose"
    saved.write_bytes(be.on(f"{ROOT}/result")[-1].payload)
    ok = subprocess.run([sys.executable, "-m", "facegate.cli", "verify-result", "--pubkey", d.public.hex(),
                         "--topic", f"{ROOT}/result", str(saved)], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["payload"]["seq"] >= 1
    bad = subprocess.run([sys.executable, "-m", "facegate.cli", "verify-result", "--pubkey", d.public.hex(),
                          "--topic", f"{ROOT}/event", str(saved)], capture_output=True, text=True)
    assert bad.returncode == 1 and "bad_signature" in bad.stderr


def test_a_terminal_can_neither_command_nor_read_another(running, broker, faces, backend_key):
    """The broker's per-device ACL (user name = device_id): terminal kiosk-2 can write its own
    topics, but a validly signed command it publishes on kiosk-1's command topic never reaches
    kiosk-1, and it receives nothing of kiosk-1's (retained status and attest, results), nor
    can it put anything on kiosk-1's result topic."""
    d, be = running
    other = Backend(broker, user="kiosk-2", subscribe=f"{ROOT}/#")
    try:
        other.publish("facegate/v1/kiosk-2/status", b"online")  # logged in: its own topics work
        be.wait_for(lambda ms: [m for m in ms if m.topic == "facegate/v1/kiosk-2/status"], 10)
        stolen, cmd = command(backend_key, faces["ref"])  # a real backend command it got hold of
        other.publish(f"{ROOT}/cmd/verify", stolen)
        other.publish(f"{ROOT}/result", b"forged")
        msg, after = command(backend_key, faces["ref"])  # queued behind the stolen one, had it arrived
        be.publish(f"{ROOT}/cmd/verify", msg)
        wait_result(be, d.public, after["request_id"])
        assert not [r for r in results(be, d.public) if r["request_id"] == cmd["request_id"]]
        assert not [m for m in be.on(f"{ROOT}/result") if m.payload == b"forged"]
        assert other.messages == []  # not even the retained status / attest
        be.publish(f"{ROOT}/cmd/verify", stolen)  # the same bytes from the backend: a valid command
        wait_result(be, d.public, cmd["request_id"])
        assert other.messages == []
    finally:
        other.close()


def test_stranger_portrait_gives_no_match(running, faces, backend_key):
    d, be = running
    msg, cmd = command(backend_key, faces["stranger"])
    be.publish(f"{ROOT}/cmd/verify", msg)
    r = wait_result(be, d.public, cmd["request_id"])
    assert r["decision"] == "no_match" and r["reason"] == "different_person"


def _ignored(d, timeout_s=10.0, at_least: dict | None = None) -> dict:
    """health.ignored from the status file, once it counts at least `at_least`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = d.status()["health"].get("ignored", {})
        if all(got.get(k, 0) >= v for k, v in (at_least or {}).items()) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_bad_commands_start_nothing_and_only_authentic_ones_are_answered(running, faces, backend_key):
    d, be = running
    other = signing.SigningKey.generate()
    sessions_before = d.status()["health"]["sessions"]
    ignored_before = _ignored(d)
    now = int(time.time())
    m, first = command(backend_key, faces["ref"])
    be.publish(f"{ROOT}/cmd/verify", m)
    answered = {  # authentic, ids readable, not a replay: one signed rejection bound to its ids
        "bad_reference": command(backend_key, b"\x89PNG\r\n\x1a\n" + b"\0" * 100),
        "bad_challenge": command(backend_key, faces["ref"], challenge=["smile"]),
        "not_yet_valid": command(backend_key, faces["ref"], iat=now + 600, exp=now + 700),
        "lifetime_too_long": command(backend_key, faces["ref"], exp=now + 10**6),
        "expired": command(backend_key, faces["ref"], iat=now - 600, exp=now - 300),  # (above the replay floor)
    }
    silent = {  # counted in health, never answered
        "replayed_request_id": command(backend_key, faces["ref"], request_id=first["request_id"]),
        "replayed_nonce": command(backend_key, faces["ref"], nonce=first["nonce"]),
        "unknown_key": command(other, faces["ref"]),
        "bad_signature": command(backend_key, faces["ref"], topic=f"{ROOT}/cmd/other"),  # signed for another topic
        "missing_nonce": command(backend_key, faces["ref"], nonce=None),
    }
    unsigned = cbor2.dumps({"request_id": uuid.uuid4().hex, "nonce": os.urandom(8), "iat": now, "exp": now + 60,
                            "reference": faces["ref"]})
    wait_result(be, d.public, first["request_id"])
    for msg, _ in (*answered.values(), *silent.values()):
        be.publish(f"{ROOT}/cmd/verify", msg)
    be.publish(f"{ROOT}/cmd/verify", unsigned)
    be.publish(f"{ROOT}/cmd/verify", b"\xff\x00garbage")
    for reason, (_, cmd) in answered.items():
        r = wait_result(be, d.public, cmd["request_id"], decision="rejected")
        assert (r["reason"], r["nonce"], r["session"]) == (reason, cmd["nonce"], None), (reason, r)
    want = {k: ignored_before.get(k, 0) + 1 for k in silent}
    want["not_cose"] = ignored_before.get("not_cose", 0) + 2
    got = _ignored(d, at_least=want)
    assert all(got.get(k, 0) == v for k, v in want.items()), (want, got)
    time.sleep(1.5)  # one health period
    by_id = [r["request_id"] for r in results(be, d.public)]
    for reason, (_, cmd) in silent.items():
        if reason.startswith("replayed"):
            assert by_id.count(cmd["request_id"]) == (1 if reason == "replayed_request_id" else 0), reason
        else:
            assert cmd["request_id"] not in by_id, reason
    assert d.status()["health"]["sessions"] == sessions_before + 1  # only the first, valid command


def _carries(m, *needles: bytes) -> bool:
    return any(n in m.payload for n in needles)


def test_unauthenticated_input_gets_no_answer_on_any_topic(running, broker, faces, backend_key):
    """Issue 15 finding 1: an unsigned map with a victim's ids and an MQTT 5 response topic
    got signed `rejected` answers echoing those ids, on the topics it named."""
    d, be = running
    ha = Backend(broker, user="backend", subscribe="homeassistant/sensor/x/#")
    try:
        ignored_before = _ignored(d)
        n0 = len(be.messages)
        rid, nonce = "victim-req-42", b"victim-nonce-000"
        reply = f"facegate/v1/replies/backend/attacker-{uuid.uuid4().hex[:6]}"
        victim = cbor2.dumps({"request_id": rid, "nonce": nonce})
        for rt in (reply, f"{ROOT}/attest", "homeassistant/sensor/x/config"):
            be.publish(f"{ROOT}/cmd/verify", victim, ResponseTopic=rt, CorrelationData=b"attacker")
        other = signing.SigningKey.generate()
        forged = [command(other, faces["ref"], request_id=rid, nonce=nonce)[0],
                  command(backend_key, faces["ref"], topic=f"{ROOT}/cmd/other", request_id=rid, nonce=nonce)[0]]
        tampered = bytearray(command(backend_key, faces["ref"], request_id=rid, nonce=nonce)[0])
        tampered[-1] ^= 1
        for msg in (*forged, bytes(tampered), b"\xff\x00garbage", b""):
            be.publish(f"{ROOT}/cmd/verify", msg, ResponseTopic=reply, CorrelationData=b"attacker")
        msg, cmd = command(backend_key, faces["stranger"])  # a real one after them, answered
        be.publish(f"{ROOT}/cmd/verify", msg)
        wait_result(be, d.public, cmd["request_id"])
        time.sleep(1.5)
        later = [m for m in be.messages[n0:] if "/cmd/" not in m.topic]  # what the device published
        assert not [m.topic for m in later if _carries(m, rid.encode(), nonce)], "the victim's ids were echoed"
        assert not [m for m in later if m.topic == reply or m.correlation == b"attacker"]
        assert not [m for m in ha.messages if _carries(m, rid.encode(), nonce) or not m.retain]
        assert [r["request_id"] for r in results(be, d.public)[-1:]] == [cmd["request_id"]]
        got = _ignored(d, at_least={"not_cose": ignored_before.get("not_cose", 0) + 5})
        for reason, n in (("not_cose", 5), ("unknown_key", 1), ("bad_signature", 2)):
            assert got.get(reason, 0) - ignored_before.get(reason, 0) == n, (reason, got, ignored_before)
    finally:
        ha.close()


def test_replayed_command_bytes_get_no_second_answer(running, faces, backend_key):
    """The same bytes published again, while the session runs and after its result: one
    signed answer, on R/result and on the response topic; the replays are counted."""
    d, be = running
    before = _ignored(d).get("replayed_request_id", 0)
    reply = f"facegate/v1/replies/backend/{uuid.uuid4().hex[:6]}"
    msg, cmd = command(backend_key, faces["ref"])
    be.publish(f"{ROOT}/cmd/verify", msg, ResponseTopic=reply, CorrelationData=b"c1")
    be.publish(f"{ROOT}/cmd/verify", msg, ResponseTopic=reply, CorrelationData=b"c2")
    r = wait_result(be, d.public, cmd["request_id"])
    assert r["decision"] == "match" and r["nonce"] == cmd["nonce"]
    be.publish(f"{ROOT}/cmd/verify", msg, ResponseTopic=reply, CorrelationData=b"c3")
    assert _ignored(d, at_least={"replayed_request_id": before + 2})["replayed_request_id"] == before + 2
    time.sleep(1.0)
    assert [x["decision"] for x in results(be, d.public) if x["request_id"] == cmd["request_id"]] == ["match"]
    replies = be.on(reply)
    assert [(m.correlation, independent_verify(m.payload, d.public, reply)["seq"]) for m in replies] == [
        (b"c1", r["seq"])]


def test_response_topics_are_honoured_only_under_the_configured_prefix(running, faces, backend_key):
    d, be = running
    n0 = len(be.messages)
    ids = []
    for rt in (f"{ROOT}/attest", f"{ROOT}/status", "homeassistant/sensor/x/config", "facegate/v1/repliesX",
               "facegate/v1/other/x"):
        msg, cmd = command(backend_key, b"not an image")  # rejected at once: bad_reference
        be.publish(f"{ROOT}/cmd/verify", msg, ResponseTopic=rt, CorrelationData=b"x")
        ids.append(cmd["request_id"])
    for rid in ids:
        assert wait_result(be, d.public, rid)["reason"] == "bad_reference"
    time.sleep(1.0)
    assert not [m.topic for m in be.messages[n0:] if m.topic not in (f"{ROOT}/result", f"{ROOT}/event")
                and "/cmd/" not in m.topic and _carries(m, *(i.encode() for i in ids))]
    assert not [m for m in be.messages[n0:] if m.correlation == b"x" and "/cmd/" not in m.topic]


def _session(d, be, backend_key, reference: bytes, **cmd_over) -> dict:
    """Run one session to its result (this test's own: no test relies on another's)."""
    msg, cmd = command(backend_key, reference, **cmd_over)
    be.publish(f"{ROOT}/cmd/verify", msg)
    return wait_result(be, d.public, cmd["request_id"])


def test_state_health_attest_and_discovery_are_published(running, broker, faces, backend_key):
    """Issue 25: the state check was `any(waiting_face) or no results at all`, true whatever
    ran before; now the test runs its own session and checks its states in order.
    Mutation: the session never publishes waiting_face (session.py's first state step
    dropped) - fails."""
    d, be = running
    n0 = len(be.messages)
    r = _session(d, be, backend_key, faces["ref"])
    def back_to_idle(ms):  # the session's states, once the last state published is idle again
        st = [json.loads(m.payload) for m in ms[n0:] if m.topic == f"{ROOT}/state"]
        done = any(x["session"] == r["session"] and x["state"] == "deciding" for x in st)
        return st if done and st[-1]["state"] == "idle" else None
    seen = be.wait_for(back_to_idle, 30)
    mine = [x["state"] for x in seen if x["session"] == r["session"]]
    collapsed = [a for i, a in enumerate(mine) if i == 0 or mine[i - 1] != a]
    assert collapsed[0] == "waiting_face" and "deciding" in collapsed, seen
    assert collapsed.index("waiting_face") < collapsed.index("deciding"), seen
    assert seen[-1] == {"state": "idle", "step": None, "session": None}, seen
    late = Backend(broker, user="dashboard", subscribe=f"{ROOT}/#")  # joins later: sees the retained ones
    try:
        late.wait_for(lambda ms: {f"{ROOT}/{t}" for t in ("status", "attest", "state", "health")}
                      <= {m.topic for m in ms if m.retain}, 10)
    finally:
        late.close()
    attest = be.wait_for(lambda ms: [m for m in ms if m.topic == f"{ROOT}/attest"])[-1]
    a = independent_verify(attest.payload, d.public, f"{ROOT}/attest")
    assert a["dev"] == DEV and a["pub"] == d.public and a["kid"] == signing.kid_of(d.public)
    assert set(a["models"]) >= {"embed", "pad_v2"} and a["boot"] and a["sw"]
    health = json.loads(be.wait_for(lambda ms: [m for m in ms if m.topic == f"{ROOT}/health"])[-1].payload)
    assert {"uptime_s", "fps", "latency_ms", "outbox_depth", "camera_ok", "models_ok"} <= set(health)
    assert health["camera_ok"] is True
    states = [json.loads(m.payload) for m in be.on(f"{ROOT}/state")]
    assert all({"state", "step", "session"} == set(x) for x in states)
    events = [json.loads(m.payload) for m in be.on(f"{ROOT}/event")]
    assert all(set(e) == {"session", "request_id", "decision", "ts"} for e in events)
    ha = Backend(broker, user="backend", subscribe="homeassistant/#")  # Home Assistant's view (retained)
    try:
        cfgs = ha.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/decision/config")], 10)
        c = json.loads(cfgs[0].payload)
        assert c["state_topic"] == f"{ROOT}/event" and "match" in c["event_types"]
    finally:
        ha.close()


def _biometric_needles(faces, verifier) -> dict[str, list[bytes]]:
    """What must never leave the session: pieces of the reference JPEG, of its decoded
    pixels and of its embedding (as the daemon computes it: float32, also as float64)."""
    import numpy as np

    from facegate.imageio import decode_image

    ref = faces["ref"]
    pixels = decode_image(ref).tobytes()
    emb = verifier.analyze(decode_image(ref), reference=True).face.embedding
    return {"jpeg": [ref[i:i + 64] for i in range(0, len(ref) - 64, 997)],
            "pixels": [pixels[i:i + 48] for i in range(0, len(pixels) - 48, 4099)],
            "embedding": [np.asarray(emb, dt).tobytes()[i:i + 16] for dt in (np.float32, np.float64)
                          for i in range(0, 128 * np.dtype(dt).itemsize - 16, 64)]}


def _scan(name: str, data: bytes, needles: dict[str, list[bytes]], words: bool = True) -> None:
    """No piece of the needles in `data`; with `words`, not the words similarity / score /
    embedding at all (a published payload), else not as a field (`"score":`, `similarity=`:
    the status file's model self-test line may say '4 embeddings at cosine >= ...')."""
    for kind, chunks in needles.items():
        assert not any(c in data for c in chunks), (name, kind)
    text = data.decode("latin-1").lower()
    if words:
        for word in ("similarity", "score", "embedding"):
            assert word not in text, (name, word)
    else:
        assert not re.search(r'(similarity|score|embedding)s?"?\s*[:=]', text), (name, text[-2000:])


def test_no_published_payload_carries_biometrics(running, faces, backend_key, verifier):
    """Runs its own sessions (a match and a no_match) and scans what they produced on every
    topic. Issue 25: it used to scan whatever earlier tests had left (`assert 4 >= 7` run
    alone). Mutation: the kiosk adding `similarity` to the quality map and public_quality
    passing every key through - fails on R/result."""
    d, be = running
    n0 = len(be.messages)
    assert _session(d, be, backend_key, faces["ref"])["decision"] == "match"
    assert _session(d, be, backend_key, faces["stranger"])["decision"] == "no_match"
    be.wait_for(lambda ms: [m for m in ms[n0:] if m.topic == f"{ROOT}/health"], 10)  # a health after both
    published = [m for m in be.messages[n0:] if "/cmd/" not in m.topic]  # the rest is the device's
    assert {f"{ROOT}/{t}" for t in ("state", "health", "event", "result")} <= {m.topic for m in published}
    needles = _biometric_needles(faces, verifier)
    for m in [*published, *(m for m in be.messages[:n0] if "/cmd/" not in m.topic)]:
        _scan(m.topic, m.payload, needles)


def test_nothing_biometric_is_left_in_the_state_dir_or_the_log(running, faces, backend_key, verifier):
    """README: the portrait, frames, crops and embeddings live in memory for the session
    only. After real sessions, every file in the state dir - outbox.sqlite and its -wal /
    -shm, status.json, the key - and the daemon's log are searched for pieces of the
    reference (JPEG and pixels), its embedding, and the words similarity / score /
    embedding. Mutation checked by hand: the daemon logging the decision's similarity
    (`log.info("similarity=%.3f", ...)` in session.py) - fails on the log; the kiosk adding
    `similarity` to the quality map and public_quality passing it through - fails on the
    outbox (and the payload test on R/result)."""
    d, be = running
    assert _session(d, be, backend_key, faces["ref"])["decision"] == "match"
    assert _session(d, be, backend_key, faces["stranger"])["decision"] == "no_match"
    files = sorted(p for p in d.state.rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert {"outbox.sqlite", "status.json"} <= names, names
    assert "outbox.sqlite-wal" in names or (d.state / "outbox.sqlite").stat().st_size > 0
    needles = _biometric_needles(faces, verifier)
    for p in [*files, d.dir / "daemon.log"]:
        _scan(str(p.relative_to(d.dir)), p.read_bytes(), needles, words=p.name.startswith("outbox"))


def test_discovery_is_republished_when_home_assistant_comes_online(running, broker):
    d, be = running
    ha = Backend(broker, user="backend", subscribe="homeassistant/#")
    try:
        ha.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/decision/config")], 10)
        n = len(ha.messages)
        ha.publish("homeassistant/status", b"online")
        again = ha.wait_for(lambda ms: [m for m in ms[n:] if m.topic.endswith("/decision/config")], 10)
        assert not again[0].retain  # a fresh publish, not the retained copy
        assert {json.loads(m.payload)["unique_id"] for m in ha.messages if m.topic.endswith("/config")} >= {
            "facegate_kiosk-1_state", "facegate_kiosk-1_decision", "facegate_kiosk-1_online"}
    finally:
        ha.close()
