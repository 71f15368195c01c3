"""The daemon under its own unit file, without systemd: the unit's ExecStart and
Environment= lines run as a subprocess (venv binary for /opt/facegate/venv/bin/facegate, a
temp config for /etc/facegate/facegate.toml), with a notify socket the test owns,
WATCHDOG_USEC / WATCHDOG_PID as systemd sets them and the signing key handed over as a
credential (LoadCredential=). A real Mosquitto, a video file as the camera.

Checked: READY=1 (with the credential's kid) once frames flow; STATUS= lines on state
changes; WATCHDOG=1 every WatchdogSec/2 while frames flow, also during a session; no ping
once the camera stops delivering, pings again when it is back; SIGHUP -> RELOADING=1 then
READY=1; SIGTERM -> STOPPING=1 and exit 0. Every datagram must come from the main pid
(NotifyAccess=main).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker import Backend, Mosquitto
from daemon_helpers import ROOT, command, wait_online, wait_result
from facegate import signing

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "facegate.service"
UNIT_BINARY = "/opt/facegate/venv/bin/facegate"
UNIT_CONFIG = "/etc/facegate/facegate.toml"
WATCHDOG_S = 2.0  # instead of the unit's WatchdogSec, for speed
DEV = "kiosk-1"


# -- the unit file ------------------------------------------------------------------------
def unit_service_lines() -> list[tuple[str, str]]:
    """(key, value) of every setting in the unit's [Service] section, in order."""
    out, section = [], None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            k, v = line.split("=", 1)
            out.append((k.strip(), v.strip()))
    return out


def unit_environment(lines, subst: dict[str, str]) -> dict[str, str]:
    """Environment= assignments (systemd quoting is shell-like enough here), with paths
    under the keys of `subst` replaced by their values."""
    env = {}
    for k, v in lines:
        if k != "Environment":
            continue
        for word in shlex.split(v):
            name, _, value = word.partition("=")
            for old, new in subst.items():
                if value == old or value.startswith(old + "/"):
                    value = new + value[len(old):]
            env[name] = value
    return env


def unit_argv(lines, binary: Path, config: Path) -> list[str]:
    execs = [v for k, v in lines if k == "ExecStart"]
    assert len(execs) == 1, execs
    argv = shlex.split(execs[0])
    assert argv[0] == UNIT_BINARY and UNIT_CONFIG in argv, argv  # the unit still says what we substitute
    return [str(binary)] + [str(config) if a == UNIT_CONFIG else a for a in argv[1:]]


# -- the notify socket -----------------------------------------------------------------------
@dataclass
class Note:
    t: float  # time.monotonic() on arrival
    pid: int  # sender's pid (SCM_CREDENTIALS)
    fields: dict


class NotifySocket:
    """An AF_UNIX datagram socket like systemd's: records every datagram with its
    sender pid and arrival time, on a thread."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.notes: list[Note] = []
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ucred = struct.calcsize("iII")
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(ucred))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[:ucred])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._cv:
                self.notes.append(Note(time.monotonic(), pid, fields))
                self._cv.notify_all()

    def wait(self, pred, timeout_s: float, after: float = 0.0) -> Note:
        """The first note after `after` for which pred(fields) holds."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                for n in self.notes:
                    if n.t >= after and pred(n.fields):
                        return n
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no such notification in {timeout_s} s; got {self.summary()}")
                self._cv.wait(left)

    def having(self, key: str, start: float = 0.0, end: float = float("inf")) -> list[Note]:
        with self._cv:
            return [n for n in self.notes if key in n.fields and start <= n.t <= end]

    def summary(self) -> list[str]:
        with self._cv:
            return [" ".join(f"{k}={v}" for k, v in n.fields.items()) for n in self.notes[-20:]]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def gaps(notes: list[Note]) -> list[float]:
    return [b.t - a.t for a, b in zip(notes, notes[1:])]


# -- the test ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


def test_unit_execstart_under_a_notify_socket(tmp_path, broker, faces, backend_key, model_dir):
    lines = unit_service_lines()
    settings = dict(lines)
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert int(settings["WatchdogSec"]) >= 2 * WATCHDOG_S  # the real one is more lenient than ours

    cam_dir = tmp_path / "camera"
    cam_dir.mkdir()
    cam = cam_dir / "live.webm"
    cam.symlink_to(faces["video"])  # renamed away later: the camera stops delivering
    runtime = tmp_path / "run"  # RuntimeDirectory= / WorkingDirectory= / LG_WD
    runtime.mkdir(mode=0o700)
    creds = tmp_path / "credentials"  # what LoadCredential=signing.key:... provides
    key = signing.SigningKey.generate()
    signing.save_key(key, creds / "signing.key")
    creds.chmod(0o500)
    state = tmp_path / "state"
    config = tmp_path / "facegate.toml"
    config.write_text(
        f'device_id = "{DEV}"\n'
        f'[camera]\nsource = "file"\npath = "{cam}"\nrealtime = false\nidle_fps = 30\n'
        'reopen_min_s = 0.5\nreopen_max_s = 1.0\nframe_timeout_s = 2.0\n'
        f'[daemon]\nstate_dir = "{state}"\nliveness = "passive"\nhealth_interval_s = 1\nsession_timeout_s = 20\n'
        + broker.mqtt_toml(DEV) + f'trusted_keys = ["{backend_key.public.hex()}"]\n')

    binary = Path(sys.executable).with_name("facegate")
    argv = unit_argv(lines, binary, config)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update(unit_environment(lines, {"/opt/facegate/models": str(model_dir), "/run/facegate": str(runtime)}))
    assert env["FACEGATE_MODEL_DIR"] == str(model_dir) and env["LG_WD"] == str(runtime)
    notify = NotifySocket(tmp_path / "notify.sock")
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)),
               CREDENTIALS_DIRECTORY=str(creds))
    # systemd sets WATCHDOG_PID to the main pid, known only after fork: a shell that execs
    # the ExecStart command keeps its pid ($$); umask as UMask= sets it
    wrapper = ["/bin/sh", "-c", 'umask 0077; WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh", *argv]
    log = open(tmp_path / "daemon.log", "wb")
    t_start = time.monotonic()
    proc = subprocess.Popen(wrapper, env=env, cwd=runtime, stdout=log, stderr=subprocess.STDOUT)
    backend = Backend(broker)
    measured = {}

    def ctx() -> str:
        return f"notes: {notify.summary()}\nlog: {(tmp_path / 'daemon.log').read_text(errors='replace')[-3000:]}"

    try:
        # READY=1 once the models are loaded and the first frame arrived; kid = the credential's
        ready = notify.wait(lambda f: f.get("READY") == "1", 120)
        measured["ready_s"] = round(ready.t - t_start, 2)
        assert ready.fields["STATUS"] == f"ready: {DEV}, kid {key.kid.hex()}", ctx()
        assert not (state / "signing.key").exists()  # the credential was used, nothing made

        # WATCHDOG=1 at WatchdogSec/2 while frames flow: wait for the pings themselves, not a
        # sleep; a timer fires late on a loaded machine, never early, so each gap is bounded
        # below and their median near WatchdogSec/2 (issue 25: every gap < WatchdogSec was luck)
        for i in range(5):
            notify.wait(lambda f: f.get("WATCHDOG") == "1", 10 * WATCHDOG_S,
                        after=notify.having("WATCHDOG", ready.t)[-1].t + 1e-6 if i else ready.t)
        pings = notify.having("WATCHDOG", ready.t)
        g = sorted(gaps(pings))
        assert len(pings) >= 5, ctx()
        assert g[0] >= 0.9 * WATCHDOG_S / 2 and g[len(g) // 2] < 0.75 * WATCHDOG_S, (g, ctx())
        measured["ping_interval_s"] = [round(min(g), 2), round(sum(g) / len(g), 2), round(max(g), 2)]

        # a session: STATUS lines follow the state; the watchdog is fed meanwhile
        wait_online(backend)
        t_session = time.monotonic()
        msg, cmd = command(backend_key, faces["ref"])
        backend.publish(f"{ROOT}/cmd/verify", msg)
        r = wait_result(backend, key.public, cmd["request_id"], 120)  # signed with the credential
        assert r["decision"] == "match", (r, ctx())
        notify.wait(lambda f: f.get("STATUS") == "idle", 10, after=t_session)
        statuses = [n.fields["STATUS"] for n in notify.having("STATUS", t_session)]
        assert statuses[0] == "waiting_face" and statuses[-2:] == ["deciding", "idle"], statuses
        measured["session_statuses"] = statuses
        g = gaps(notify.having("WATCHDOG", ready.t))
        assert max(g) < WATCHDOG_S, (g, ctx())

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again
        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        rel = notify.wait(lambda f: f.get("RELOADING") == "1", 10, after=t_hup)
        assert int(rel.fields["MONOTONIC_USEC"]) > 0
        again = notify.wait(lambda f: f.get("READY") == "1", 10, after=rel.t)
        assert again.fields.get("STATUS") == f"reloaded: signing kid {key.kid.hex()}", ctx()
        measured["reload_s"] = round(again.t - t_hup, 3)

        # the camera stops delivering: the pings stop (systemd would kill and restart us)
        t_gone = time.monotonic()
        cam.rename(cam_dir / "gone.webm")
        quiet_s = 2.5 * WATCHDOG_S
        deadline = t_gone + 30
        while time.monotonic() < deadline:  # the open file plays to its end first
            last = notify.having("WATCHDOG", t_gone)
            if time.monotonic() - (last[-1].t if last else t_gone) >= quiet_s:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the watchdog kept being fed without a camera: {ctx()}")
        last = notify.having("WATCHDOG", t_gone)
        measured["last_ping_after_rename_s"] = round((last[-1].t if last else t_gone) - t_gone, 2)
        status = json.loads((state / "status.json").read_text())
        assert status["camera"]["ok"] is False and status["camera"]["failures"] >= 1, status["camera"]
        assert (state / "status.json").stat().st_mode & 0o077 == 0  # UMask=0077

        # the camera is back: pings resume
        t_back = time.monotonic()
        (cam_dir / "gone.webm").rename(cam)
        resumed = notify.wait(lambda f: f.get("WATCHDOG") == "1", 15, after=t_back)
        measured["pings_resume_s"] = round(resumed.t - t_back, 2)

        # SIGTERM: STOPPING=1, exit 0
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        notify.wait(lambda f: f.get("STOPPING") == "1", 10, after=t_term)
        assert proc.wait(float(settings["TimeoutStopSec"])) == 0, ctx()
        measured["stop_s"] = round(time.monotonic() - t_term, 2)

        senders = {n.pid for n in notify.notes}
        assert senders == {proc.pid}, (senders, proc.pid)  # NotifyAccess=main
        print("\nmeasured:", json.dumps(measured))
    finally:
        backend.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
        log.close()
