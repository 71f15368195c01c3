"""A real Mosquitto for tests, made by the operators' recipe (scripts/broker-setup.sh): free
loopback port, TLS with a throw-away CA, a password file and the per-device ACL. Also a backend client (paho) that records everything it receives."""
from __future__ import annotations

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

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
RECIPE = Path(__file__).resolve().parent.parent / "scripts" / "broker-setup.sh"
USERS = {"backend": "backend-secret", "dashboard": "dash-secret"}  # and one user per terminal, see password()
ROLES = {"backend": "backend", "backend-2": "backend", "dashboard": "reader"}  # every other user is a terminal
# The broker is made by scripts/broker-setup.sh, the recipe docs/operator.md gives operators:
# each terminal logs in with its device_id as user name, and its ACL block lets it write
# only its own topics and its Home Assistant discovery, read only its own command topic;
# answers to an MQTT 5 response topic go under facegate/v1/replies/. A backend user reads
# every terminal's topics, commands every terminal and reads only its own replies
# (facegate/v1/replies/<user>/); a dashboard (reader) only reads.


def password(user: str) -> str:
    """The test password of `user` (a terminal's user is its device_id)."""
    return USERS.get(user, f"{user}-secret")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_on_a_free_port(attempt, move, what: str, restart: bool) -> None:
    """Start a server on a port free_port() named. free_port() only names a port that was
    free a moment ago: when another process took it meanwhile, the server cannot bind and
    exits. attempt(): None once the server is up, else what it said; a first start that
    said "Address already in use" calls move() (a new port) and tries again, up to 5
    times; a `restart` keeps its port (the clients or DSNs name it) and fails at once."""
    for _ in range(5):
        said = attempt()
        if said is None:
            return
        if restart or "Address already in use" not in said:
            raise RuntimeError(said)
        move()
    raise RuntimeError(f"{what} found no free port in 5 tries")


def recipe(*args: str | Path) -> str:
    """Run scripts/broker-setup.sh; its stdout."""
    r = subprocess.run(["bash", str(RECIPE), *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"broker-setup.sh {' '.join(map(str, args))}: {r.stderr}")
    return r.stdout


def init_broker(d: Path, port: int, *options: str) -> None:
    """A broker in d by the recipe, on 127.0.0.1:port, with the tests' passwords."""
    (d / "users").mkdir(parents=True, exist_ok=True)
    for user in USERS:
        write_password(d, user)
    run_as = ("--run-as", pwd.getpwuid(os.geteuid()).pw_name) if os.geteuid() == 0 else ()
    # as root, mosquitto would switch to its own user, who cannot read pytest's tmp dirs
    recipe("init", d, "--port", str(port), "--bind", "127.0.0.1", "--host", "localhost", "--host", "127.0.0.1",
           *run_as, *options)


def make_tls(d: Path) -> dict[str, Path]:
    """A CA and a server certificate of another broker made by the recipe in d."""
    init_broker(d, free_port(), "--no-persistence")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


def write_password(d: Path, user: str) -> None:
    (d / "users").mkdir(exist_ok=True)
    (d / "users" / f"{user}.password").write_text(password(user) + "\n")


class Mosquitto:
    """mosquitto on 127.0.0.1:port made by scripts/broker-setup.sh (TLS, passwords, the
    per-device ACL); start/stop/kill."""

    def __init__(self, d: Path, persist: bool = False, client_certs: bool = False, autosave_s: int = 1,
                 max_packet_bytes: int | None = None):
        """client_certs: the listener also requires a client certificate from the CA.
        persist: keep sessions on disk, saved every autosave_s and on SIGTERM (a SIGKILL
        loses what came since the last save). max_packet_bytes: the broker's packet limit
        (None: the recipe's; 0: none)."""
        self.dir = d
        self.proc: subprocess.Popen | None = None
        self.port = free_port()
        options = ["--autosave-s", str(autosave_s)] if persist else ["--no-persistence"]
        if client_certs:
            options.append("--client-certs")
        if max_packet_bytes is not None:
            options += ["--max-packet-bytes", str(max_packet_bytes)]
        init_broker(d, self.port, *options)
        self.tls = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
        if client_certs:
            recipe("client-cert", d, "kiosk-1")
            self.tls.update(client_cert=d / "clients" / "kiosk-1.pem", client_key=d / "clients" / "kiosk-1.key")
        self.passwd = d / "passwd"
        self.users: set[str] = {"backend"}  # init makes the backend's user
        self.add_users(USERS)

    def add_user(self, user: str) -> None:
        """Put `user` (with password(user)) in the password file and the ACL; a running
        broker re-reads them (SIGHUP)."""
        self.add_users([user])

    def add_users(self, users) -> None:
        """Many users at once (one recipe run per role, then one SIGHUP)."""
        new = [u for u in dict.fromkeys(users) if u not in self.users]
        if not new:
            return
        for role in sorted({ROLES.get(u, "terminal") for u in new}):
            mine = [u for u in new if ROLES.get(u, "terminal") == role]
            for u in mine:
                write_password(self.dir, u)
            recipe("add-user", self.dir, *mine, "--role", role)
        self.users.update(new)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)

    def start(self) -> Mosquitto:
        """Start and wait until ready, on another port when its port was taken (issue 25;
        start_on_a_free_port)."""
        log = self.dir / "mosquitto.log"

        def attempt() -> str | None:
            log_from = log.stat().st_size if log.exists() else 0
            return None if self._start_once() else log.read_bytes()[log_from:].decode(errors="replace")

        def move() -> None:
            conf, old, self.port = self.dir / "mosquitto.conf", self.port, free_port()
            conf.write_text(conf.read_text().replace(f"listener {old} ", f"listener {self.port} "))
        start_on_a_free_port(attempt, move, "mosquitto", getattr(self, "started", False))
        self.started = True
        return self

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
        db = self.dir / "data" / "mosquitto.db"
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
        pw = self.dir / "users" / f"{user}.password"
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
