"""`backend verify` failures that used to look alike (a full-timeout "no answer"), each told
apart with its cause and fix, against a real Mosquitto and fake terminals: a terminal that
never connected, one online that ignores us (our key not in its trusted_keys), answers signed
by a pending key, a reference over the terminals' limits (checked before sending), a publish
the broker's ACL refuses, a bad_reference with its detail, and untrusted devices."""
from __future__ import annotations

import struct
import time

import pytest

from backendkit import backend_config
from broker import Backend, Mosquitto, password
from facegate import signing
from facegate.backend.client import BackendClient, DeviceNotTrusted, ReferenceRefused, VerifyRejected, VerifyTimeout
from facegate.backend.config import StoreConfig
from facegate.backend.mqtt import PublishRefused
from facegate.backend.registry import Registry
from facegate.backend.store import KeyRow
from terminals import Terminal
from test_backend_client import FakeTerminal
from timeouts import wait_until


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture()
def cfg(broker, tmp_path, backend_key):
    c = backend_config(broker, StoreConfig(sqlite=str(tmp_path / "backend.db")), tmp_path)
    signing.save_key(backend_key, tmp_path / "backend.pem")
    return c.model_copy(update={"key_file": str(tmp_path / "backend.pem")})


def png_header(w: int, h: int) -> bytes:
    """The first bytes of a PNG of w x h pixels (all the size check reads)."""
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", w, h) + b"\x08\x02\x00\x00\x00" + bytes(64)


def test_a_terminal_that_never_connected_and_one_that_ignores_us_are_told_apart(broker, cfg, backend_key):
    never, deaf = Terminal("kiosk-never"), Terminal("kiosk-deaf")
    broker.add_user(deaf.dev)
    as_deaf = Backend(broker, user=deaf.dev, subscribe=deaf.topics.cmd_verify)  # online, answers nothing
    # its CONNECT is asynchronous: a publish before the CONNACK fails with 'not connected'
    # (a shuffled run under load caught it)
    wait_until(as_deaf.client.is_connected, 10, "the deaf terminal's CONNACK")
    with BackendClient(cfg) as client:
        for t in (never, deaf):
            Registry(client.store).enrol(t.dev, t.key.public, time.time())
        as_deaf.client.publish(deaf.topics.status, b"online", qos=1, retain=True).wait_for_publish(10)
        with pytest.raises(VerifyTimeout) as err:
            client.verify(never.dev, b"portrait", timeout_s=1.5)
        assert "kiosk-never never connected to this broker" in str(err.value) and "device_id" in err.value.hint
        with pytest.raises(VerifyTimeout) as err:
            client.verify(deaf.dev, b"portrait", timeout_s=1.5)
        assert "kiosk-deaf is online but silent" in err.value.hint
        assert f"mqtt.trusted_keys must hold {backend_key.public.hex()}" in err.value.hint
        assert as_deaf.wait_for(lambda ms: [m for m in ms if m.topic == deaf.topics.cmd_verify], 5)  # it was sent
    as_deaf.client.publish(deaf.topics.status, b"", qos=1, retain=True).wait_for_publish(10)
    as_deaf.close()


def test_answers_signed_by_a_pending_key_name_it_and_the_approve_command(broker, cfg):
    old, rotated = Terminal("kiosk-rot"), Terminal("kiosk-rot")  # the same terminal after 'keys rotate'

    def answer(cmd, reply):
        yield reply, rotated.result(request_id=cmd["request_id"], nonce=cmd["nonce"], topic=reply)[1]

    fake = FakeTerminal(broker, old, answer)
    try:
        with BackendClient(cfg) as client:
            Registry(client.store).enrol(old.dev, old.key.public, time.time())
            with pytest.raises(VerifyTimeout) as err:  # the rotation not yet seen by this backend
                client.verify(old.dev, b"portrait", timeout_s=3)
            kid = rotated.key.kid.hex()
            assert err.value.refused == [f"unknown_key {kid}"]
            assert "facegate backend devices pending --scan 2" in err.value.hint
            client.store.add_key(KeyRow(old.dev, kid, rotated.key.public, "pending", "attest", None, time.time(),
                                        time.time()))
            with pytest.raises(VerifyTimeout) as err:
                client.verify(old.dev, b"portrait", timeout_s=3)
            assert (f"signed by its pending key {kid} (a key rotation?): approve it with "
                    f"facegate backend devices approve {old.dev}") in str(err.value)
    finally:
        fake.close()


def test_a_reference_over_the_terminals_limits_is_refused_before_sending(broker, cfg):
    """A 20 MP photo came back as a bare bad_reference; a 4.7 MB PNG was dropped by the
    broker ('Dropping too large outgoing PUBLISH' in its log only) and timed out."""
    term = Terminal("kiosk-limits")
    watch = Backend(broker, user=term.dev, subscribe=term.topics.cmd_verify)  # the terminal reads its commands
    with BackendClient(cfg) as client:
        Registry(client.store).enrol(term.dev, term.key.public, time.time())
        with pytest.raises(ReferenceRefused, match=r"5472x3648 \(20.0 MP\); the terminals take at most 4.0 MP"):
            client.verify(term.dev, png_header(5472, 3648), timeout_s=5)
        with pytest.raises(ReferenceRefused, match=r"over the terminals' limit of 2,000,000"):
            client.verify(term.dev, png_header(1000, 1000) + bytes(2_100_000), timeout_s=5)
    time.sleep(0.5)
    assert not watch.on(term.topics.cmd_verify)  # nothing was sent
    watch.close()


def test_a_bad_reference_carries_its_detail(broker, cfg):
    term = Terminal("kiosk-badref")

    def reject(cmd, reply):
        yield reply, term.result(decision="rejected", reason="bad_reference", request_id=cmd["request_id"],
                                 nonce=cmd["nonce"], topic=reply)[1]

    fake = FakeTerminal(broker, term, reject)
    try:
        with BackendClient(cfg) as client:
            Registry(client.store).enrol(term.dev, term.key.public, time.time())
            with pytest.raises(VerifyRejected) as err:
                client.verify(term.dev, b"%PDF-1.7 a scan", timeout_s=20)
            assert err.value.detail == "not a JPEG, PNG, BMP or WebP image"
            assert str(err.value).endswith("bad_reference (not a JPEG, PNG, BMP or WebP image)")
    finally:
        fake.close()


def test_a_publish_the_broker_refuses_is_an_error_naming_the_acl(broker, cfg, tmp_path):
    """A backend logged in as a user the ACL lets only read (here the dashboard)."""
    term = Terminal("kiosk-acl")
    pw = tmp_path / "dashboard.password"
    pw.write_text(password("dashboard") + "\n")
    reader = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"username": "dashboard",
                                                                        "password_file": str(pw)})})
    with BackendClient(reader) as client:
        Registry(client.store).enrol(term.dev, term.key.public, time.time())
        t0 = time.monotonic()
        with pytest.raises(PublishRefused, match="its ACL does not let user 'dashboard' write there"):
            client.verify(term.dev, b"portrait", timeout_s=30)
        assert time.monotonic() - t0 < 10  # said at once, not after the timeout


def test_untrusted_devices_are_told_what_to_do(broker, cfg):
    term = Terminal("kiosk-untrusted")
    with BackendClient(cfg) as client:
        with pytest.raises(DeviceNotTrusted, match="kiosk-untrusted is not enrolled: on the terminal 'facegate keys "
                                                   "show > kiosk-untrusted.key'"):
            client.verify(term.dev, b"portrait")
        client.store.add_key(KeyRow(term.dev, term.key.kid.hex(), term.key.public, "pending", "attest", None,
                                    time.time(), time.time()))
        with pytest.raises(DeviceNotTrusted, match=f"key {term.key.kid.hex()} is pending, not approved: facegate "
                                                   "backend devices approve kiosk-untrusted"):
            client.verify(term.dev, b"portrait")
        Registry(client.store).revoke(term.dev, time.time())
        with pytest.raises(DeviceNotTrusted, match="kiosk-untrusted's key is revoked: it gets no commands") as err:
            client.verify(term.dev, b"portrait")
        assert "approve its pending key" not in str(err.value)
