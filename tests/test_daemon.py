"""The daemon end to end: a real Mosquitto (TLS, passwords, ACL), `facegate run` as a
subprocess with a video file as its camera, signed commands from a backend client, and
results checked with an independent COSE verifier (plain cbor2 + cryptography)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cbor2
import cv2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker import Backend, Mosquitto
from facegate import signing

DEV = "kiosk-1"
ROOT = f"facegate/v1/{DEV}"
REPLY = "facegate/v1/replies/backend-7"


# -- an independent verifier: RFC 9052 COSE_Sign1 by hand ---------------------------------
def independent_verify(message: bytes, public_raw: bytes, topic: str) -> dict:
    """Verify exactly as a backend without facegate would; returns the payload map."""
    tag = cbor2.loads(message)
    assert tag.tag == 18 and len(tag.value) == 4
    protected, unprotected, payload, sig = tag.value
    hdr = cbor2.loads(protected)
    assert hdr[1] == -8, "alg must be EdDSA"
    import hashlib

    assert hdr[4] == hashlib.sha256(public_raw).digest()[:8], "kid = sha256(pub)[:8]"
    sig_structure = cbor2.dumps(["Signature1", protected, topic.encode(), payload])
    Ed25519PublicKey.from_public_bytes(public_raw).verify(sig, sig_structure)  # raises if bad
    return cbor2.loads(payload)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def faces(data_dir, lfw, tmp_path_factory):
    """The camera video, a matching portrait (frame 20 of it) and a stranger's portrait."""
    from facegate.adapters.files import FileCamera

    d = tmp_path_factory.mktemp("faces")
    video = data_dir / "replay" / "zubair" / "live.webm"
    with FileCamera(video) as cam:
        for f in cam.frames():
            if f.seq == 20:
                ok, jpg = cv2.imencode(".jpg", f.image)
                (d / "ref.jpg").write_bytes(jpg.tobytes())
                break
    stranger = (lfw / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg").read_bytes()
    return {"video": video, "ref": (d / "ref.jpg").read_bytes(), "stranger": stranger}


@pytest.fixture(scope="module")
def backend_key():
    return signing.SigningKey.generate()


class DaemonProc:
    """`facegate run` in a subprocess with its own state dir."""

    def __init__(self, d: Path, broker: Mosquitto, faces, backend_key, extra: str = ""):
        self.dir = d
        self.state = d / "state"
        self.cfg = d / "facegate.toml"
        self.cfg.write_text(
            f'device_id = "{DEV}"\n'
            f'[camera]\nsource = "file"\npath = "{faces["video"]}"\nrealtime = false\nidle_fps = 5\n'
            f'[daemon]\nstate_dir = "{self.state}"\nliveness = "passive"\nhealth_interval_s = 1\n'
            f'session_timeout_s = 20\n'
            f'[liveness]\nstep_timeout_s = 10.0\n'
            + broker.mqtt_toml("device")
            + f'trusted_keys = ["{backend_key.public.hex()}"]\n' + extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "DaemonProc":
        self.log = open(self.dir / "daemon.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "run", "--config", str(self.cfg)],
                                     stdout=self.log, stderr=self.log)
        return self

    @property
    def public(self) -> bytes:
        return signing.load_key(self.state / "signing.key").public

    def status(self) -> dict:
        return json.loads((self.state / "status.json").read_text())

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode if self.proc else 0

    def logtext(self) -> str:
        return (self.dir / "daemon.log").read_text(errors="replace")


def wait_online(backend: Backend, timeout_s=60.0):
    backend.wait_for(lambda ms: any(m.topic == f"{ROOT}/status" and m.payload == b"online" for m in ms), timeout_s)


def command(key, reference: bytes, topic=f"{ROOT}/cmd/verify", **over) -> tuple[bytes, dict]:
    now = time.time()
    payload = {"request_id": uuid.uuid4().hex, "nonce": os.urandom(16), "iat": int(now), "exp": int(now) + 120,
               "reference": reference}
    payload.update(over)
    payload = {k: v for k, v in payload.items() if v is not None}
    return signing.sign(payload, key, topic), payload


def results(backend: Backend, public: bytes, topic=f"{ROOT}/result") -> list[dict]:
    return [independent_verify(m.payload, public, topic) for m in backend.on(topic)]


def wait_result(backend: Backend, public: bytes, request_id: str, timeout_s=90.0, decision=None) -> dict:
    def find(_):
        for r in results(backend, public):
            if r["request_id"] == request_id and decision in (None, r["decision"]):
                return r
        return None
    return backend.wait_for(find, timeout_s)


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
    with pytest.raises(Exception):
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


def test_stranger_portrait_gives_no_match(running, faces, backend_key):
    d, be = running
    msg, cmd = command(backend_key, faces["stranger"])
    be.publish(f"{ROOT}/cmd/verify", msg)
    r = wait_result(be, d.public, cmd["request_id"])
    assert r["decision"] == "no_match" and r["reason"] == "different_person"


def test_bad_commands_are_rejected_and_start_nothing(running, faces, backend_key):
    d, be = running
    other = signing.SigningKey.generate()
    sessions_before = d.status()["health"]["sessions"]
    now = int(time.time())
    cases = {}
    m, c = command(backend_key, faces["ref"])
    be.publish(f"{ROOT}/cmd/verify", m)
    first = c
    cases["replayed_request_id"] = command(backend_key, faces["ref"], request_id=first["request_id"])
    cases["replayed_nonce"] = command(backend_key, faces["ref"], nonce=first["nonce"])
    cases["unknown_key"] = command(other, faces["ref"])
    cases["expired"] = command(backend_key, faces["ref"], iat=now - 600, exp=now - 300)
    cases["bad_signature"] = command(backend_key, faces["ref"], topic=f"{ROOT}/cmd/other")  # signed for another topic
    cases["bad_reference"] = command(backend_key, b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    cases["missing_nonce"] = command(backend_key, faces["ref"], nonce=None)
    cases["bad_challenge"] = command(backend_key, faces["ref"], challenge=["smile"])
    rid_unsigned = uuid.uuid4().hex
    unsigned = cbor2.dumps({"request_id": rid_unsigned, "nonce": os.urandom(8), "iat": now, "exp": now + 60,
                            "reference": faces["ref"]})
    wait_result(be, d.public, first["request_id"])
    for reason, (msg, cmd) in cases.items():
        be.publish(f"{ROOT}/cmd/verify", msg)
    be.publish(f"{ROOT}/cmd/verify", unsigned)
    be.publish(f"{ROOT}/cmd/verify", b"\xff\x00garbage")
    for reason, (msg, cmd) in cases.items():
        r = wait_result(be, d.public, cmd["request_id"], decision="rejected")
        assert r["reason"] == reason, (reason, r)
        assert r["session"] is None
    r = wait_result(be, d.public, rid_unsigned)
    assert (r["decision"], r["reason"]) == ("rejected", "not_cose")
    be.wait_for(lambda _: [r for r in results(be, d.public) if r["request_id"] is None and r["reason"] == "not_cose"])
    time.sleep(1.5)  # one health period
    assert d.status()["health"]["sessions"] == sessions_before + 1  # only the first, valid command


def test_state_health_attest_and_discovery_are_published(running, broker):
    d, be = running
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
    assert {"state", "step", "session"} == set(states[-1]) and states[-1]["state"] == "idle"
    assert any(s["state"] == "waiting_face" for s in states) or len(results(be, d.public)) == 0
    events = [json.loads(m.payload) for m in be.on(f"{ROOT}/event")]
    assert all(set(e) == {"session", "request_id", "decision", "ts"} for e in events)
    ha = Backend(broker, user="backend", subscribe="homeassistant/#")  # Home Assistant's view (retained)
    try:
        cfgs = ha.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/decision/config")], 10)
        c = json.loads(cfgs[0].payload)
        assert c["state_topic"] == f"{ROOT}/event" and "match" in c["event_types"]
    finally:
        ha.close()


def test_no_published_payload_carries_biometrics(running, faces):
    d, be = running
    ref = faces["ref"]
    chunks = [ref[i:i + 64] for i in range(0, len(ref) - 64, 997)]
    published = [m for m in be.messages if "/cmd/" not in m.topic]  # the rest is the device's
    assert len({m.topic for m in published}) >= 7
    for m in published:
        assert not any(c in m.payload for c in chunks), m.topic
        text = m.payload.decode("latin-1")
        for word in ("similarity", "score", "embedding"):
            assert word not in text, (m.topic, word)
