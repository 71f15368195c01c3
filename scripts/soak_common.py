"""soak: what every phase uses: constants, the daemon process, the backend that collects
and verifies results, the inputs and the run context."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test Mosquitto (TLS, passwords, ACL)

import cbor2  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from broker import Mosquitto, password  # noqa: E402
from daemon_helpers import command as signed_command  # noqa: E402
from facegate import signing, status  # noqa: E402  (key files and command signing; the status document)
from facegate.status import StatusDoc  # noqa: E402
from facegate.vocab import COMMAND_FIELDS, Refusal  # noqa: E402  (the contract's words)

DEV = "kiosk-1"
ROOT = f"facegate/v1/{DEV}"
CMD = f"{ROOT}/cmd/verify"
RESULT = f"{ROOT}/result"
REPLIES = "facegate/v1/replies/backend/soak"  # the backend user reads only its own replies/backend/
FIELDS = COMMAND_FIELDS
DOCUMENTED = frozenset(Refusal)  # every reason a refused command is answered with or counted under in health's `ignored`
CLOCK_SKEW_S = 30.0  # DaemonConfig.clock_skew_s default
MAX_COMMAND_BYTES = 2_000_000  # DaemonConfig.max_command_bytes default
HANG_S = 10.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the process under test ------------------------------------------------------------------
def proc_status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        pass
    return out


def clear_hwm(pid: int) -> None:
    """Reset the process's peak-RSS mark (VmHWM), Linux >= 4.0."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


# the test broker saves its sessions every second (autosave_interval 1): as the README
# advises, the daemon re-sends what was acknowledged that long before a lost connection
REDELIVER_S = 2


class Daemon:
    """`facegate run` with its own config and state dir; the signing key is made up front
    so that results can be verified from the first one."""

    def __init__(self, d: Path, broker: Mosquitto, backend: signing.SigningKey, video: Path, *,
                 device: str = DEV, liveness: str = "none", fusion_frames: int = 2, realtime: bool = False,
                 max_pending: int = 30, camera: str | None = None, daemon_extra: str = "",
                 state_dir: Path | None = None, health_interval_s: float = 1.0, make_key: bool = True,
                 env: dict | None = None):
        d.mkdir(parents=True, exist_ok=True)
        self.dir, self.broker, self.env = d, broker, env
        self.state = state_dir or d / "state"
        self.cfg = d / "facegate.toml"
        camera = camera or f'source = "file"\npath = "{video}"\nrealtime = {str(realtime).lower()}\nidle_fps = 5\n'
        self.cfg.write_text(
            f'device_id = "{device}"\n[camera]\n{camera}'
            f'[daemon]\nstate_dir = "{self.state}"\nliveness = "{liveness}"\nhealth_interval_s = {health_interval_s}\n'
            f'session_timeout_s = 20\nmax_pending = {max_pending}\n{daemon_extra}'
            f'[verify]\nfusion_frames = {fusion_frames}\n'
            + broker.mqtt_toml(device) + f'redeliver_s = {REDELIVER_S}\n'
            + f'trusted_keys = ["{backend.public.hex()}"]\n')
        self.public = b""
        if make_key:
            self.state.mkdir(parents=True, exist_ok=True)
            kp = self.state / "signing.key"
            if not kp.exists():
                signing.save_key(signing.SigningKey.generate(), kp)
            self.public = signing.load_key(kp).public
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.crashes = 0  # exits we did not cause

    def start(self) -> Daemon:
        self._log = open(self.dir / "daemon.log", "ab")
        env = dict(os.environ, **(self.env or {}))
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "run", "--config", str(self.cfg)],
                                     stdout=self._log, stderr=self._log, env=env)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> StatusDoc:
        """The daemon's status document ({} while there is none)."""
        return status.read(self.state) or StatusDoc()

    def wait_status(self, pred, timeout_s: float = 30.0, fresh_after: float | None = None) -> dict:
        """The status file once pred(status) holds; fresh_after: written after this wall-clock
        time (a status file that cannot be rewritten, e.g. on a full disk, goes stale)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.status()
            if st and (fresh_after is None or st.get("ts", 0) > fresh_after) and pred(st):
                return st
            if not self.alive():
                raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n{self.logtail()}")
            time.sleep(0.05)
        raise TimeoutError(f"status never matched; last {self.status().get('health')}\n{self.logtail()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM; returns the exit code; an earlier exit of its own counts as a crash."""
        if self.proc is None:
            return 0
        if self.proc.poll() is not None:
            self.crashes += 1
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            rc = -9
        if rc != 0:
            self.crashes += 1
        return rc

    def logtail(self, n: int = 1500) -> str:
        try:
            return (self.dir / "daemon.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def tracebacks(self) -> int:
        try:
            return (self.dir / "daemon.log").read_text(errors="replace").count("Traceback")
        except OSError:
            return 0


# -- the backend -------------------------------------------------------------------------------
def cose_verify(message: bytes, public_raw: bytes, topic: str) -> dict:
    """RFC 9052 COSE_Sign1 / EdDSA checked by hand (no facegate code)."""
    tag = cbor2.loads(message)
    assert tag.tag == 18 and len(tag.value) == 4
    protected, _, payload, sig = tag.value
    hdr = cbor2.loads(protected)
    assert hdr[1] == -8 and hdr[4] == hashlib.sha256(public_raw).digest()[:8]
    Ed25519PublicKey.from_public_bytes(public_raw).verify(
        sig, cbor2.dumps(["Signature1", protected, topic.encode(), payload]))
    return cbor2.loads(payload)


@dataclass
class Res:
    seq: int
    boot: str
    request_id: str | None
    decision: str
    reason: str | None
    session: str | None
    digest: bytes
    t: float
    corr: bytes | None = None


class Collector:
    """The backend: an MQTT 5 client with a persistent session (it survives broker
    restarts), verifying every result on arrival and keeping only what the checks need."""

    def __init__(self, broker: Mosquitto, public: bytes, device: str = DEV):
        self.public = public
        self.root = f"facegate/v1/{device}"
        self.results: list[Res] = []        # R/result in arrival order
        self.replies: dict[bytes, Res] = {}  # response-topic answers by correlation data
        self.reply_count = 0
        self.status: list[tuple[float, bytes]] = []
        self.health: dict = {}
        self.bad = 0                         # messages that failed independent verification
        self._cv = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"soak-backend-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set("backend", password("backend"))
        self.client.tls_set(ca_certs=str(broker.tls["ca"]))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"{self.root}/result", 1), (f"{self.root}/status", 1), (f"{self.root}/health", 0), (REPLIES, 1)])
        self.client.on_message = self._on_message
        # a backend should not wait for Nagle: paho leaves it on, which adds ~40 ms per command
        self.client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", broker.port, keepalive=5, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, c, u, msg) -> None:
        now = time.monotonic()
        payload = bytes(msg.payload)
        with self._cv:
            if msg.topic == f"{self.root}/status":
                self.status.append((now, payload))
            elif msg.topic == f"{self.root}/health":
                try:
                    self.health = json.loads(payload)
                except ValueError:
                    self.bad += 1
            else:
                try:
                    p = cose_verify(payload, self.public, msg.topic)
                except Exception:
                    self.bad += 1
                    return
                corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
                r = Res(p["seq"], p["boot"], p["request_id"], p["decision"], p["reason"], p["session"],
                        hashlib.sha256(payload).digest()[:12], now, corr)
                if msg.topic == f"{self.root}/result":
                    self.results.append(r)
                else:
                    self.reply_count += 1
                    if corr is not None:
                        self.replies.setdefault(bytes(corr), r)
            self._cv.notify_all()

    def wait(self, pred, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                got = pred()
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, 0.5))

    def connected(self) -> bool:
        return self.client.is_connected()

    def send(self, payload: bytes, topic: str = CMD, response_topic: str | None = None,
             corr: bytes | None = None, timeout_s: float = 30.0) -> None:
        """Publish QoS 1 and wait for the broker's PUBACK (waiting for a connection first)."""
        deadline = time.monotonic() + timeout_s
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError("backend not connected")
            time.sleep(0.05)
        props = None
        if response_topic is not None or corr is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if corr is not None:
                props.CorrelationData = corr
        info = self.client.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))

    def by_request(self) -> dict[str, list[Res]]:
        out: dict[str, list[Res]] = {}
        with self._cv:
            for r in self.results:
                out.setdefault(r.request_id, []).append(r)
        return out

    def online_after(self, t: float) -> float | None:
        with self._cv:
            return next((ts for ts, p in self.status if ts >= t and p == b"online"), None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stream_checks(results: list[Res]) -> dict:
    """reordered / duplicates / duplicates whose bytes differ, over R/result arrivals."""
    seen: dict[int, bytes] = {}
    top = 0
    reordered = dups = dup_mismatch = 0
    for r in results:
        if r.seq in seen:
            dups += 1
            dup_mismatch += seen[r.seq] != r.digest
            continue
        if r.seq < top:
            reordered += 1
        seen[r.seq] = r.digest
        top = max(top, r.seq)
    return {"reordered": reordered, "duplicates": dups, "dup_mismatch": dup_mismatch, "seqs": set(seen)}


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    if not xs:
        return (float("nan"),) * 3
    q = np.percentile(np.asarray(xs), [50, 95, 99])
    return float(q[0]), float(q[1]), float(q[2])


# -- inputs ------------------------------------------------------------------------------------
@dataclass
class Inputs:
    video: Path
    ref: bytes
    stranger: bytes
    frames: list[bytes]  # JPEG frames of the video, for the folder camera


def load_inputs(data: Path) -> Inputs:
    from facegate.adapters.files import FileCamera

    video = data / "replay" / "zubair" / "live.webm"
    stranger = (data / "lfw" / "images" / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg").read_bytes()
    ref, frames = None, []
    with FileCamera(video) as cam:
        for f in cam.frames():
            if f.seq == 20:
                ref = cv2.imencode(".jpg", f.image)[1].tobytes()
            if 10 <= f.seq < 40 and f.seq % 2 == 0:
                frames.append(cv2.imencode(".jpg", f.image)[1].tobytes())
            if f.seq >= 40:
                break
    return Inputs(video, ref, stranger, frames)


def command(key: signing.SigningKey, reference: bytes, topic: str = CMD, **over) -> tuple[bytes, dict]:
    """The tests' signed verify command, valid for 300 s: soak commands may wait out an outage."""
    return signed_command(key, reference, topic, lifetime_s=300, **over)


# -- phases ------------------------------------------------------------------------------------
@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    inputs: Inputs
    key: signing.SigningKey
    rng: random.Random
    rows: list = field(default_factory=list)      # (phase, measure, value, verdict)
    totals: dict = field(default_factory=lambda: {"sessions": 0, "lost": 0, "reordered": 0, "crashes": 0,
                                                  "fuzz_cases": 0, "fuzz_failures": 0, "rss_growth_pct": None})

    def row(self, phase: str, measure: str, value, ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("ok" if ok else "FAIL")
        self.rows.append((phase, measure, str(value), verdict))
        log(f"  {phase:9s} {measure}: {value} {verdict}")

    def broker(self, name: str, nodelay: bool = False) -> Mosquitto:
        """A persistent Mosquitto (tests/broker.py); nodelay: `set_tcp_nodelay true`."""
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        b = Mosquitto(d, persist=True)
        if nodelay:
            with open(d / "mosquitto.conf", "a") as f:
                f.write("set_tcp_nodelay true\n")
        return b.start()


def new_daemon(ctx: Ctx, name: str, broker: Mosquitto, **kw) -> Daemon:
    return Daemon(ctx.work / name, broker, ctx.key, ctx.inputs.video, **kw)


def finish(ctx: Ctx, phase: str, d: Daemon) -> None:
    rc = d.stop()
    tb = d.tracebacks()
    ctx.totals["crashes"] += d.crashes
    ctx.row(phase, "daemon exit on SIGTERM / tracebacks logged", f"{rc} / {tb}", rc == 0 and tb == 0)
