#!/usr/bin/env python3
"""Evidence under faults, load and bad input: `facegate run` against a real Mosquitto.

    .venv/bin/python scripts/soak.py [--quick] [--data ../shared/data] [--out out/] [--seed 6]
                                     [--phases coldstart,broker,kill,camera,model,disk,fuzz,portraits,resources]

Every phase starts its own `facegate run` subprocess (video file camera: the replay of
../shared/data/replay/zubair/live.webm; portraits: frame 20 of it and an LFW stranger) and a
Mosquitto with TLS, passwords and an ACL (tests/broker.py), and checks what a backend sees:
every result verified on arrival with plain cbor2 + cryptography (no facegate code).

  coldstart  process start -> READY=1 on a notify socket owned here, and -> retained `online`
  broker     a stream of sessions; the broker SIGKILLed and restarted N times during it
  kill       the daemon SIGKILLed at random moments during sessions, restarted each time
  camera     the camera's frame folder removed and restored (outage lengths); a V4L2 device
             that does not exist
  model      one byte flipped in each model file the daemon loads
  disk       the state dir on a small tmpfs (root only): the min_free_mb rule, then truly full
  fuzz       malformed, unauthenticated and signed-but-bad commands over MQTT, image bombs
  portraits  corrupt / truncated / huge / wrong-format files through `facegate verify`
  resources  RSS and open fds over continuous sessions; latency p50/p95/p99; PNGs in out/

Definitions: lost = a session result (by request_id, and by seq: every seq the daemon
allocated) never delivered; reordered = a seq seen for the first time while a larger seq
was already seen; a duplicate is allowed only with the same seq and the same signed bytes.
Fast sessions: liveness "none", verify.fusion_frames = 2, camera realtime = false;
realtime where a fault needs sessions in progress. Ends with one line:
  soak: sessions=N lost=L reordered=R crashes=C fuzz_cases=M fuzz_failures=F rss_growth_pct=G
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
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
from facegate import signing  # noqa: E402  (key files and command signing only)
from facegate.vocab import COMMAND_FIELDS, Refusal  # noqa: E402  (the contract's words)

DEV = "kiosk-1"
ROOT = f"facegate/v1/{DEV}"
CMD = f"{ROOT}/cmd/verify"
RESULT = f"{ROOT}/result"
REPLIES = "facegate/v1/replies/soak"
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

    def start(self) -> "Daemon":
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

    def status(self) -> dict:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}

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


def phase_coldstart(ctx: Ctx) -> None:
    """Process start -> READY=1 (sd_notify datagram to a socket owned here) and -> `online`."""
    b = ctx.broker("cold-broker")
    sock_path = ctx.work / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    ready, online = [], []
    try:
        d = new_daemon(ctx, "cold", b, env={"NOTIFY_SOCKET": str(sock_path)})
        be = Collector(b, d.public)
        be.wait(be.connected, 10)
        for i in range(ctx.args.cold_starts):
            d.start()
            t_ready = None
            sock.settimeout(30)
            while t_ready is None:
                data = sock.recv(4096)
                if b"READY=1" in data.split(b"\n"):
                    t_ready = time.monotonic() - d.started
            t_on = be.wait(lambda: be.online_after(d.started), 30)
            ready.append(t_ready)
            online.append((t_on - d.started) if t_on else float("nan"))
            rc = d.stop()
            ctx.totals["crashes"] += d.crashes
            if rc != 0:
                ctx.row("coldstart", "exit code", rc, False)
        be.close()
    finally:
        sock.close()
        b.stop()
    ctx.cold = (statistics.median(ready), max(ready), statistics.median(online))
    ctx.row("coldstart", f"start -> READY=1, median / max of {len(ready)} (s)",
            f"{statistics.median(ready):.2f} / {max(ready):.2f}", None)
    ctx.row("coldstart", "start -> retained online, median (s)", f"{statistics.median(online):.2f}", None)


def phase_broker(ctx: Ctx) -> None:
    """A stream of sessions with the broker SIGKILLed and restarted during it."""
    a = ctx.args
    b = ctx.broker("broker-broker")
    d = new_daemon(ctx, "broker", b, realtime=True, max_pending=60).start()
    be = Collector(b, d.public)
    t0 = time.monotonic()
    sent: list[str] = []
    max_depth = 0
    downs = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        per = max(1, a.broker_sessions // max(1, a.broker_restarts))
        restarts = 0
        while len(sent) < a.broker_sessions:
            n = min(per, a.broker_sessions - len(sent))
            for i in range(n):
                msg, c = command(ctx.key, ctx.inputs.ref if (len(sent) % 2 == 0) else ctx.inputs.stranger)
                be.send(msg)
                sent.append(c["request_id"])
            if restarts < a.broker_restarts:
                time.sleep(ctx.rng.uniform(0.1, 0.1 * n))  # sessions last ~0.1 s: die mid-batch
                b.stop(kill=True)
                down = ctx.rng.uniform(0.5, 3.0)
                time.sleep(down)
                max_depth = max(max_depth, d.status().get("health", {}).get("outbox_depth", 0))
                b.start()
                restarts += 1
                downs.append(down)
                # commands go out again once both ends are back (a command PUBACKed by a broker
                # that is then SIGKILLed before it forwarded it is the broker's loss, not ours)
                d.wait_status(lambda s: s["broker"]["connected"], 60)
                be.wait(be.connected, 30)
        want = set(sent)
        be.wait(lambda: {r.request_id for r in be.results} >= want, a.drain_s)
        st = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0, 60)
        elapsed = time.monotonic() - t0
        got = be.by_request()
        chk = stream_checks(be.results)
        lost_req = len(want - set(got))
        last_seq = st["last_seq"]
        lost_seq = len(set(range(1, last_seq + 1)) - chk["seqs"])
        sessions = sum(1 for rid in want if any(r.session for r in got.get(rid, [])))
        rejected = sum(1 for rid in want if rid in got and all(r.session is None for r in got[rid]))
        ctx.totals["sessions"] += sessions
        ctx.totals["lost"] += lost_req + lost_seq
        ctx.totals["reordered"] += chk["reordered"]
        ctx.row("broker", "commands sent / sessions run / rejected", f"{len(want)} / {sessions} / {rejected}",
                sessions == len(want))
        ctx.row("broker", "broker SIGKILLs (down 0.5-3 s each)", f"{restarts}", restarts == a.broker_restarts)
        ctx.row("broker", "lost (by request_id / seq gaps)", f"{lost_req} / {lost_seq}", lost_req == lost_seq == 0)
        ctx.row("broker", "reordered", chk["reordered"], chk["reordered"] == 0)
        ctx.row("broker", "duplicates (same seq) / with different bytes", f"{chk['duplicates']} / {chk['dup_mismatch']}",
                chk["dup_mismatch"] == 0)
        ctx.row("broker", "bad signatures at the backend", be.bad, be.bad == 0)
        ctx.row("broker", "largest outbox depth seen during an outage", max_depth, None)
        ctx.row("broker", "wall time (s)", f"{elapsed:.0f}", None)
    finally:
        be.close()
        finish(ctx, "broker", d)
        b.stop()


def _outbox_after_kill(path: Path) -> tuple[str, list[int], int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        seqs = [s for (s,) in db.execute("SELECT DISTINCT seq FROM results WHERE acked IS NULL ORDER BY seq")]
        row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        return ok, seqs, int(row[0]) if row else 0
    finally:
        db.close()


def phase_kill(ctx: Ctx) -> None:
    """SIGKILL of the daemon at random moments during sessions, restarted each time."""
    a = ctx.args
    b = ctx.broker("kill-broker")
    d = new_daemon(ctx, "kill", b, realtime=True, max_pending=60)
    be = Collector(b, d.public)
    sent: list[str] = []
    kills = 0
    integrity_bad = seq_back = gaps_in_outbox = waiting = 0
    last_seqs = [0]
    try:
        be.wait(be.connected, 10)
        batch = a.kill_batch
        while True:
            done = sum(1 for rs in be.by_request().values() if any(r.session for r in rs))
            if done >= a.kill_sessions:
                break
            d.start()
            if not be.wait(lambda: be.online_after(d.started), 60):
                raise RuntimeError(f"daemon not online after restart:\n{d.logtail()}")
            for i in range(batch):
                msg, c = command(ctx.key, ctx.inputs.ref if i % 2 == 0 else ctx.inputs.stranger)
                be.send(msg)
                sent.append(c["request_id"])
            time.sleep(ctx.rng.uniform(0.05, 0.1 * batch))
            broker_down = kills % 2 == 1  # every other kill: results wait in the outbox when it dies
            if broker_down:
                b.stop()
                time.sleep(ctx.rng.uniform(0.2, 0.1 * batch))
            if not d.alive():
                d.crashes += 1
            d.kill()
            kills += 1
            ok, stored, last = _outbox_after_kill(d.state / "outbox.sqlite")
            waiting += len(stored)
            if broker_down:
                b.start()
            integrity_bad += ok != "ok"
            seq_back += last < last_seqs[-1]
            gaps_in_outbox += bool(stored) and stored != list(range(stored[0], stored[-1] + 1))
            gaps_in_outbox += bool(stored) and stored[-1] != last
            last_seqs.append(last)
        d.start()  # the last restart: everything completed must now arrive
        be.wait(lambda: be.online_after(d.started), 60)
        st = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0, 60)
        last = st["last_seq"]
        be.wait(lambda: stream_checks(be.results)["seqs"] >= set(range(1, last + 1)), a.drain_s)
        chk = stream_checks(be.results)
        got = be.by_request()
        lost_seq = len(set(range(1, last + 1)) - chk["seqs"])
        completed = sum(1 for rid in sent if any(r.session for r in got.get(rid, [])))
        interrupted = sum(1 for rid in sent if rid not in got)
        # seq strictly increasing across boots: each boot's seqs above the previous boot's
        boots: dict[str, list[int]] = {}
        for r in be.results:
            boots.setdefault(r.boot, []).append(r.seq)
        spans = sorted((min(v), max(v)) for v in boots.values())
        overlap = sum(1 for x, y in zip(spans, spans[1:]) if y[0] <= x[1])
        ctx.totals["sessions"] += completed
        ctx.totals["lost"] += lost_seq
        ctx.totals["reordered"] += chk["reordered"]
        ctx.row("kill", "SIGKILLs / process starts", f"{kills} / {kills + 1}", None)
        ctx.row("kill", "commands sent / sessions completed / interrupted (no result, never stored)",
                f"{len(sent)} / {completed} / {interrupted}", completed >= a.kill_sessions)
        ctx.row("kill", "results waiting in the outbox at the kills (every other one with the broker down)",
                waiting, None)
        ctx.row("kill", "outbox integrity_check failures after a kill", integrity_bad, integrity_bad == 0)
        ctx.row("kill", "last_seq went back / outbox rows not contiguous", f"{seq_back} / {gaps_in_outbox}",
                seq_back == gaps_in_outbox == 0)
        ctx.row("kill", "seq ranges of different boots overlapping", overlap, overlap == 0)
        ctx.row("kill", f"lost (seq 1..{last} not delivered)", lost_seq, lost_seq == 0)
        ctx.row("kill", "reordered / duplicates with different bytes", f"{chk['reordered']} / {chk['dup_mismatch']}",
                chk["reordered"] == chk["dup_mismatch"] == 0)
    finally:
        be.close()
        finish(ctx, "kill", d)
        b.stop()


def phase_camera(ctx: Ctx) -> None:
    """The camera's frames vanish and come back; a V4L2 device that does not exist."""
    a = ctx.args
    b = ctx.broker("camera-broker")
    folder = ctx.work / "camera-frames"
    folder.mkdir(parents=True, exist_ok=True)
    for i, jpg in enumerate(ctx.inputs.frames):
        (folder / f"{i:03d}.jpg").write_bytes(jpg)
    gone = folder.with_name("camera-frames.gone")
    cam = (f'source = "file"\npath = "{folder}"\nrealtime = true\nfps = 15\nidle_fps = 5\n'
           'restart_each_session = false\n')
    d = new_daemon(ctx, "camera", b, camera=cam, health_interval_s=0.25)
    d.start()
    be = Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        for outage in a.camera_outages:
            msg, c = command(ctx.key, ctx.inputs.ref)
            be.send(msg)
            r = be.wait(lambda: be.by_request().get(c["request_id"]), 60)
            ok_before = bool(r) and r[0].decision == "match"
            t_gone = time.monotonic()
            os.rename(folder, gone)
            st = d.wait_status(lambda s: not s["health"]["camera_ok"], 60)
            t_detect = time.monotonic() - t_gone
            msg, c = command(ctx.key, ctx.inputs.ref)
            be.send(msg)
            during = be.wait(lambda: be.by_request().get(c["request_id"]), 60)
            answer = f"{during[0].decision}/{during[0].reason}" if during else "none"
            time.sleep(max(0.0, t_gone + outage - time.monotonic()))
            os.rename(gone, folder)
            t_back = time.monotonic()
            d.wait_status(lambda s: s["health"]["camera_ok"], 120)
            t_cam = time.monotonic() - t_back
            t_session = None
            while t_session is None and time.monotonic() - t_back < 120:
                msg, c = command(ctx.key, ctx.inputs.ref)
                be.send(msg)
                r = be.wait(lambda: be.by_request().get(c["request_id"]), 60)
                if r and r[0].decision == "match":
                    t_session = r[0].t - t_back
            ctx.row("camera", f"folder gone {outage:g} s: gone noticed / camera_ok again / first match (s)",
                    f"{t_detect:.1f} / {t_cam:.1f} / {t_session:.1f}" if t_session is not None else "no recovery",
                    ok_before and t_session is not None)
            ctx.row("camera", f"folder gone {outage:g} s: command during the outage answered", answer,
                    during is not None and during[0].decision == "error")
            ctx.camera_recovery = getattr(ctx, "camera_recovery", []) + [(outage, t_cam, t_session)]
    finally:
        if gone.exists():
            os.rename(gone, folder)
        be.close()
        finish(ctx, "camera", d)
    # the frame rate a session on a live feed sees: the camera runs at 15 fps, idle_fps is 5
    d = new_daemon(ctx, "camera-rate", b, camera=cam, fusion_frames=30)
    d.start()
    be = Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        msg, c = command(ctx.key, ctx.inputs.ref)
        t = time.monotonic()
        be.send(msg)
        r = be.wait(lambda: be.by_request().get(c["request_id"]), 60)
        rate = 30 / (r[0].t - t) if r else 0.0
        ctx.row("camera", "frames a live-feed session gets (30 fused; camera 15 fps, idle_fps 5)",
                f"{rate:.1f} per s ({r[0].decision if r else 'no answer'})", rate >= 0.8 * 15)
    finally:
        be.close()
        finish(ctx, "camera", d)
    # a V4L2 device that is not there: answered, reported, READY never sent
    sock_path = ctx.work / "notify-v4l2.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    cam = 'source = "v4l2"\ndevice = "/dev/video57"\nframe_timeout_s = 2\nreopen_max_s = 2\n'
    d = new_daemon(ctx, "camera-v4l2", b, camera=cam, health_interval_s=0.25, env={"NOTIFY_SOCKET": str(sock_path)})
    d.start()
    be = Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        msg, c = command(ctx.key, ctx.inputs.ref)
        t = time.monotonic()
        be.send(msg)
        r = be.wait(lambda: be.by_request().get(c["request_id"]), 60)
        st = d.status()
        cam_err = st.get("camera", {}).get("last_error", "")
        notes = []
        try:
            while True:
                notes.append(sock.recv(4096))
        except OSError:
            pass
        ready = any(b"READY=1" in n for n in notes)
        ctx.row("camera", "v4l2 /dev/video57 missing: command answered (s)",
                f"{r[0].decision}/{r[0].reason} after {r[0].t - t:.1f}" if r else "none",
                bool(r) and r[0].decision == "error")
        ctx.row("camera", "v4l2 missing: status camera_ok / READY=1 sent",
                f"{st.get('health', {}).get('camera_ok')} / {ready}", st.get("health", {}).get("camera_ok") is False
                and not ready)
        ctx.row("camera", "v4l2 missing: camera.last_error", cam_err[:70], "does not exist" in cam_err)
        ctx.row("camera", "v4l2 device back", "not measured (no V4L2 device or v4l2loopback here)", None)
    finally:
        sock.close()
        be.close()
        finish(ctx, "camera", d)
        b.stop()


def phase_model(ctx: Ctx) -> None:
    """One byte flipped in each model file the daemon loads: refused at start, nothing runs."""
    from facegate import modelstore

    src = modelstore.default_model_dir()
    store = modelstore.ModelStore(src)
    files = sorted({store.resolve(t, "auto").file for t in ("detect_short", "detect_full", "mesh", "embed",
                                                             "pad_v2", "pad_v1se")} | {store.resolve("iris", "fp32").file})
    copy = ctx.work / "models-copy"
    shutil.copytree(src, copy)
    b = ctx.broker("model-broker")
    worst = 0.0
    all_ok = True
    try:
        for i, name in enumerate(files):
            f = copy / name
            orig = f.read_bytes()
            flipped = bytearray(orig)
            pos = len(orig) // 2
            flipped[pos] ^= 0x01
            f.write_bytes(bytes(flipped))
            dev = f"tamper-{i}"
            d = new_daemon(ctx, f"model-{i}", b, device=dev, liveness="both", make_key=False,
                           env={"FACEGATE_MODEL_DIR": str(copy)})
            be = Collector(b, b"", device=dev)
            be.wait(be.connected, 10)
            t = time.monotonic()
            d.start()
            try:
                rc = d.proc.wait(60)
            except subprocess.TimeoutExpired:
                d.kill()
                rc = None
            dt = time.monotonic() - t
            time.sleep(0.5)
            online = any(p == b"online" for _, p in be.status)
            be.close()
            f.write_bytes(orig)
            text = d.logtail(4000).strip().splitlines()
            last = text[-1] if text else ""
            made = sorted(p.name for p in d.state.iterdir()) if d.state.exists() else []
            ok = (rc not in (0, None) and name in last and "changed on disk" in last and not online and not made
                  and "Traceback" not in "\n".join(text))
            all_ok &= ok
            worst = max(worst, dt)
            ctx.row("model", f"{name}: one byte flipped",
                    f"exit {rc} in {dt:.2f} s; online {'published' if online else 'never'}; "
                    f"{len(made)} state files", ok)
            message = last.replace(str(copy) + "/", "")
    finally:
        b.stop()
    ctx.row("model", "the message (last one)", message[:100], None)
    ctx.row("model", "all tampered files refused at start; slowest refusal (s)", f"{all_ok}; {worst:.2f}", all_ok)


def phase_disk(ctx: Ctx) -> None:
    """State dir on a tmpfs: the min_free_mb rule, then a disk that fills up completely
    while sessions run, and space coming back."""
    if os.geteuid() != 0:
        ctx.row("disk", "tmpfs state dir", "SKIPPED: needs root to mount a tmpfs", None)
        return
    mnt = ctx.work / "disk-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    b = ctx.broker("disk-broker")
    filler = mnt / "filler"
    n = ctx.args.disk_commands
    d = None
    try:
        d = new_daemon(ctx, "disk", b, state_dir=mnt / "state", realtime=True, fusion_frames=6,
                       daemon_extra="min_free_mb = 8\n", health_interval_s=0.25).start()
        be = Collector(b, d.public)
        be.wait(lambda: be.online_after(0), 60)

        def burst(k: int) -> list[str]:
            ids = []
            for _ in range(k):
                msg, c = command(ctx.key, ctx.inputs.ref)
                be.send(msg)
                ids.append(c["request_id"])
            return ids

        def answers(ids: list[str], timeout_s: float) -> dict[str, Res]:
            be.wait(lambda: set(be.by_request()) >= set(ids), timeout_s)
            got = be.by_request()
            return {i: got[i][0] for i in ids if i in got}

        def fill_to(free_bytes: int) -> None:
            st = os.statvfs(mnt)
            have = st.f_bavail * st.f_frsize
            size = filler.stat().st_size if filler.exists() else 0
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                try:
                    os.posix_fallocate(fd, 0, size + max(0, have - free_bytes))
                except OSError:
                    pass
                if free_bytes == 0:  # whatever fallocate left, in ever smaller writes until ENOSPC
                    os.lseek(fd, 0, os.SEEK_END)
                    for chunk in (65536, 4096, 512, 1):
                        try:
                            while True:
                                os.write(fd, b"\0" * chunk)
                        except OSError:
                            pass
            finally:
                os.close(fd)

        warm = answers(burst(2), 30)
        ok_warm = len(warm) == 2 and all(r.decision == "match" for r in warm.values())
        ctx.row("disk", "warm-up sessions", ", ".join(r.decision for r in warm.values()), ok_warm)
        # 1. below min_free_mb (4 of 32 MiB free, the rule asks for 8)
        t = time.time()
        fill_to(4 * 2**20)
        st = d.wait_status(lambda s: s["health"]["storage_ok"] is False, 10, fresh_after=t)
        mqtt_ok = be.wait(lambda: be.health.get("storage_ok") is False, 10)
        ids = burst(n)
        got = answers(ids, 30)
        refused = sum(1 for r in got.values() if (r.decision, r.reason) == ("rejected", "storage_full"))
        st2 = d.wait_status(lambda s: True, 10, fresh_after=time.time())
        ctx.row("disk", "4 MiB free < min_free_mb 8: status.json / R/health storage_ok",
                f"{st['health']['storage_ok']} / {be.health.get('storage_ok')}",
                st["health"]["storage_ok"] is False and bool(mqtt_ok))
        ctx.row("disk", "  commands answered rejected/storage_full; sessions started",
                f"{refused}/{n}; {st2['health']['sessions'] - st['health']['sessions']}",
                refused == n and st2["health"]["sessions"] == st["health"]["sessions"])
        # 2. space again, then the disk fills up completely while sessions run
        filler.unlink()
        d.wait_status(lambda s: s["health"]["storage_ok"], 10, fresh_after=time.time())
        mid = burst(3)
        d.wait_status(lambda s: s["state"]["state"] != "idle", 10)
        t_fill = time.time()
        n_before = len(be.results)
        fill_to(0)
        time.sleep(3.0)
        health_full = dict(be.health)
        st_full = d.status()
        full_ids = burst(n)
        during = answers(full_ids, 5)
        ctx.row("disk", "0 bytes free: R/health storage_ok / results held in memory (unstored)",
                f"{health_full.get('storage_ok')} / {health_full.get('unstored')}",
                health_full.get("storage_ok") is False)
        ctx.row("disk", "0 bytes free: status.json written since the disk filled / its storage_ok",
                f"{'yes' if st_full.get('ts', 0) > t_fill else 'no, stale'} / {st_full.get('health', {}).get('storage_ok')}",
                st_full.get("ts", 0) > t_fill and st_full.get("health", {}).get("storage_ok") is False)
        ctx.row("disk", "0 bytes free: commands answered while full", f"{len(during)}/{n}", None)
        # 3. space back: everything held arrives, new sessions run
        t_free = time.monotonic()
        full_msgs = be.results[n_before:]
        full_dups = len(full_msgs) - len({r.seq for r in full_msgs})
        filler.unlink()
        d.wait_status(lambda s: s["health"]["storage_ok"] and s["health"]["unstored"] == 0, 20,
                      fresh_after=time.time())
        got_mid = answers(mid, 30)
        got_full = answers(full_ids, 30)
        late = max([r.t for r in list(got_mid.values()) + list(got_full.values())], default=t_free) - t_free
        after = answers(burst(3), 30)
        st_end = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0, 30)
        chk = stream_checks(be.results)
        lost_seq = len(set(range(1, st_end["last_seq"] + 1)) - chk["seqs"])
        mid_lost = sum(1 for i in mid if i not in got_mid)
        mid_run = sum(1 for r in got_mid.values() if r.session)
        full_refused = sum(1 for r in got_full.values() if r.reason == "storage_full")
        ctx.row("disk", "0 bytes free: R/result messages / duplicates of an already delivered seq",
                f"{len(full_msgs)} / {full_dups} in {time.monotonic() - t_free + 3.0 + 5.0:.0f} s",
                full_dups <= 3 * len({r.seq for r in full_msgs}) + 3)
        ctx.row("disk", "space back: 3 commands sent as it filled: session results / refused / lost",
                f"{mid_run} / {len(got_mid) - mid_run} / {mid_lost}", mid_lost == 0)
        ctx.row("disk", "space back: commands sent while full answered storage_full / last one after (s)",
                f"{full_refused}/{n} / {late:.1f}", full_refused == n)
        ctx.row("disk", "space back: new commands -> sessions; seq gaps",
                f"{sum(1 for r in after.values() if r.session)}/3; {lost_seq}",
                all(r.session for r in after.values()) and len(after) == 3 and lost_seq == 0)
        # 4. a result waits in the outbox (broker down), the disk fills, the broker returns:
        #    the broker's PUBACK cannot be recorded (DELETE on a full disk)
        msg, c = command(ctx.key, ctx.inputs.ref)
        be.send(msg)
        d.wait_status(lambda s: s["state"]["state"] != "idle", 10)
        b.stop()
        d.wait_status(lambda s: s["health"]["outbox_depth"] >= 1, 20, fresh_after=time.time())
        fill_to(0)
        n0 = len(be.results)
        b.start()
        be.wait(lambda: c["request_id"] in be.by_request(), 20)
        time.sleep(3.0)
        storm = [r for r in be.results[n0:] if r.request_id == c["request_id"]]
        filler.unlink()
        d.wait_status(lambda s: s["health"]["outbox_depth"] == 0 and s["health"]["storage_ok"], 30,
                      fresh_after=time.time())
        ctx.row("disk", "result acknowledged while the disk is full: copies delivered in 3 s",
                f"{len(storm)} (same seq {storm[0].seq if storm else '-'})", 1 <= len(storm) <= 3)
        chk = stream_checks(be.results)
        ctx.row("disk", "whole phase: reordered / duplicates with different bytes",
                f"{chk['reordered']} / {chk['dup_mismatch']}", chk["reordered"] == chk["dup_mismatch"] == 0)
        ctx.totals["lost"] += mid_lost + lost_seq
        ctx.totals["reordered"] += chk["reordered"]
        ctx.totals["sessions"] += sum(1 for r in [*warm.values(), *got_mid.values(), *after.values()] if r.session)
        ctx.totals["sessions"] += 1 if storm else 0
        be.close()
    finally:
        if d is not None:
            if filler.exists():
                filler.unlink()
            finish(ctx, "disk", d)
        b.stop()
        subprocess.run(["umount", str(mnt)], check=False)


# -- fuzzing ---------------------------------------------------------------------------------
def sign_raw(body: bytes, key: signing.SigningKey, topic: str = CMD, protected: bytes | None = None,
             unprotected=None) -> bytes:
    """COSE_Sign1 over arbitrary payload bytes (what a buggy or hostile signer could send)."""
    protected = cbor2.dumps({1: -8, 4: key.kid}) if protected is None else protected
    sig = key.private.sign(cbor2.dumps(["Signature1", protected, topic.encode(), body]))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {} if unprotected is None else unprotected, body, sig]))


def rand_value(rng: random.Random, depth: int = 0):
    k = rng.randrange(12 if depth < 3 else 8)
    if k == 0:
        return rng.randint(-2**64, 2**64)
    if k == 1:
        return rng.choice((-1, 1)) * 2 ** rng.randint(60, 4000) + rng.randint(0, 9)
    if k == 2:
        return rng.choice([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e308, 5e-324,
                           rng.uniform(-1e10, 1e10), time.time() + rng.uniform(-1e6, 1e6)])
    if k == 3:
        return "".join(chr(rng.choice([rng.randint(0, 127), rng.randint(128, 0xD7FF), 0]))
                       for _ in range(rng.randint(0, 200)))
    if k == 4:
        return rng.randbytes(rng.choice([0, 1, 8, 16, 64, 65, 300]))
    if k == 5:
        return rng.choice([True, False, None, cbor2.undefined])
    if k == 6:
        return rng.choice(["blink", "turn_left", "turn_right", "smile", ""])
    if k == 7:
        return cbor2.CBORSimpleValue(rng.choice([0, 5, 19, 32, 255]))
    if k == 8:
        return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 8))]
    if k == 9:
        return {rng.choice(["a", "request_id", "iat", 1, -5, b"k"]): rand_value(rng, depth + 1)
                for _ in range(rng.randint(0, 6))}
    if k == 10:
        return cbor2.CBORTag(rng.choice([0, 1, 2, 3, 4, 5, 24, 28, 29, 30, 32, 35, 36, 37, 258, 55799, 99999]),
                             rand_value(rng, depth + 1))
    return rng.randint(0, 30)


def cbor_oddities(rng: random.Random) -> bytes:
    """Hand-made CBOR that decoders get wrong: deep nesting, lengths far beyond the data,
    indefinite lengths never closed, reserved bytes, a tag-18 of the wrong shape."""
    n = rng.randint(100, 100_000)
    return rng.choice([
        b"\x81" * n + b"\x00",                                   # [[[[...]]]]
        b"\xa1\x00" * n + b"\x00",                               # {0: {0: ...}}
        b"\xd2" * n + b"\x00",                                   # tag 18 on tag 18 ...
        b"\x5b" + (2**62).to_bytes(8, "big") + b"ab",            # bytes of 2^62 announced
        b"\x9b" + (2**62).to_bytes(8, "big"),                    # array of 2^62 items
        b"\xbb" + (2**40).to_bytes(8, "big") + b"\x00\x00",       # map of 2^40 pairs
        b"\x5f" + b"\x41a" * rng.randint(1, 1000),               # indefinite bytes, never closed
        b"\x9f" * 200 + b"\xff" * 100,                           # unbalanced indefinite arrays
        b"\xd2\x84" + b"\x1c\x1c\x1c\x1c",                       # reserved additional info
        b"\xd2\x84\x40\xa0\x40\x40",                             # tag 18, four empty parts
        b"\xd2\x83\x40\xa0\x40",                                 # tag 18, three parts
        b"\xd2\x85\x40\xa0\x40\x40\x40",                         # tag 18, five parts
        b"\xd8\x1c\x81\xd8\x1d\x00",                             # shareable referring to itself
        b"\xc2\x5a" + (1_500_000).to_bytes(4, "big") + rng.randbytes(1_500_000),  # 12 Mbit bignum
        b"\xc5\x82\x1b" + (2**63 - 1).to_bytes(8, "big") + b"\x01",               # bigfloat 2^(2^63)
        b"\xc4\x82\x3b" + (2**63 - 1).to_bytes(8, "big") + b"\x01",               # decimal 10^-(2^63)
        b"\xc1\xfb" + np.float64(1e300).tobytes()[::-1],                           # epoch 1e300
        b"\xd8\x23\x78\x20" + b"(a+)+" * 6 + b"$.",                               # regex tag
    ])


@dataclass
class Case:
    family: str
    payload: bytes
    expect: str | None        # exact reason, "session", or None (any documented answer)
    authentic: bool = False
    answerable: bool = False  # an answer is due (expect_answer); else the case must stay unanswered
    response_topic: str = REPLIES
    sent: float = 0.0
    answer: Res | None = None
    peak_mb: float | None = None


class Fuzzer:
    """Seeded generators for verify commands; `authentic` is decided independently."""

    def __init__(self, rng: random.Random, key: signing.SigningKey, inputs: Inputs, work: Path):
        self.rng, self.key, self.inputs = rng, key, inputs
        self.other = signing.SigningKey.generate()
        self.valid_sent: list[tuple[float, dict]] = []
        self.refs = self._references(work)
        self.families = [  # (weight, generator)
            (14, self.random_bytes), (8, self.cbor_structure), (4, self.cbor_odd), (10, self.truncated),
            (10, self.bitflip), (1, self.oversized), (6, self.header), (5, self.unknown_key),
            (3, self.wrong_topic), (22, self.signed_bad_payload), (9, self.bad_reference),
            (2, self.replay), (3, self.unsigned), (3, self.valid)]

    # inputs for references
    def _references(self, work: Path) -> dict[str, bytes]:
        ref = self.inputs.ref
        img = cv2.imdecode(np.frombuffer(ref, np.uint8), cv2.IMREAD_COLOR)
        big = cv2.resize(img, (2000, 2000))  # 4,000,000 px: exactly max_reference_pixels
        over = np.zeros((2001, 2000, 3), np.uint8)
        png_hdr = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
        jpg_sof = b"\xff\xd8\xff\xc0\x00\x11\x08" + (65000).to_bytes(2, "big") * 2 + b"\x03" + b"\x01\x22\x00" * 3
        return {
            "grey_png": cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))[1].tobytes(),
            "big_valid_jpeg": cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
            "over_limit_png": cv2.imencode(".png", over)[1].tobytes(),
            "tiny_png": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
            "blank_png": cv2.imencode(".png", np.full((300, 300, 3), 128, np.uint8))[1].tobytes(),
            "png_header_60000": png_hdr + self.rng.randbytes(200),
            "jpeg_sof_65000": jpg_sof + self.rng.randbytes(300),
            "truncated_jpeg": ref[: len(ref) // 3],
            "gif": b"GIF89a" + self.rng.randbytes(500),
            "tiff": b"II*\x00" + self.rng.randbytes(500),
            "pdf": b"%PDF-1.4\n" + self.rng.randbytes(500),
            "bmp_negative": b"BM" + b"\0" * 16 + (-70000).to_bytes(4, "little", signed=True) * 2 + b"\0" * 40,
            "random_1_9mb": b"\xff\xd8" + self.rng.randbytes(1_900_000),
        }

    def good(self, **over) -> dict:
        now = time.time()
        p = {"request_id": uuid.uuid4().hex, "nonce": os.urandom(16), "iat": int(now), "exp": int(now) + 120,
             "reference": self.inputs.ref if self.rng.random() < 0.5 else self.inputs.stranger}
        p.update(over)
        return p

    def next(self) -> Case:
        total = sum(w for w, _ in self.families)
        x = self.rng.uniform(0, total)
        for w, gen in self.families:
            x -= w
            if x <= 0:
                return gen()
        return self.families[-1][1]()

    # generators
    def random_bytes(self) -> Case:
        n = self.rng.choice([0, 1, 2, 3, self.rng.randint(4, 64), self.rng.randint(65, 4096)])
        prefix = self.rng.choice([b"", b"\xd2", b"\xd2\x84", b"\xd2\x84\x4a"])
        return Case("random_bytes", prefix + self.rng.randbytes(n), None)

    def cbor_structure(self) -> Case:
        r = self.rng.random()
        if r < 0.4:
            body = cbor2.dumps(rand_value(self.rng))
        elif r < 0.8:
            body = cbor2.dumps(cbor2.CBORTag(18, [rand_value(self.rng) for _ in range(self.rng.choice([0, 3, 4, 4, 5]))]))
        else:
            body = cbor2.dumps(cbor2.CBORTag(self.rng.choice([17, 98, 96, 19]), [b"", {}, b"", b""]))
        return Case("cbor_structure", body, None)

    def cbor_odd(self) -> Case:
        return Case("cbor_oddities", cbor_oddities(self.rng), None)

    def truncated(self) -> Case:
        m = signing.sign(self.good(), self.key, CMD)
        return Case("truncated", m[: self.rng.randrange(len(m))], None)

    def bitflip(self) -> Case:
        m = bytearray(signing.sign(self.good(), self.key, CMD))
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(min(len(m), 120)) if self.rng.random() < 0.6 else self.rng.randrange(len(m))
            op = self.rng.random()
            if op < 0.6:
                m[i] = self.rng.randrange(256)
            elif op < 0.8:
                del m[i]
            else:
                m.insert(i, self.rng.randrange(256))
        return Case("bitflip", bytes(m), None)

    def oversized(self) -> Case:
        p = self.good(reference=b"\xff\xd8" + self.rng.randbytes(MAX_COMMAND_BYTES))
        return Case("oversized", signing.sign(p, self.key, CMD), "too_large")

    def header(self) -> Case:
        kid = self.key.kid
        variants = [
            ({1: -7, 4: kid}, "bad_header"), ({4: kid}, "bad_header"), ({1: -8}, "bad_header"),
            ({1: -8, 4: "kid"}, "bad_header"), ([1, -8], "bad_header"), ({1: -8, 4: b"12345678"}, "unknown_key"),
            ({1: -8, 4: kid[:4]}, "unknown_key"), ({1: "EdDSA", 4: kid}, "bad_header")]
        hdr, expect = self.rng.choice(variants)
        r = self.rng.random()
        if r < 0.15:
            return Case("header", sign_raw(cbor2.dumps(self.good()), self.key, protected=b"\xff\xfe"), "bad_header")
        if r < 0.3:  # a valid signature over a valid command, but the unprotected header is not a map
            return Case("header", sign_raw(cbor2.dumps(self.good()), self.key, unprotected=[1, 2]), "not_cose")
        if r < 0.45:  # the signature cut short / empty / 64 bytes of noise
            parts = list(cbor2.loads(signing.sign(self.good(), self.key, CMD)).value)
            parts[3] = self.rng.choice([b"", parts[3][:32], self.rng.randbytes(64)])
            return Case("header", cbor2.dumps(cbor2.CBORTag(18, parts)), "bad_signature")
        return Case("header", sign_raw(cbor2.dumps(self.good()), self.key, protected=cbor2.dumps(hdr)), expect)

    def unknown_key(self) -> Case:
        return Case("unknown_key", signing.sign(self.good(), self.other, CMD), "unknown_key")

    def wrong_topic(self) -> Case:
        return Case("wrong_topic", signing.sign(self.good(), self.key, f"{ROOT}/cmd/other"), "bad_signature")

    def signed_bad_payload(self) -> Case:
        rng = self.rng
        r = rng.random()
        if r < 0.08:
            return Case("signed_bad_payload", sign_raw(rng.randbytes(rng.randint(0, 100)), self.key), None)
        if r < 0.16:
            return Case("signed_bad_payload", sign_raw(cbor2.dumps(rand_value(rng)), self.key), None)
        p = self.good()
        now = time.time()
        for _ in range(rng.randint(1, 3)):
            m = rng.random()
            name = rng.choice(FIELDS + ("challenge",))
            if m < 0.2:
                p.pop(name, None)
            elif m < 0.55:
                p[name] = rand_value(rng)
            elif m < 0.65:
                p[rng.choice(["extra", "similarity", 7, b"x"])] = rand_value(rng)
            elif m < 0.8:
                p["iat"], p["exp"] = rng.choice([(now - 900, now - 600), (now + 600, now + 700), (now, now + 10**6),
                                                 (now, now - 1), (2**70, 2**71), (-2**80, now), (10**400, 10**401)])
            elif m < 0.9:
                p["challenge"] = rng.choice([["blink"] * 7, ["blink", "wink"], [["blink"]], "blink", {"s": 1},
                                             ["turn_left", "turn_right"], [], None])
                if p["challenge"] is None:
                    del p["challenge"]
            else:
                p[rng.choice(["request_id", "nonce"])] = rng.choice(["", "x" * 129, b"", b"n" * 65, 5, None])
        try:
            body = cbor2.dumps(p)
        except (TypeError, ValueError, OverflowError, cbor2.CBOREncodeError):
            body = cbor2.dumps({"request_id": "x"})
        return Case("signed_bad_payload", sign_raw(body, self.key), None)

    def bad_reference(self) -> Case:
        name = self.rng.choice(sorted(self.refs) + ["random", "bitflipped_jpeg"])
        if name == "random":
            ref = self.rng.randbytes(self.rng.randint(0, 5000))
        elif name == "bitflipped_jpeg":
            b = bytearray(self.inputs.ref)
            for _ in range(self.rng.randint(1, 50)):
                b[self.rng.randrange(len(b))] = self.rng.randrange(256)
            ref = bytes(b)
        else:
            ref = self.refs[name]
        return Case(f"reference:{name}", signing.sign(self.good(reference=ref), self.key, CMD), None)

    def replay(self) -> Case:
        recent = [p for t, p in self.valid_sent if time.time() - t < 60]  # still within its lifetime
        if not recent:
            return self.valid()
        old = self.rng.choice(recent)
        if self.rng.random() < 0.5:
            return Case("replay", signing.sign(old, self.key, CMD), "replayed_request_id")
        return Case("replay", signing.sign(self.good(nonce=old["nonce"]), self.key, CMD), "replayed_nonce")

    def unsigned(self) -> Case:
        return Case("unsigned", cbor2.dumps(self.good()), "not_cose")

    def valid(self) -> Case:
        p = self.good()
        self.valid_sent = self.valid_sent[-50:] + [(time.time(), p)]
        return Case("valid", signing.sign(p, self.key, CMD), "session")

    def bombs(self, files: dict[str, Path]) -> list[Case]:
        """Small files that decode to huge canvases (sent one at a time, peak RSS measured)."""
        return [Case(f"bomb:{name}", signing.sign(self.good(reference=path.read_bytes()), self.key, CMD), None)
                for name, path in files.items()]


def _write_bombs(d: str) -> None:
    d = Path(d)
    white = np.zeros((16000, 16000, 3), np.uint8)
    (d / "webp_16000x16000.webp").write_bytes(cv2.imencode(".webp", white, [cv2.IMWRITE_WEBP_QUALITY, 101])[1])
    del white
    grey = np.full((12000, 12000), 128, np.uint8)
    jpg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 10, cv2.IMWRITE_JPEG_OPTIMIZE, 1])[1].tobytes()
    del grey
    # FF 00 right after SOI: libjpeg skips it as stray bytes, facegate's header scan reads it
    # as a segment and jumps past the real frame header
    (d / "jpeg_12000x12000_ff00.jpg").write_bytes(jpg[:2] + b"\xff\x00\x7f\x7f" + jpg[2:])
    (d / "jpeg_12000x12000.jpg").write_bytes(jpg)
    (d / "png_2000x2000_legal.png").write_bytes(cv2.imencode(".png", np.zeros((2000, 2000, 3), np.uint8))[1])


def bomb_files(work: Path) -> dict[str, Path]:
    """Image bombs, made once in a child process (encoding them takes 1.5 GB, which would
    otherwise stay in this process and in every child it forks)."""
    import multiprocessing

    d = work / "bombs"
    if not d.is_dir():
        d.mkdir(parents=True)
        p = multiprocessing.get_context("fork").Process(target=_write_bombs, args=(str(d),))
        p.start()
        p.join()
    return {f.stem: f for f in sorted(d.iterdir())}


def classify(c: Case, public: bytes) -> str | None:
    """None when the answer (or its absence) follows a documented rule, else why not."""
    a = c.answer
    if c.answerable is False or (c.answerable is None and a is None):
        return None if a is None else f"answered ({a.decision}/{a.reason}) though it must not be"
    if a is None:
        return "unanswered"
    if a.t - c.sent > HANG_S:
        return f"answered after {a.t - c.sent:.1f} s"
    if a.session is not None or a.decision != "rejected":
        if not c.authentic:
            return f"unauthenticated command started a session ({a.decision})"
        if c.expect not in (None, "session"):
            return f"session started, expected {c.expect}"
        return None
    if a.reason not in DOCUMENTED:
        return f"undocumented reason {a.reason}"
    if c.expect == "session" and a.reason != "busy":
        return f"valid command rejected: {a.reason}"
    if c.expect not in (None, "session") and a.reason != c.expect:
        return f"expected {c.expect}, got {a.reason}"
    return None


def authentic(payload: bytes, public: bytes) -> bool:
    try:
        return isinstance(cose_verify(payload, public, CMD), dict)
    except Exception:
        return False


def expect_answer(payload: bytes, public: bytes, family: str, now: float) -> bool | None:
    """README's rule, judged independently: only an authentic command (signed by the
    backend key for the command topic, at most max_command_bytes) whose payload is a map
    with a well-typed request_id and nonce, and not a replay, gets one signed answer;
    everything else is counted, never answered. None: either, one answer or none - an
    `exp` in the past may lie at or below the daemon's replay floor (the highest exp +
    skew of a record it purged, which depends on the commands before)."""
    if len(payload) > MAX_COMMAND_BYTES or family == "replay":
        return False
    try:
        p = cose_verify(payload, public, CMD)
        unprotected = cbor2.loads(payload).value[1]
    except Exception:
        return False
    if not isinstance(p, dict) or not isinstance(unprotected, Mapping):  # RFC 9052: the unprotected header is a map
        return False
    rid, nonce, exp = p.get("request_id"), p.get("nonce"), p.get("exp")
    if not (isinstance(rid, str) and 0 < len(rid) <= 128 and isinstance(nonce, bytes) and 0 < len(nonce) <= 64):
        return False
    try:
        expired = not isinstance(exp, bool) and isinstance(exp, (int, float)) and float(exp) < now - CLOCK_SKEW_S
    except OverflowError:
        expired = False
    return None if expired else True


def phase_fuzz(ctx: Ctx) -> None:
    a = ctx.args
    b = ctx.broker("fuzz-broker")
    d = new_daemon(ctx, "fuzz", b, max_pending=100).start()
    be = Collector(b, d.public)
    fz = Fuzzer(ctx.rng, ctx.key, ctx.inputs, ctx.work)
    cases: list[Case] = []
    failures: dict[str, int] = {}
    t0 = time.monotonic()
    rss = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        base = proc_status(d.pid)

        def fire(c: Case) -> None:
            c.authentic = authentic(c.payload, ctx.key.public)
            c.answerable = expect_answer(c.payload, ctx.key.public, c.family, time.time())
            corr = len(cases).to_bytes(4, "big")
            cases.append(c)
            c.sent = time.monotonic()
            be.send(c.payload, response_topic=c.response_topic, corr=corr)

        window = 32
        bomb_paths = bomb_files(ctx.work)
        odd_topics = ("facegate/v1/replies/" + "x" * 2000, "other/not-allowed", "facegate/v1/replies/ünïcode")
        n_main = a.fuzz - len(bomb_paths) - len(odd_topics) - 1  # - 1: the wildcard case, on its own daemon
        pending: list[int] = []
        for i in range(n_main):
            fire(fz.next())
            if cases[-1].answerable is True:  # only answers are awaited; the rest is counted in health
                pending.append(len(cases) - 1)
            while len(pending) >= window:
                be.wait(lambda: pending[0].to_bytes(4, "big") in be.replies, HANG_S * 3)
                while pending and pending[0].to_bytes(4, "big") in be.replies:
                    pending.pop(0)
                if pending and time.monotonic() - cases[pending[0]].sent > HANG_S * 3:
                    pending.pop(0)  # unanswered: judged below
                if not d.alive():
                    raise RuntimeError(f"daemon died during fuzzing:\n{d.logtail()}")
            if i % 500 == 0:
                rss.append((i, proc_status(d.pid).get("VmRSS", 0) / 1024))
                if i % 2000 == 0:
                    log(f"  fuzz {i}/{n_main}")
        be.wait(lambda: all(p.to_bytes(4, "big") in be.replies for p in pending), HANG_S * 3)
        # image bombs: one at a time, the daemon's peak RSS around each
        for c in fz.bombs(bomb_paths):  # signed now: a command lives 120 s
            clear_hwm(d.pid)
            before = proc_status(d.pid).get("VmRSS", 0) / 1024
            fire(c)
            idx = len(cases) - 1
            be.wait(lambda: idx.to_bytes(4, "big") in be.replies or c.answerable is not True, 60)
            c.peak_mb = proc_status(d.pid).get("VmHWM", 0) / 1024 - before
        # the MQTT 5 response topic is attacker-chosen: valid, not allowed by the ACL, odd
        rt_cases = []
        for rt in odd_topics:
            c = Case(f"response_topic:{rt[:24]}", b"\xffgarbage", "not_cose", response_topic=rt)
            fire(c)
            rt_cases.append(c)
        silent = sum(1 for c in cases if c.answerable is False)
        # every case the daemon must not answer is counted once in health's `ignored`
        try:
            st = d.wait_status(lambda s: sum(s["health"].get("ignored", {}).values()) >= silent, HANG_S * 3,
                               fresh_after=time.time())
        except TimeoutError:
            pass
        time.sleep(1.5)
        st = d.wait_status(lambda s: True, 10, fresh_after=time.time())
        for i, c in enumerate(cases):
            c.answer = be.replies.get(i.to_bytes(4, "big"))
        silent += sum(1 for c in cases if c.answerable is None and c.answer is None)
        # an answer to unauthenticated input would come on R/result (an odd response topic
        # is never honoured for it): judge those cases by the result stream
        for c in rt_cases:
            c.answer = c.answer or next((r for r in be.results if r.reason == "not_cose" and r.t >= c.sent), None)
        for c in cases:
            why = classify(c, d.public)
            if why is None and c.peak_mb is not None and c.peak_mb > a.mem_bound_mb:
                why = f"peak RSS +{c.peak_mb:.0f} MB > {a.mem_bound_mb} MB"
            if why:
                key = f"{c.family}: {why}"
                failures[key] = failures.get(key, 0) + 1
        ignored = st["health"].get("ignored", {})
        if sum(ignored.values()) != silent:
            failures[f"ignored counted {sum(ignored.values())} != cases that must stay unanswered {silent}"] = 1
        n_fail = sum(failures.values())
        elapsed = time.monotonic() - t0
        families: dict[str, int] = {}
        for c in cases:
            families[c.family.split(":")[0]] = families.get(c.family.split(":")[0], 0) + 1
        sessions = sum(1 for c in cases if c.answer and c.answer.session)
        unauth_sessions = sum(1 for c in cases if c.answer and c.answer.session and not c.authentic)
        lat = [c.answer.t - c.sent for c in cases if c.answer]
        reasons: dict[str, int] = {}
        for c in cases:
            if c.answer and c.answer.decision == "rejected":
                reasons[c.answer.reason] = reasons.get(c.answer.reason, 0) + 1
        ctx.totals["fuzz_cases"] += len(cases)
        ctx.totals["fuzz_failures"] += n_fail
        ctx.totals["sessions"] += sessions
        ctx.row("fuzz", "cases over MQTT / wall time (s)", f"{len(cases)} / {elapsed:.0f}", None)
        ctx.row("fuzz", "families", ", ".join(f"{k} {v}" for k, v in sorted(families.items())), None)
        ctx.row("fuzz", "answers: sessions (authentic commands) / rejected", f"{sessions} / {sum(reasons.values())}",
                None)
        ctx.row("fuzz", "rejection reasons", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda x: -x[1])),
                all(k in DOCUMENTED for k in reasons))
        ctx.row("fuzz", "sessions started by an unauthenticated command", unauth_sessions, unauth_sessions == 0)
        ctx.row("fuzz", "unanswered by rule (health `ignored`): cases / counted",
                f"{silent} / {sum(ignored.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(
                    ignored.items(), key=lambda x: -x[1])), sum(ignored.values()) == silent)
        ctx.row("fuzz", "answer latency p50 / p99 / max (ms)",
                " / ".join(f"{x * 1000:.0f}" for x in (*quantiles(lat)[::2], max(lat) if lat else float('nan'))),
                (max(lat) if lat else 0) < HANG_S)
        for c in cases:
            if c.peak_mb is not None:
                ctx.row("fuzz", f"{c.family}: answer / daemon peak RSS growth",
                        f"{c.answer.reason if c.answer else 'none'} / +{c.peak_mb:.0f} MB",
                        c.peak_mb <= a.mem_bound_mb)
        ctx.row("fuzz", "daemon RSS during the stream (MB, every 500 cases)",
                " ".join(f"{m:.0f}" for _, m in rss) + f"; start {base.get('VmRSS', 0) / 1024:.0f}", None)
        ctx.row("fuzz", "failures", f"{n_fail}" + ("" if not failures else ": " + "; ".join(
            f"{k} x{v}" for k, v in sorted(failures.items()))), n_fail == 0)
        ctx.fuzz_failures = failures
    finally:
        be.close()
        alive = d.alive()
        finish(ctx, "fuzz", d)
        if not alive:
            ctx.row("fuzz", "daemon crashed", "yes", False)
        b.stop()
    # the wildcard response topic, on its own daemon: does it hold up later results?
    phase_fuzz_wildcard(ctx)


def phase_fuzz_wildcard(ctx: Ctx) -> None:
    """An authentic command whose MQTT 5 ResponseTopic holds a wildcard, then a valid
    command: is the valid command still answered?"""
    b = ctx.broker("wild-broker")
    d = new_daemon(ctx, "wild", b).start()
    be = Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        bad, _ = command(ctx.key, b"not an image")  # authentic: answered, but not on a wildcard
        be.send(bad, response_topic="facegate/v1/replies/+/x", corr=b"w")
        time.sleep(0.5)
        msg, c = command(ctx.key, ctx.inputs.ref)
        be.send(msg)
        r = be.wait(lambda: be.by_request().get(c["request_id"]), 15)
        depth = d.status().get("health", {}).get("outbox_depth")
        ok = bool(r)
        ctx.totals["fuzz_cases"] += 1
        ctx.totals["fuzz_failures"] += 0 if ok else 1
        ctx.row("fuzz", "bad command with ResponseTopic 'facegate/v1/replies/+/x', then a valid command: answered",
                f"{'yes' if ok else 'NO, delivery stalled'} (outbox depth {depth})", ok)
    finally:
        be.close()
        finish(ctx, "fuzz", d)
        b.stop()


# -- portraits through `facegate verify` ------------------------------------------------------
def portrait_cases(ctx: Ctx, d: Path) -> list[tuple[str, str, Path]]:
    """(name, role, path): role 'reference' or 'probe' (the other side is a good file)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = ctx.rng
    ref = ctx.inputs.ref
    img = cv2.imdecode(np.frombuffer(ref, np.uint8), cv2.IMREAD_COLOR)
    png = cv2.imencode(".png", img)[1].tobytes()
    video = ctx.inputs.video.read_bytes()
    files: dict[str, bytes | None] = {
        "empty.jpg": b"", "truncated.jpg": ref[: len(ref) // 3], "truncated.png": png[: len(png) // 2],
        "header_only.jpg": ref[:200], "corrupt.jpg": bytes(b ^ 0x5A if 300 < i < 2000 else b for i, b in enumerate(ref)),
        "random.jpg": rng.randbytes(20000), "text.jpg": b"this is not an image\n" * 50,
        "gif.gif": b"GIF89a\x10\x00\x10\x00" + rng.randbytes(300), "tiff.tif": b"II*\x00" + rng.randbytes(1000),
        "pdf.jpg": b"%PDF-1.7\n" + rng.randbytes(2000), "html.png": b"<html><body>hi</body></html>",
        "tiny_8x8.png": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
        "png_claims_60000x60000.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2
        + b"\x08\x02\x00\x00\x00" + rng.randbytes(100),
        "jpeg_claims_65000x65000.jpg": b"\xff\xd8\xff\xc0\x00\x11\x08" + (65000).to_bytes(2, "big") * 2
        + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01" + rng.randbytes(100),
        "bmp_claims_70000x70000.bmp": b"BM" + b"\0" * 16 + (70000).to_bytes(4, "little") * 2 + b"\0" * 40,
        "over_40mpx_7000x6000.png": cv2.imencode(".png", np.zeros((6000, 7000, 3), np.uint8))[1].tobytes(),
        "huge_25mb.jpg": None,  # sparse, written below
        "random.webm": rng.randbytes(50000), "truncated_header.webm": video[:3000], "empty.mp4": b"",
    }
    for name, data in files.items():
        if data is not None:
            (d / name).write_bytes(data)
    with open(d / "huge_25mb.jpg", "wb") as f:
        f.write(ref[:2])
        f.truncate(25_000_000)
    (d / "dir.jpg").mkdir(exist_ok=True)
    (d / "frames_one_corrupt").mkdir(exist_ok=True)
    (d / "frames_one_corrupt" / "000.jpg").write_bytes(ref)
    (d / "frames_one_corrupt" / "001.jpg").write_bytes(ref[:500])
    (d / "frames_empty").mkdir(exist_ok=True)
    bombs = bomb_files(ctx.work)  # small files that decode to huge canvases
    shutil.copy(bombs["webp_16000x16000"], d / "bomb_webp_16000x16000.webp")
    shutil.copy(bombs["jpeg_12000x12000_ff00"], d / "bomb_jpeg_12000x12000_ff00.jpg")
    out = []
    for name in sorted(list(files) + ["dir.jpg", "missing.jpg", "bomb_webp_16000x16000.webp",
                                      "bomb_jpeg_12000x12000_ff00.jpg"]):
        out.append((name, "reference", d / name))
    for name in ("truncated.jpg", "random.webm", "truncated_header.webm", "empty.mp4", "frames_one_corrupt",
                 "frames_empty", "bomb_webp_16000x16000.webp", "missing.mp4"):
        out.append((name, "probe", d / name))
    return out


def phase_portraits(ctx: Ctx) -> None:
    """Bad files through `facegate verify`: exit 2 with a reason on one line, bounded memory."""
    d = ctx.work / "portraits"
    good = d / "good.jpg"
    d.mkdir(parents=True, exist_ok=True)
    good.write_bytes(ctx.inputs.ref)
    base = _verify_child(good, good)
    ctx.row("portraits", "good reference and probe: exit / peak RSS (MB)", f"{base[0]} / {base[4]:.0f}", base[0] == 0)
    bound = base[4] + ctx.args.mem_bound_mb
    cases = portrait_cases(ctx, d)
    n_exit = n_line = n_mem = 0
    for name, role, path in cases:
        ref, probe = (path, good) if role == "reference" else (good, path)
        rc, out, err, dt, peak = _verify_child(ref, probe)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ours = [ln for ln in lines if ln.startswith("facegate: ")]
        exit_ok = rc == 2 and len(ours) == 1 and "Traceback" not in err and not out.strip() and dt < 60
        line_ok = exit_ok and len(lines) == 1
        mem_ok = peak <= bound
        n_exit += exit_ok
        n_line += line_ok
        n_mem += mem_ok
        why = ours[-1][10:].replace(str(d) + "/", "") if ours else (lines[-1] if lines else "(nothing on stderr)")
        extra = "" if len(lines) <= 1 else f" [+{len(lines) - len(ours)} native line(s): {next(x for x in lines if x not in ours)[:45]}]"
        ctx.row("portraits", f"{role} {name}: exit {rc}, {dt:.1f} s, peak {peak:.0f} MB", why[:70] + extra,
                exit_ok and line_ok and mem_ok)
    n = len(cases)
    ctx.portrait_failures = n - min(n_exit, n_line, n_mem)
    ctx.row("portraits", "exit 2 with one `facegate:` reason, no traceback", f"{n_exit}/{n}", n_exit == n)
    ctx.row("portraits", "nothing else on stderr (native decoder messages)", f"{n_line}/{n}", n_line == n)
    ctx.row("portraits", f"peak RSS <= good run + {ctx.args.mem_bound_mb:.0f} MB ({bound:.0f} MB)", f"{n_mem}/{n}",
            n_mem == n)


VERIFY_CHILD = """\
import atexit, sys
report, sys.argv = sys.argv[1], ["facegate"] + sys.argv[2:]
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            open(report, "w").write(line.split()[1])
atexit.register(_hwm)
from facegate.cli import main
sys.exit(main())
"""


def _verify_child(ref: Path, probe: Path) -> tuple[int, str, str, float, float]:
    """rc, stdout, stderr, wall s, peak RSS MB of one `facegate verify` (VmHWM of the
    process itself, reported at exit: ru_maxrss would include the pre-exec fork of us)."""
    with tempfile.NamedTemporaryFile(suffix=".hwm") as hwm:
        t = time.monotonic()
        try:
            p = subprocess.run([sys.executable, "-c", VERIFY_CHILD, hwm.name, "verify", "--reference", str(ref),
                                "--probe", str(probe)], capture_output=True, timeout=120)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out, err = None, exc.stdout or b"", exc.stderr or b""
        dt = time.monotonic() - t
        text = Path(hwm.name).read_text().strip()
        peak = int(text) / 1024 if text else float("inf")
    return rc, out.decode(errors="replace"), err.decode(errors="replace"), dt, peak


# -- resources ---------------------------------------------------------------------------------
def phase_resources(ctx: Ctx) -> None:
    a = ctx.args
    b = ctx.broker("res-broker")
    d = new_daemon(ctx, "resources", b).start()
    be = Collector(b, d.public)
    samples = []  # (session index, rss MB, fds, threads)
    lat = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        t0 = time.monotonic()
        every = max(1, a.resource_sessions // 100)
        for i in range(a.resource_sessions):
            if i % every == 0:
                s = proc_status(d.pid)
                samples.append((i, s.get("VmRSS", 0) / 1024, s.get("fds", 0), s.get("Threads", 0)))
            msg, c = command(ctx.key, ctx.inputs.ref if i % 2 == 0 else ctx.inputs.stranger)
            t = time.monotonic()
            be.send(msg)
            r = be.wait(lambda: be.by_request().get(c["request_id"]), 60)
            if not r:
                raise RuntimeError(f"session {i} not answered:\n{d.logtail()}")
            lat.append(r[0].t - t)
        s = proc_status(d.pid)
        samples.append((a.resource_sessions, s.get("VmRSS", 0) / 1024, s.get("fds", 0), s.get("Threads", 0)))
        elapsed = time.monotonic() - t0
        got = be.by_request()
        sessions = sum(1 for rs in got.values() if rs[0].session)
        decisions: dict[str, int] = {}
        for rs in got.values():
            decisions[rs[0].decision] = decisions.get(rs[0].decision, 0) + 1
        warm = [x for x in samples if x[0] >= a.resource_sessions * 0.1]
        k = max(1, len(warm) // 10)
        base_rss = statistics.mean(x[1] for x in warm[:k])
        end_rss = statistics.mean(x[1] for x in warm[-k:])
        growth = (end_rss - base_rss) / base_rss * 100
        max_growth = (max(x[1] for x in warm) - base_rss) / base_rss * 100
        base_fd, end_fd = warm[0][2], warm[-1][2]
        p50, p95, p99 = quantiles(lat)
        ctx.totals["sessions"] += sessions
        ctx.totals["rss_growth_pct"] = growth
        ctx.lat = (p50, p95, p99, len(lat))
        ctx.row("resources", "sessions back to back (one outstanding) / wall time (s)",
                f"{sessions} ({', '.join(f'{k} {v}' for k, v in sorted(decisions.items()))}) / {elapsed:.0f}",
                sessions == a.resource_sessions)
        ctx.row("resources", "RSS after warm-up (10 %) -> end, MB (growth %)",
                f"{base_rss:.0f} -> {end_rss:.0f} ({growth:+.1f} %, max {max_growth:+.1f} %)", growth <= 10)
        ctx.row("resources", "open fds after warm-up -> end / threads",
                f"{base_fd} -> {end_fd} / {warm[0][3]} -> {warm[-1][3]}", end_fd <= base_fd * 1.1)
        total = d.wait_status(lambda s: True)["health"]["latency_ms"].get("total")
        ctx.row("resources", f"latency, liveness none, Mosquitto defaults ({len(lat)}): p50 / p95 / p99 (ms)",
                f"{p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f} (models {total} ms)", None)
        plot_resources(ctx, samples, lat)
    finally:
        be.close()
        finish(ctx, "resources", d)
        b.stop()
    if a.latency_sessions:
        phase_latency(ctx, "none", True, a.latency_sessions)
        phase_latency(ctx, "passive", True, a.latency_sessions)


def phase_latency(ctx: Ctx, liveness: str, nodelay: bool, n: int) -> None:
    """Command -> signed result, one command outstanding, on a broker with or without Nagle."""
    b = ctx.broker(f"lat-{liveness}-{nodelay}", nodelay=nodelay)
    d = new_daemon(ctx, f"lat-{liveness}-{nodelay}", b, liveness=liveness).start()
    be = Collector(b, d.public)
    lat = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        for i in range(n):
            msg, c = command(ctx.key, ctx.inputs.ref if i % 2 == 0 else ctx.inputs.stranger)
            t = time.monotonic()
            be.send(msg)
            r = be.wait(lambda: be.by_request().get(c["request_id"]), 60)
            if r:
                lat.append(r[0].t - t)
        total = d.wait_status(lambda s: True)["health"]["latency_ms"].get("total")
        p50, p95, p99 = quantiles(lat)
        ctx.totals["sessions"] += len(lat)
        broker = "Mosquitto set_tcp_nodelay true" if nodelay else "Mosquitto defaults"
        ctx.row("resources", f"latency, liveness {liveness}, {broker} ({len(lat)}): p50 / p95 / p99 (ms)",
                f"{p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f} (models {total} ms)", len(lat) == n)
    finally:
        be.close()
        finish(ctx, "resources", d)
        b.stop()


def plot_resources(ctx: Ctx, samples, lat) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ctx.args.out
    out.mkdir(parents=True, exist_ok=True)
    xs = [s[0] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(xs, [s[1] for s in samples], color="tab:blue", label="RSS (MB)")
    ax.set_xlabel("sessions")
    ax.set_ylabel("RSS (MB)", color="tab:blue")
    ax.set_ylim(0, max(s[1] for s in samples) * 1.2)
    ax.axvline(ctx.args.resource_sessions * 0.1, color="grey", ls=":", label="end of warm-up")
    ax2 = ax.twinx()
    ax2.plot(xs, [s[2] for s in samples], color="tab:red", label="open fds")
    ax2.set_ylabel("open file descriptors", color="tab:red")
    ax2.set_ylim(0, max(s[2] for s in samples) * 1.5)
    ax.set_title(f"facegate run: RSS and fds over {ctx.args.resource_sessions} sessions ({platform.machine()})")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "soak_resources.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.hist(np.asarray(lat) * 1000, bins=60, color="tab:green")
    for q, ls in zip(quantiles(lat), ("-", "--", ":")):
        ax.axvline(q * 1000, color="black", ls=ls)
    ax.set_xlabel("command -> signed result at the backend (ms); lines: p50, p95, p99")
    ax.set_ylabel("sessions")
    fig.tight_layout()
    fig.savefig(out / "soak_latency.png", dpi=110)
    plt.close(fig)
    ctx.row("resources", "plots", f"{out / 'soak_resources.png'}, {out / 'soak_latency.png'}", None)


# -- main --------------------------------------------------------------------------------------
PHASES = {"coldstart": phase_coldstart, "broker": phase_broker, "kill": phase_kill, "camera": phase_camera,
          "model": phase_model, "disk": phase_disk, "fuzz": phase_fuzz, "portraits": phase_portraits,
          "resources": phase_resources}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "out")
    ap.add_argument("--quick", action="store_true", help="short run (about 3 minutes)")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of: " + ", ".join(PHASES))
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--broker-sessions", type=int, help="sessions in the broker-restart stream (500)")
    ap.add_argument("--broker-restarts", type=int, help="broker SIGKILLs during it (20)")
    ap.add_argument("--kill-sessions", type=int, help="completed sessions in the SIGKILL phase (100)")
    ap.add_argument("--kill-batch", type=int, default=10, help="commands sent per daemon life")
    ap.add_argument("--camera-outages", help="seconds the camera is gone, comma-separated (3,10,30)")
    ap.add_argument("--fuzz", type=int, help="fuzzed MQTT commands (10000)")
    ap.add_argument("--resource-sessions", type=int, help="sessions sampled for RSS / fds (1000)")
    ap.add_argument("--latency-sessions", type=int,
                    help="sessions timed on a broker without Nagle, with and without passive liveness (200 each)")
    ap.add_argument("--cold-starts", type=int, help="process starts timed (5)")
    ap.add_argument("--disk-commands", type=int, default=10)
    ap.add_argument("--mem-bound-mb", type=float, default=256.0,
                    help="largest peak-RSS growth a single bad input may cause, MB")
    ap.add_argument("--drain-s", type=float, default=180.0, help="longest wait for results after a phase")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, state dirs)")
    a = ap.parse_args(argv)
    full = dict(broker_sessions=500, broker_restarts=20, kill_sessions=100, camera_outages="3,10,30",
                fuzz=10_000, resource_sessions=1000, latency_sessions=200, cold_starts=5)
    quick = dict(broker_sessions=60, broker_restarts=3, kill_sessions=20, camera_outages="3",
                 fuzz=600, resource_sessions=150, latency_sessions=30, cold_starts=2)
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.camera_outages = [float(x) for x in str(a.camera_outages).split(",") if x]
    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        ap.error(f"unknown phase(s) {unknown}")
    if not (a.data / "replay" / "zubair" / "live.webm").is_file():
        ap.error(f"{a.data} does not hold replay/zubair/live.webm (use --data ../shared/data)")
    work = Path(tempfile.mkdtemp(prefix="facegate-soak-"))
    ctx = Ctx(a, work, load_inputs(a.data), signing.SigningKey.generate(), random.Random(a.seed))
    t0 = time.monotonic()
    log(f"soak: work dir {work}; phases {', '.join(phases)}")
    try:
        for name in phases:
            log(f"phase {name}")
            t = time.monotonic()
            try:
                PHASES[name](ctx)
            except Exception as exc:  # a phase that cannot finish is a failure, reported, not hidden
                traceback.print_exc()
                ctx.row(name, "phase aborted", f"{type(exc).__name__}: {str(exc)[:300]}", False)
            ctx.row(name, "phase wall time (s)", f"{time.monotonic() - t:.0f}", None)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t0
    print()
    print(f"facegate soak, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, mosquitto {_mosquitto_version()}; {elapsed / 60:.1f} min")
    w = max(len(r[1]) for r in ctx.rows)
    print(f"{'phase':10s} {'measure':{w}s} {'result':40s} check")
    for phase, measure, value, verdict in ctx.rows:
        print(f"{phase:10s} {measure:{w}s} {value:40s} {verdict}")
    t = ctx.totals
    g = "nan" if t["rss_growth_pct"] is None else f"{t['rss_growth_pct']:.1f}"
    print(f"soak: sessions={t['sessions']} lost={t['lost']} reordered={t['reordered']} crashes={t['crashes']} "
          f"fuzz_cases={t['fuzz_cases']} fuzz_failures={t['fuzz_failures']} rss_growth_pct={g}")
    bad = any(r[3] == "FAIL" for r in ctx.rows)
    return 1 if bad else 0


def _mosquitto_version() -> str:
    from broker import MOSQUITTO

    try:
        p = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5)
        first = (p.stdout or p.stderr).splitlines()[0]
        return first.split("version")[-1].strip().split()[0]
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
