"""A real Mosquitto for tests: free loopback port, TLS with a throw-away CA, a password
file and an ACL. Also a backend client (paho) that records everything it receives."""
from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
USERS = {"backend": "backend-secret", "dashboard": "dash-secret"}  # and one user per terminal, see password()
# Each terminal logs in with its device_id as user name: the patterns (%u = user name) let
# it write only its own topics and its Home Assistant discovery, read only its own command
# topic and Home Assistant's status; answers to an MQTT 5 response topic go under
# facegate/v1/replies/. The backend reads everything and commands every terminal; a dashboard
# only reads. README "Broker ACL" shows the same file.
ACL = """\
pattern write facegate/v1/%u/status
pattern write facegate/v1/%u/attest
pattern write facegate/v1/%u/state
pattern write facegate/v1/%u/health
pattern write facegate/v1/%u/event
pattern write facegate/v1/%u/result
pattern read facegate/v1/%u/cmd/verify
pattern write facegate/v1/replies/#
pattern write homeassistant/+/facegate_%u/+/config
pattern read homeassistant/status

user backend
topic readwrite facegate/#
topic readwrite homeassistant/#

user dashboard
topic read facegate/#
"""


def password(user: str) -> str:
    """The test password of `user` (a terminal's user is its device_id)."""
    return USERS.get(user, f"{user}-secret")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cert(subject: str, key, issuer_name, issuer_key, ca: bool, sans=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_tls(d: Path) -> dict[str, Path]:
    """CA, a server certificate for 127.0.0.1 / localhost and a client certificate, PEM files in d."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "facegate test CA")])
    ca = _cert("facegate test CA", ca_key, ca_name, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("localhost", key, ca_name, ca_key, False,
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    ckey = ec.generate_private_key(ec.SECP256R1())
    client = _cert("kiosk-1", ckey, ca_name, ca_key, False)
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key",
             "client_cert": d / "client.pem", "client_key": d / "client.key"}
    files["client_cert"].write_bytes(client.public_bytes(serialization.Encoding.PEM))
    files["client_key"].write_bytes(ckey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


class Mosquitto:
    """mosquitto on 127.0.0.1:port with TLS, passwords and an ACL; start/stop/kill."""

    def __init__(self, d: Path, persist: bool = False, client_certs: bool = False, autosave_s: int = 1):
        """client_certs: the listener also requires a client certificate from the CA.
        persist: keep sessions on disk, saved every autosave_s and on SIGTERM (a SIGKILL
        loses what came since the last save)."""
        self.dir = d
        self.proc: subprocess.Popen | None = None
        self.port = free_port()
        self.tls = make_tls(d)
        pw = self.passwd = d / "passwd"
        pw.write_text("")
        self.users: set[str] = set()
        for user in USERS:
            self.add_user(user)
        (d / "acl").write_text(ACL)
        (d / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {self.tls['ca']}\ncertfile {self.tls['cert']}\nkeyfile {self.tls['key']}\n"
            + ("require_certificate true\n" if client_certs else "")
            + f"allow_anonymous false\npassword_file {pw}\nacl_file {d / 'acl'}\n"
            + (f"persistence true\npersistence_location {d}/\nautosave_interval {autosave_s}\n" if persist
               else "persistence false\n")
            + "log_dest stderr\nlog_type error\nlog_type warning\n"
            "max_inflight_messages 20\nmax_queued_messages 100000\n"
            # as root, mosquitto would switch to its own user, who cannot read pytest's tmp dirs
            + (f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" if os.geteuid() == 0 else ""))
        for f in (pw, d / "acl", *self.tls.values()):
            f.chmod(0o644)

    def add_user(self, user: str) -> None:
        """Put `user` (with password(user)) in the password file; a running broker re-reads
        it (SIGHUP)."""
        if user in self.users:
            return
        subprocess.run(["mosquitto_passwd", "-b", str(self.passwd), user, password(user)], check=True,
                       capture_output=True)
        self.users.add(user)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)

    def start(self) -> Mosquitto:
        """Start and wait until ready. free_port() only names a port that was free a moment
        ago: if another process took it meanwhile, mosquitto cannot bind and exits, and a
        first start tries again on a new port (issue 25; a restart keeps its port, the
        clients reconnect to it)."""
        for _ in range(5):
            log = self.dir / "mosquitto.log"
            log_from = log.stat().st_size if log.exists() else 0
            if self._start_once():
                self.started = True
                return self
            said = log.read_bytes()[log_from:].decode(errors="replace")
            if getattr(self, "started", False) or "Address already in use" not in said:
                raise RuntimeError(said)
            conf, old, self.port = self.dir / "mosquitto.conf", self.port, free_port()
            conf.write_text(conf.read_text().replace(f"listener {old} ", f"listener {self.port} "))
        raise RuntimeError("mosquitto found no free port in 5 tries")

    def _start_once(self) -> bool:
        """True once ready; False when mosquitto exited (its log says why)."""
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "mosquitto.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self._handles_sighup():
                    return True
            except OSError:
                pass
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def wait_saved(self, timeout_s: float = 15.0) -> None:
        """Block until the broker has written its persistence file (its next autosave) after
        this call, so what it holds now (a backend's session and subscriptions, queued
        messages) survives a SIGKILL. A backend that subscribed less than autosave_interval
        before the first kill was forgotten with it, missed what the daemon re-sent before
        it subscribed again, and saw those results only at the next kill's re-send, after
        newer ones (the soak's 'reordered' failures)."""
        t = time.time() + 0.1  # a save already under way may predate what we want kept
        db = self.dir / "mosquitto.db"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if db.stat().st_mtime > t:
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not save its state within {timeout_s:g} s")

    def _handles_sighup(self) -> bool:
        """Mosquitto opens its listeners before it installs its signal handlers: a SIGHUP
        (add_user) in between kills it (the default action), which under load happened
        about once in 20 starts and left a test with no broker. Ready = SIGHUP is caught
        (bit 0 of SigCgt in /proc/PID/status)."""
        assert self.proc is not None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & 1 << (signal.SIGHUP - 1))
        except (OSError, ValueError):
            pass
        return False

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    def mqtt_toml(self, user: str) -> str:
        """The [mqtt] section of a terminal whose device_id (and user name) is `user`."""
        self.add_user(user)
        pw = self.dir / f"{user}.password"
        pw.write_text(password(user) + "\n")
        return (f'[mqtt]\nhost = "127.0.0.1"\nport = {self.port}\ntls = true\nca_file = "{self.tls["ca"]}"\n'
                f'username = "{user}"\npassword_file = "{pw}"\nreconnect_min_s = 1\nreconnect_max_s = 2\n'
                'keepalive_s = 5\n')


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None = None
    t: float = field(default_factory=time.monotonic)


class Backend:
    """A paho client (MQTT 5, TLS, password) recording every message on `subscribe`."""

    def __init__(self, broker: Mosquitto, user: str = "backend", subscribe: str = "facegate/#",
                 persistent: bool = False, client_id: str | None = None):
        """persistent: a session the broker keeps (and queues for) across reconnects;
        client_id: the same id picks up that session again."""
        broker.add_user(user)
        self.messages: list[Received] = []
        self._cv = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=client_id or f"test-{user}-{time.monotonic_ns()}")
        self.client.username_pw_set(user, password(user))
        self.client.tls_set(ca_certs=str(broker.tls["ca"]))
        self.client.reconnect_delay_set(1, 1)
        self.topic = subscribe
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_message = self._on_message
        props = None
        if persistent:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", broker.port, keepalive=5, clean_start=not persistent,
                                  properties=props)
        self.client.loop_start()

    def _on_message(self, c, u, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        with self._cv:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), corr))
            self._cv.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._cv:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, pred, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                got = pred(self.messages)
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out; got topics {sorted({m.topic for m in self.messages})}")
                self._cv.wait(left)

    def publish(self, topic: str, payload: bytes, **props) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        p = None
        if props:
            p = Properties(PacketTypes.PUBLISH)
            for k, v in props.items():
                setattr(p, k, v)
        self.wait_for(lambda _: self.client.is_connected(), 10)
        self.client.publish(topic, payload, qos=1, properties=p).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
