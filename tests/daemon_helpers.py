"""Helpers for the daemon tests: `facegate run` as a subprocess or the daemon in process,
signed commands, and an independent COSE_Sign1 verifier (plain cbor2 + cryptography, no
facegate code)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker import Backend, Mosquitto
from facegate import signing, status
from facegate.status import StatusDoc

DEV = "kiosk-1"
ROOT = f"facegate/v1/{DEV}"
REPLY = "facegate/v1/replies/backend/7"  # the backend user reads only its own replies/backend/


# -- an independent verifier: RFC 9052 COSE_Sign1 by hand ---------------------------------
def independent_verify(message: bytes, public_raw: bytes, topic: str) -> dict:
    """Verify exactly as a backend without facegate would; returns the payload map."""
    tag = cbor2.loads(message)
    assert tag.tag == 18 and len(tag.value) == 4
    protected, unprotected, payload, sig = tag.value
    hdr = cbor2.loads(protected)
    assert hdr[1] == -8, "alg must be EdDSA"
    assert hdr[4] == hashlib.sha256(public_raw).digest()[:8], "kid = sha256(pub)[:8]"
    sig_structure = cbor2.dumps(["Signature1", protected, topic.encode(), payload])
    Ed25519PublicKey.from_public_bytes(public_raw).verify(sig, sig_structure)  # raises if bad
    return cbor2.loads(payload)


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
            + broker.mqtt_toml(DEV)
            + f'trusted_keys = ["{backend_key.public.hex()}"]\n' + extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProc:
        self.log = open(self.dir / "daemon.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "run", "--config", str(self.cfg)],
                                     stdout=self.log, stderr=self.log)
        return self

    @property
    def public(self) -> bytes:
        return signing.load_key(self.state / "signing.key").public

    def status(self) -> StatusDoc:
        doc = status.read(self.state)
        if doc is None:  # OSError as before: callers poll until it is written
            raise FileNotFoundError(f"no readable status file in {self.state}")
        return doc

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


def local_config(device_id: str, state_dir, video, backend_key, camera: str = "", daemon: str = "",
                 liveness: str = "", gpio: str = "") -> str:
    """A terminal's TOML with MQTT off and GPIO on gpiozero's mock pins: the video file as
    its camera; each string adds lines to its section."""
    return (f'device_id = "{device_id}"\n[camera]\nsource = "file"\npath = "{video}"\n{camera}'
            f'[daemon]\nstate_dir = "{state_dir}"\n{daemon}[liveness]\n{liveness}'
            f'[mqtt]\nenabled = false\ntrusted_keys = ["{backend_key.public.hex()}"]\n'
            f'[gpio]\nenabled = true\npin_factory = "mock"\n{gpio}')


@contextmanager
def in_process(config_text: str, ready_s: float = 30.0, clock=None):
    """The daemon built from this TOML (MQTT off, unless the TOML says otherwise) with its
    loop on a thread, yielded once ready; stopped afterwards. gpiozero's mock pins are
    reset before and after. `clock`: a ports.Clock for its wall time (e.g. a FakeClock)."""
    from gpiozero.pins.mock import MockFactory

    from facegate import config as config_mod
    from facegate import daemon as daemon_mod

    MockFactory().reset()
    d = daemon_mod.build(config_mod.parse(config_text), clock=clock)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + ready_s
        while not d.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.ready
        yield d
    finally:
        d.request_stop()
        t.join(30)
        MockFactory().reset()


def ask(d, key, reference: bytes, challenge: list[str] | None = None) -> str:
    """Hand an in-process daemon a signed verify command; returns its request_id."""
    from facegate.ports import Inbound

    msg, payload = command(key, reference, topic=d.topics.cmd_verify,
                           **({} if challenge is None else {"challenge": challenge}))
    d.handle_inbound(Inbound(d.topics.cmd_verify, msg))
    return payload["request_id"]


def outbox_payloads(d) -> dict[str, dict]:
    """request_id -> payload of each signed result waiting in an in-process daemon's
    outbox (verified independently)."""
    return {p["request_id"]: p for p in (independent_verify(row.message, d.key.public, row.topic)
                                         for row in d.outbox.pending(1000))}


def wait_online(backend: Backend, timeout_s=60.0):
    backend.wait_for(lambda ms: any(m.topic == f"{ROOT}/status" and m.payload == b"online" for m in ms), timeout_s)


def command(key, reference: bytes, topic=f"{ROOT}/cmd/verify", lifetime_s: int = 120, **over) -> tuple[bytes, dict]:
    """A signed verify command and its payload; `over` replaces fields (None drops one)."""
    now = time.time()
    payload = {"request_id": uuid.uuid4().hex, "nonce": os.urandom(16), "iat": int(now), "exp": int(now) + lifetime_s,
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


