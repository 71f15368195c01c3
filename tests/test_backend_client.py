"""The request client (`BackendClient.verify`, `facegate backend verify`) against a real
daemon subprocess and a real Mosquitto, and against a fake terminal that answers with
forged, mismatched or replayed results (which the client must refuse)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import cbor2
import pytest

from backendkit import backend_config, write_toml
from broker import Backend, Mosquitto
from daemon_helpers import DEV, DaemonProc, wait_online
from facegate import signing
from facegate.backend.client import BackendClient, DeviceNotTrusted, VerifyRejected, VerifyTimeout
from facegate.backend.config import StoreConfig
from facegate.backend.registry import Registry
from facegate.backend.store import Store
from terminals import Terminal


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture()
def setup(broker, tmp_path, backend_key):
    cfg = backend_config(broker, StoreConfig(sqlite=str(tmp_path / "backend.db")), tmp_path)
    signing.save_key(backend_key, tmp_path / "backend.pem")
    cfg = cfg.model_copy(update={"key_file": str(tmp_path / "backend.pem")})
    return cfg, write_toml_with_key(cfg, tmp_path)


def write_toml_with_key(cfg, d):
    path = write_toml(cfg, d / "backend.toml")
    path.write_text(f'key_file = "{cfg.key_file}"\n' + path.read_text())
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


# -- a real terminal --------------------------------------------------------------------------
def test_enrol_then_verify_a_real_daemon_by_cli_and_python(broker, setup, tmp_path, faces, backend_key, model_dir):
    cfg, toml = setup
    (tmp_path / "daemon").mkdir()
    d = DaemonProc(tmp_path / "daemon", broker, faces, backend_key).start()
    watch = Backend(broker)
    try:
        wait_online(watch)
        # the operator copies `facegate keys show` from the terminal and enrols it
        shown = cli("keys", "show", "--config", str(d.cfg))
        assert shown.returncode == 0, shown.stderr
        (tmp_path / "kiosk.key").write_text(shown.stdout)
        # a device not enrolled is refused before anything is sent
        with BackendClient(cfg) as client, pytest.raises(DeviceNotTrusted):
            client.verify(DEV, faces["ref"])
        enrol = cli("backend", "devices", "enrol", str(tmp_path / "kiosk.key"), "--device", DEV, "--config", str(toml))
        assert enrol.returncode == 0 and "enrolled kiosk-1" in enrol.stdout, enrol.stderr
        (tmp_path / "ref.jpg").write_bytes(faces["ref"])
        v = cli("backend", "verify", "--device", DEV, "--reference", str(tmp_path / "ref.jpg"), "--challenge", "",
                "--timeout-s", "90", "--json", "--config", str(toml))
        assert v.returncode == 0, (v.stdout, v.stderr, d.logtext()[-1500:])
        first = json.loads(v.stdout)
        assert first["decision"] == "match" and first["dev"] == DEV
        reply_topic = f"{cfg.mqtt.replies}/{cfg.mqtt.client_id}"
        assert reply_topic.startswith("facegate/v1/replies/backend/")  # the user's own: the ACL lets it read only those
        assert first["topic"] in (reply_topic, f"facegate/v1/{DEV}/result")  # whichever copy came first
        # the terminal honoured the MQTT 5 response topic, with correlation data
        reply = watch.wait_for(lambda ms: [m for m in ms if m.topic == reply_topic])[0]
        assert reply.correlation and len(reply.correlation) == 16
        assert signing.verify(reply.payload, signing.public_from_hex(d.public.hex()), reply_topic).payload[
            "request_id"] == first["request_id"]
        # the same through the Python API: a stranger, then an unreadable portrait
        with BackendClient(cfg) as client:
            r = client.verify(DEV, faces["stranger"], timeout_s=90)
            assert (r.decision, r.reason) == ("no_match", "different_person")
            assert r.seq > first["seq"] and r.kid == signing.kid_of(d.public).hex()
            signing.verify(r.message, signing.public_from_hex(d.public.hex()), r.topic)  # the proof verifies
            with pytest.raises(VerifyRejected) as rej:
                client.verify(DEV, b"this is not an image", timeout_s=30)
            assert rej.value.reason == "bad_reference" and rej.value.result.seq > r.seq
            assert rej.value.result.detail == "reference is not a JPEG, PNG, BMP or WebP image"  # signed by it
            assert str(rej.value).endswith("bad_reference (reference is not a JPEG, PNG, BMP or WebP image)")
        # revoked: refused before anything is sent
        Registry(BackendClient(cfg).store).revoke(DEV, time.time())
        with BackendClient(cfg) as client, pytest.raises(DeviceNotTrusted):
            client.verify(DEV, faces["ref"])
    finally:
        watch.close()
        d.stop()


# -- a fake terminal that lies ------------------------------------------------------------------
class FakeTerminal:
    """Answers each verify command on its response topic with the results `answers(cmd)`
    builds (a list of (topic, bytes))."""

    def __init__(self, broker: Mosquitto, term: Terminal, answers):
        self.term, self.answers = term, answers
        self.commands: list[dict] = []
        broker.add_user(term.dev)
        self.be = Backend(broker, user=term.dev, subscribe=term.topics.cmd_verify)
        self.be.client.on_message = self._on_message
        subscribed = threading.Event()
        self.be.client.on_subscribe = lambda *a: subscribed.set()
        # (if the SUBACK came before the line above, is_connected() says the subscribe went out
        # first: on_connect subscribes before anything else is read from the socket)
        assert subscribed.wait(10) or self.be.client.is_connected()
        time.sleep(0.2)

    def _on_message(self, c, u, msg) -> None:
        cmd = cbor2.loads(cbor2.loads(msg.payload).value[2])
        self.commands.append(cmd)
        reply = msg.properties.ResponseTopic
        corr = msg.properties.CorrelationData

        def send():
            for topic, payload in self.answers(cmd, reply):
                self.be.publish(topic, payload, CorrelationData=corr) if topic == reply else \
                    self.be.publish(topic, payload)
        threading.Thread(target=send, daemon=True).start()

    def close(self):
        self.be.close()


def test_the_client_refuses_forged_mismatched_and_replayed_answers(broker, setup):
    cfg, _ = setup
    term, impostor = Terminal("kiosk-fake"), Terminal("kiosk-fake")
    client = BackendClient(cfg)
    Registry(client.store).enrol(term.dev, term.key.public, time.time())
    good_seq = {}

    def lying(cmd, reply):
        rid, nonce = cmd["request_id"], cmd["nonce"]
        yield reply, impostor.result(request_id=rid, nonce=nonce, topic=reply)[1]  # another key
        yield reply, term.result(request_id=rid, nonce=nonce)[1]  # signed for R/result, sent to reply
        yield reply, term.result(request_id=rid, nonce=b"x" * 16, topic=reply)[1]  # wrong nonce
        yield reply, term.result(request_id="other", nonce=nonce, topic=reply)[1]  # wrong request
        yield reply, term.result(request_id=rid, nonce=nonce, topic=reply, iat_=time.time() - 3600)[1]  # stale
        yield reply, term.result(request_id=rid, nonce=nonce, topic=reply, dev_="kiosk-9")[1]  # other device
        if good_seq:  # an answer re-using an accepted seq
            saved, term.seq = term.seq, good_seq["seq"] - 1
            yield reply, term.result(request_id=rid, nonce=nonce, topic=reply)[1]
            term.seq = saved

    fake = FakeTerminal(broker, term, lying)
    try:
        with pytest.raises(VerifyTimeout) as err:
            client.verify(term.dev, b"portrait", timeout_s=8)
        assert err.value.refused == [f"unknown_key {impostor.key.kid.hex()}", "bad_signature", "wrong_nonce", "wrong_request_id", "stale",
                                     "wrong_device"]

        def honest_after_lies(cmd, reply):
            yield from lying(cmd, reply)
            seq, m = term.result(decision="spoof", reason="presentation_attack", request_id=cmd["request_id"],
                                 nonce=cmd["nonce"], topic=reply)
            good_seq["seq"] = seq
            yield reply, m

        fake.answers = honest_after_lies
        r = client.verify(term.dev, b"portrait", challenge=["blink"], timeout_s=20)
        assert (r.decision, r.reason, r.seq) == ("spoof", "presentation_attack", good_seq["seq"])
        assert fake.commands[-1]["challenge"] == ["blink"]
        fake.answers = lying  # now with a replayed seq among the lies
        with pytest.raises(VerifyTimeout) as err:
            client.verify(term.dev, b"portrait", timeout_s=8)
        assert "replayed_seq" in err.value.refused

        def rejecting(cmd, reply):  # the terminal is busy: a signed `rejected` on R/result only
            yield term.topics.result, term.result(decision="rejected", reason="busy", request_id=cmd["request_id"],
                                                  nonce=cmd["nonce"])[1]
        fake.answers = rejecting
        with pytest.raises(VerifyRejected, match="busy"):
            client.verify(term.dev, b"portrait", timeout_s=20)
    finally:
        fake.close()
        client.close()


def test_a_silent_terminal_times_out(broker, setup):
    cfg, toml = setup
    term = Terminal("kiosk-silent")
    with BackendClient(cfg) as client:
        Registry(client.store).enrol(term.dev, term.key.public, time.time())
        t0 = time.monotonic()
        with pytest.raises(VerifyTimeout) as err:
            client.verify(term.dev, b"portrait", timeout_s=1.5)
        assert 1.4 < time.monotonic() - t0 < 10 and err.value.refused == []
    (toml.parent / "ref.jpg").write_bytes(b"portrait")
    r = cli("backend", "verify", "--device", term.dev, "--reference", str(toml.parent / "ref.jpg"), "--timeout-s", "1",
            "--config", str(toml))
    assert r.returncode == 1 and "no answer from kiosk-silent" in r.stderr, r.stderr


def test_demo_shows_the_backend_side(tmp_path, model_dir):
    """`facegate demo --backend`: the demo terminal's result stored as a serve worker stores
    it, once; a copy on another terminal's topic quarantined."""
    r = cli("demo", "--synthetic", "--liveness", "none", "--backend", "--workdir", str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backend: result seq 1 stored (audit table 'results', key (demo-kiosk, 1))" in r.stdout, r.stdout
    assert "the same bytes again: duplicate; copied to another-kiosk's topic: quarantined: wrong_topic" in r.stdout
    store = Store.sqlite(tmp_path / "backend.db")
    try:
        assert store.query("SELECT dev, seq, decision, worker FROM results") == [("demo-kiosk", 1, "match", "demo")]
    finally:
        store.close()
