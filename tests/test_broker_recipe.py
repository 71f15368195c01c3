"""scripts/broker-setup.sh, the broker recipe operators follow (docs/operator.md) and the
tests' broker is made by (tests/broker.py): Mosquitto 2.0 takes its files without a warning,
and the ACL confines a terminal to its own topics."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker import MOSQUITTO, RECIPE, Backend, Mosquitto, free_port, password, recipe


@pytest.fixture
def plain_dir():
    """A directory the broker's own user can read (pytest's tmp dirs are root's 0700 ones)."""
    d = Path(tempfile.mkdtemp(prefix="facegate-broker-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_recipe_makes_a_broker_mosquitto_takes_without_a_warning(plain_dir):
    """The ACL the docs used to give made Mosquitto 2.0.11 warn "ACL pattern
    'facegate/v1/replies/#' does not contain '%c' or '%u'"; per-user lines replace it."""
    port = free_port()
    out = recipe("init", plain_dir / "b", "--port", str(port), "--bind", "127.0.0.1")
    assert "user backend" in out and f"mosquitto -c {plain_dir / 'b' / 'mosquitto.conf'}" in out
    recipe("add-user", plain_dir / "b", "kiosk-7", "kiosk-8")
    acl = (plain_dir / "b" / "acl").read_text()
    assert "user kiosk-7\ntopic write facegate/v1/kiosk-7/status" in acl and "topic write facegate/v1/replies/#" in acl
    assert "\npattern " not in acl  # Mosquitto applies patterns to every user, readers too
    assert oct((plain_dir / "b" / "users" / "kiosk-7.password").stat().st_mode & 0o777) == "0o600"
    proc = subprocess.Popen([MOSQUITTO, "-c", str(plain_dir / "b" / "mosquitto.conf")], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Warning" not in err and "Error" not in err, err


def _publish(broker: Mosquitto, user: str, topic: str) -> int:
    """Publish QoS 1 as `user`; the PUBACK's reason code (0 = taken, 135 = not authorised)."""
    codes: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=f"t-{user}-{os.getpid()}")
    c.username_pw_set(user, password(user))
    c.tls_set(ca_certs=str(broker.tls["ca"]))
    c.on_publish = lambda _c, _u, _mid, rc, _p: codes.append(rc.value)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.publish(topic, b"x", qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        c.disconnect()
        c.loop_stop()
    return codes[0]


def test_a_terminal_may_publish_only_on_its_own_topics(tmp_path):
    b = Mosquitto(tmp_path).start()
    be = Backend(b)
    try:
        b.add_user("kiosk-7")
        assert _publish(b, "kiosk-7", "facegate/v1/kiosk-7/status") == 0
        assert _publish(b, "kiosk-7", "facegate/v1/replies/backend/shop") == 0
        assert _publish(b, "kiosk-7", "facegate/v1/kiosk-8/result") == 135  # another terminal's topic
        assert _publish(b, "kiosk-7", "facegate/v1/kiosk-8/cmd/verify") == 135  # commanding another
        be.wait_for(lambda ms: [m for m in ms if m.topic == "facegate/v1/replies/backend/shop"], 10)
        assert not be.on("facegate/v1/kiosk-8/result") and not be.on("facegate/v1/kiosk-8/cmd/verify")
    finally:
        be.close()
        b.stop()


def test_a_reader_publishes_nothing_not_even_as_a_device_of_its_name(tmp_path):
    """Mosquitto 2.0.11 applies 'pattern' lines to every user: the terminals' %u patterns let
    the read-only dashboard publish facegate/v1/dashboard/status, and every user answer under
    replies/. The recipe writes one block per user instead."""
    b = Mosquitto(tmp_path).start()
    be = Backend(b)
    try:
        for topic in ("facegate/v1/dashboard/status", "facegate/v1/dashboard/result", "facegate/v1/replies/backend/x",
                      "facegate/v1/kiosk-7/cmd/verify", "homeassistant/sensor/facegate_dashboard/x/config"):
            assert _publish(b, "dashboard", topic) == 135, topic
        time.sleep(0.5)
        assert not [m for m in be.messages if "dashboard" in m.topic or m.topic.startswith("facegate/v1/replies/")]
    finally:
        be.close()
        b.stop()


def test_a_backend_reads_its_own_replies_and_no_other_backends(tmp_path):
    """Each backend user has its own reply prefix, facegate/v1/replies/<user>/: a terminal
    answers there, and another backend user (subscribed to everything) never sees it."""
    b = Mosquitto(tmp_path).start()
    b.add_user("kiosk-7")
    be, other = Backend(b), Backend(b, user="backend-2")  # ROLES: a second backend user
    try:
        def results(ms):
            return [m for m in ms if m.topic == "facegate/v1/kiosk-7/result"]

        deadline = time.monotonic() + 20
        while not (results(be.messages) and results(other.messages)):  # until both are subscribed
            assert time.monotonic() < deadline, "the backends did not subscribe"
            assert _publish(b, "kiosk-7", "facegate/v1/kiosk-7/result") in (0, 16)
        n = len(results(other.messages))
        assert _publish(b, "kiosk-7", "facegate/v1/replies/backend/r1") == 0
        assert _publish(b, "kiosk-7", "facegate/v1/kiosk-7/result") == 0  # after r1, from the same client
        be.wait_for(lambda ms: [m for m in ms if m.topic == "facegate/v1/replies/backend/r1"], 10)
        other.wait_for(lambda ms: len(results(ms)) > n, 10)
        assert not [m for m in other.messages if m.topic.startswith("facegate/v1/replies/")]
        assert _publish(b, "backend-2", "facegate/v1/replies/backend/r2") == 135  # nor writes there
        assert _publish(b, "backend-2", "facegate/v1/replies/backend-2/r3") == 0
        assert _publish(b, "backend-2", "facegate/v1/kiosk-7/status") == 135  # nor speaks as a device
    finally:
        be.close()
        other.close()
        b.stop()


def test_init_refuses_an_existing_broker_and_add_user_keeps_a_given_password(tmp_path):
    recipe("init", tmp_path, "--port", str(free_port()), "--no-persistence")
    with pytest.raises(RuntimeError, match="exists: this broker is set up"):
        recipe("init", tmp_path)
    (tmp_path / "users" / "kiosk-9.password").write_text("chosen\n")
    recipe("add-user", tmp_path, "kiosk-9")
    recipe("add-user", tmp_path, "kiosk-9")  # again: one ACL block, same password
    assert (tmp_path / "acl").read_text().count("user kiosk-9\n") == 1
    assert (tmp_path / "users" / "kiosk-9.password").read_text() == "chosen\n"
    with pytest.raises(RuntimeError, match="use letters, digits"):
        recipe("add-user", tmp_path, "kiosk/7")


def test_the_recipe_is_shellcheck_clean():
    exe = shutil.which("shellcheck")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed")
        pytest.skip("shellcheck is not installed")
    r = subprocess.run([exe, "--shell=bash", str(RECIPE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
