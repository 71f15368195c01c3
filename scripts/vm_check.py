"""Host side of scripts/vm-check.sh: the broker, the signed commands, qemu, and the checks made
inside the booted terminal through its agent (scripts/vm_agent.py on a virtio serial port).

  vm_check.py prepare WORK ROOT   the broker's TLS files and the backend key in WORK; in the
                                  installed ROOT what a technician sets: broker, CA, password,
                                  the backend's public key, the replay video as the camera
  vm_check.py run WORK [--power-cuts N] [--accel auto|tcg|kvm] [--only LIST] [--t0 EPOCH]
                  [--arch x86_64|arm64]   arm64: qemu-system-aarch64 -M virt -cpu cortex-a72 (TCG)

Checks (run in this order; --only picks some, boot is always made):
  boot      facegate.service active by READY=1 (Type=notify), STATUS= shown by systemctl status,
            `facegate status` / `facegate selftest` (the installed CLI, as a technician runs it),
            online at the broker, `systemd-analyze security` exposure <= 2.0, the state dir and
            key owned and moded as promised
  session   a whole verification session by signed command through the broker, the result
            verified with the device key read from the guest
  clock     booted a day behind and a year ahead, no time sync: clock_synchronized false,
            commands refused as docs/contract.md says, nothing replayed once the clock is set
  watchdog  SIGSTOP the daemon: killed by the watchdog within WatchdogSec, restarted, online again
  crashloop a daemon that fails at every start stops at StartLimitBurst with a clear journal line
  camera    the guest's vivid V4L2 device as the camera under the unit's sandbox: READY=1 needs frames
  power     N power cuts (qemu killed) with results in the outbox and the broker unreachable:
            each result delivered once after the next boot, outbox and key intact
  journal   the whole journal of every boot holds no biometric data (the reference, embeddings,
            landmark lists, encoded images)
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

DEVICE = "kiosk-vm"
GUEST_BROKER = "10.0.2.100"
GUEST_PORT = 8883
CONF = "/etc/facegate/facegate.toml"
FG = "/opt/facegate/venv/bin/facegate"
EXPOSURE_MAX = 2.0
# no_timer_check: run 2026-12-07, a TCG boot on the loaded host panicked with "IO-APIC + timer
# doesn't work!" (the kernel's timer check timed out under emulation; usual for x86 VMs)
KERNEL_ARGS = {"x86_64": "console=ttyS0 no_timer_check", "arm64": "console=ttyAMA0"}
CHECKS = ("boot", "session", "clock", "watchdog", "crashloop", "camera", "power", "journal")


# -- pure helpers (tests/test_vm_check.py) ---------------------------------------------------
def set_toml(text: str, section: str, key: str, value: str) -> str:
    """`key = value` in [section] of a flat TOML text (replaced, or added after the header;
    the section added at the end when missing); `section` "" is the top level."""
    lines = text.splitlines()
    start = 0
    if section:
        hdr = f"[{section}]"
        idx = [i for i, ln in enumerate(lines) if ln.strip() == hdr]
        if not idx:
            return text.rstrip("\n") + f"\n{hdr}\n{key} = {value}\n"
        start = idx[0] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for i in range(start, end):
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    lines.insert(start, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def exposure(text: str) -> float | None:
    """The figure of `systemd-analyze security UNIT`'s last line."""
    m = re.search(r"Overall exposure level for \S+:\s*([0-9.]+)", text)
    return float(m.group(1)) if m else None


def journal_biometric(text: str, secrets: list[bytes]) -> list[str]:
    """What in a journal text looks like biometric data: any of `secrets` (e.g. the reference
    image) in hex or base64, a list of 16+ numbers (an embedding, landmarks), a run of 200+
    base64 characters (an encoded image or array)."""
    import base64

    found = []
    for s in secrets:
        for enc in (s[:24].hex(), base64.b64encode(s[:48]).decode()[:32]):
            if enc in text:
                found.append(f"a secret's bytes ({enc[:12]}...)")
    if re.search(r"\[\s*-?\d+(\.\d+)?(\s*,\s*-?\d+(\.\d+)?(e-?\d+)?){15,}", text):
        found.append("a list of 16 or more numbers")
    if re.search(r"[A-Za-z0-9+/]{200,}={0,2}", text):
        found.append("a run of 200+ base64 characters")
    return found


def delivery(seqs: list[int]) -> tuple[int, int, int]:
    """(results, lost, duplicates) of the seqs a backend received in order: lost = the gaps
    in 1..max (seq is persisted and strictly increasing), duplicates = repeats."""
    if not seqs:
        return 0, 0, 0
    got = set(seqs)
    return len(got), len(set(range(min(got), max(got) + 1)) - got), len(seqs) - len(got)


def systemctl_show(text: str) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln)


def refused_counts(health: dict) -> dict[str, int]:
    """Of a health document's `ignored` counts, those of a command refused as seen before
    (docs/contract.md: replayed ids, or exp + skew at or below the replay floor)."""
    ignored = health.get("ignored") or {}
    return {k: int(v) for k, v in ignored.items() if k in ("replayed_request_id", "replayed_nonce", "replay_floor")}


def qemu_machine(arch: str, accel: str) -> list[str]:
    """qemu's binary and machine for `arch`: x86_64 under TCG at `-cpu max` (the LiteRT wheel
    needs AVX; qemu64 dies with SIGILL), arm64 as a Raspberry Pi 4's core on the virt board."""
    if arch == "arm64":
        return ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-accel", "tcg"]
    return ["qemu-system-x86_64", "-accel", accel, *(["-cpu", "max"] if accel == "tcg" else [])]


# -- the broker ------------------------------------------------------------------------------
def long_tls(d: Path) -> None:
    """CA + server certificate valid 3 years back and 3 years ahead (the clock checks boot the
    guest a year off), for 10.0.2.100 (the guest's view of the broker) and 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject, key, issuer, issuer_key, ca, sans=()):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=3 * 365))
             .not_valid_after(now + datetime.timedelta(days=3 * 365))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vm-check CA")])
    ca = cert("vm-check CA", ca_key, ca_name, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    srv = cert("broker", key, ca_name, ca_key, False,
               [x509.IPAddress(ipaddress.ip_address(GUEST_BROKER)), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost")])
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))


def reference_jpeg(video: Path) -> bytes:
    """Frame 20 of the replay video as the ID portrait (as tests/conftest.py's `faces`)."""
    import cv2

    from facegate.adapters.files import FileCamera

    with FileCamera(video) as cam:
        for f in cam.frames():
            if f.seq == 20:
                return cv2.imencode(".jpg", f.image)[1].tobytes()
    raise RuntimeError(f"{video} has no frame 20")


def prepare(work: Path, root: Path) -> None:
    from facegate import signing

    long_tls(work / "tls")
    key = signing.SigningKey.generate()
    signing.save_key(key, work / "backend.key")
    gid = next(int(ln.split(":")[2]) for ln in (root / "etc/group").read_text().splitlines()
               if ln.startswith("facegate:"))
    etc = root / "etc/facegate"
    ca = etc / "broker-ca.pem"
    ca.write_bytes((work / "tls/ca.pem").read_bytes())
    ca.chmod(0o644)
    pw = etc / "mqtt.password"
    from broker import password
    pw.write_text(password(DEVICE) + "\n")
    os.chown(pw, 0, gid)
    pw.chmod(0o640)
    conf = root / CONF.lstrip("/")
    text = conf.read_text()
    for section, k, v in [("", "device_id", f'"{DEVICE}"'),
                          ("camera", "path", '"/opt/facegate-check/live.webm"'),
                          ("mqtt", "host", f'"{GUEST_BROKER}"'), ("mqtt", "port", str(GUEST_PORT)),
                          ("mqtt", "tls", "true"), ("mqtt", "ca_file", '"/etc/facegate/broker-ca.pem"'),
                          ("mqtt", "username", f'"{DEVICE}"'), ("mqtt", "password_file", '"/etc/facegate/mqtt.password"'),
                          ("mqtt", "reconnect_max_s", "5.0"), ("mqtt", "keepalive_s", "10"),
                          # the broker here saves on SIGTERM and is never SIGKILLed: nothing it
                          # acknowledged is forgotten, so no re-sends (docs/contract.md)
                          ("mqtt", "redeliver_s", "0.0"),
                          ("mqtt", "trusted_keys", f'["{key.public.hex()}"]'),
                          ("daemon", "liveness", '"none"'), ("daemon", "health_interval_s", "5.0"),
                          ("daemon", "session_timeout_s", "60.0")]:
        text = set_toml(text, section, k, v)
    conf.write_text(text)


class Broker:
    """tests/broker.py's Mosquitto (persistent sessions, saved on SIGTERM) with the long-lived
    certificate, on one loopback port for the whole run; a persistent backend subscriber."""

    def __init__(self, work: Path):
        from broker import Mosquitto

        d = work / "broker"
        d.mkdir(exist_ok=True)
        self.m = Mosquitto(d, persist=True, autosave_s=1)
        for name in ("ca", "cert", "key"):
            src = {"ca": "ca.pem", "cert": "server.pem", "key": "server.key"}[name]
            self.m.tls[name].write_bytes((work / "tls" / src).read_bytes())
        self.m.add_user(DEVICE)
        self.backend = None

    @property
    def port(self) -> int:
        return self.m.port

    def start(self) -> None:
        self.m.start()
        if self.backend is None:
            from broker import Backend

            self.backend = Backend(self.m, persistent=True, client_id="vm-check-backend")
            self.backend.wait_for(lambda _: self.backend.client.is_connected(), 20)
            time.sleep(1)
            self.m.wait_saved()

    def stop(self) -> None:
        self.m.stop()  # SIGTERM: Mosquitto saves its sessions

    def close(self) -> None:
        if self.backend:
            self.backend.close()
        self.m.stop()


# -- the guest -------------------------------------------------------------------------------
class Guest:
    """One boot of the image in qemu; run() executes a shell command in it as root."""

    def __init__(self, work: Path, accel: str, broker_port: int, tag: str, rtc: str | None = None,
                 arch: str = "x86_64"):
        self.work, self.accel, self.tag = work, accel, tag
        self.slow = 3.0 if arch == "arm64" else 1.0  # an emulated Cortex-A72 (see Run.slow)
        self.sock_path = work / f"agent-{tag}.sock"
        self.console = work / f"console-{tag}.log"
        fwd = f"guestfwd=tcp:{GUEST_BROKER}:{GUEST_PORT}-cmd:socat STDIO TCP:127.0.0.1:{broker_port}"
        cmd = ["nice", *qemu_machine(arch, accel), "-m", "2048", "-smp", "2",
               "-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd.img"),
               "-append", f"root=/dev/vda rw panic=10 {KERNEL_ARGS[arch]}",
               "-drive", f"file={work / 'disk.img'},format=raw,if=virtio",
               "-netdev", f"user,id=n0,restrict=on,{fwd}", "-device", "virtio-net-pci,netdev=n0",
               "-device", "virtio-serial-pci",
               "-chardev", f"socket,id=agent,path={self.sock_path},server=on,wait=off",
               "-device", "virtserialport,chardev=agent,name=facegate.agent",
               "-display", "none", "-monitor", "none", "-serial", f"file:{self.console}", "-no-reboot"]
        if rtc:
            cmd += ["-rtc", f"base={rtc}"]
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(work / f"qemu-{tag}.err", "wb"))
        self.sock: socket.socket | None = None
        self.buf = b""
        self.n = 0
        self.boot_id = ""
        self.boot_s = 0.0

    def _connect(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited {self.proc.returncode}: "
                                   f"{(self.work / f'qemu-{self.tag}.err').read_text()[-400:]}")
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(self.sock_path))
                self.sock = s
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("qemu's agent socket did not appear")

    def _line(self, deadline: float) -> dict | None:
        assert self.sock is not None
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited {self.proc.returncode}")
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:  # qemu's chardev dropped the connection (seen while a guest booted)
                raise AgentGone(f"agent socket: {exc}") from exc
            if not chunk:
                raise AgentGone("agent socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return {}

    def wait_agent(self, timeout_s: float) -> float:
        """Until the guest's agent says hello; the seconds from qemu's start."""
        deadline = time.monotonic() + timeout_s
        self._connect(deadline)
        next_ask = 0.0
        while time.monotonic() < deadline:
            try:
                if time.monotonic() >= next_ask:  # an agent that started before we connected
                    self._send({"id": -1, "cmd": "hello"})
                    next_ask = time.monotonic() + 5
                doc = self._line(min(deadline, time.monotonic() + 1))
            except (AgentGone, OSError):
                # run 2026-12-07: ConnectionResetError from qemu's socket while the guest booted
                # after a power cut; nothing was asked yet, so connect again and say hello again
                if self.sock:
                    self.sock.close()
                self.buf, next_ask = b"", 0.0
                time.sleep(1)
                self._connect(deadline)
                continue
            if doc and doc.get("hello"):
                self.boot_id = doc["hello"]
                self.boot_s = time.monotonic() - self.t_start
                self.buf = b""
                return self.boot_s
        raise TimeoutError(f"no agent within {timeout_s:.0f} s; console: {self.console_tail()}")

    def _send(self, doc: dict) -> None:
        assert self.sock is not None
        self.sock.sendall(json.dumps(doc).encode() + b"\n")

    def run(self, cmd: str, timeout_s: float = 120) -> tuple[int, str]:
        self.n += 1
        timeout_s *= self.slow
        self._send({"id": self.n, "cmd": cmd, "timeout": timeout_s})
        deadline = time.monotonic() + timeout_s + 30
        while True:
            doc = self._line(deadline)
            if doc is None:
                raise TimeoutError(f"guest command timed out: {cmd}")
            if doc.get("id") == self.n:
                return doc["rc"], doc["out"]

    def ok(self, cmd: str, timeout_s: float = 120) -> str:
        rc, out = self.run(cmd, timeout_s)
        if rc != 0:
            raise CheckError(f"`{cmd}` exited {rc}: {out.strip()[-600:]}")
        return out

    def show(self, unit: str = "facegate.service", props: str = "") -> dict[str, str]:
        return systemctl_show(self.ok(f"systemctl show {unit}" + (f" -p {props}" if props else "")))

    def status(self) -> dict:
        rc, out = self.run(f"{FG} status --config {CONF} --json")
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}

    def console_tail(self, n: int = 600) -> str:
        try:
            return self.console.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """The power cut: qemu SIGKILLed, no shutdown, no flush beyond what the guest made."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        if self.sock:
            self.sock.close()

    def poweroff(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"id": 0, "cmd": "systemctl poweroff", "timeout": 5})
                self.proc.wait(120)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class CheckError(Exception):
    pass


class AgentGone(RuntimeError):
    """The connection to the guest's agent dropped."""


def wait(pred, timeout_s: float, what: str, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise CheckError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


# -- the run ---------------------------------------------------------------------------------
class Run:
    def __init__(self, work: Path, accel: str, power_cuts: int, only: set[str], t0: float, arch: str = "x86_64"):
        from facegate import signing

        self.work, self.accel_wanted, self.cuts, self.only, self.t0 = work, accel, power_cuts, only, t0
        self.arch = arch
        # an emulated Cortex-A72 runs this guest ~3x slower than TCG's x86 `max` here (timeouts only)
        self.slow = 3.0 if arch == "arm64" else 1.0
        self.backend_key = signing.load_key(work / "backend.key")
        self.broker = Broker(work)
        self.ref = reference_jpeg(REPO.parent / "shared" / "data" / "replay" / "zubair" / "live.webm"
                                  if not os.environ.get("FACEGATE_SHARED")
                                  else Path(os.environ["FACEGATE_SHARED"]) / "data/replay/zubair/live.webm")
        self.figures: dict[str, str] = {}
        self.failed: list[str] = []
        self.passed: list[str] = []
        self.guest: Guest | None = None
        self.boots = 0
        self.accel = "tcg"
        self.device_public = b""
        self.topic = f"facegate/v1/{DEVICE}"

    # reporting
    def report(self, name: str, ok: bool, detail: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {name:22s} {detail}", flush=True)
        (self.passed if ok else self.failed).append(name)

    def check(self, name: str, fn) -> None:
        if self.only and name not in self.only and name != "boot":
            return
        t = time.monotonic()
        try:
            fn()
            print(f"      ({name}: {time.monotonic() - t:.0f} s)", flush=True)
        except (CheckError, TimeoutError, RuntimeError, AssertionError) as exc:
            self.report(name, False, str(exc))
            if self.guest:
                try:  # the unit's last lines, if the guest still answers
                    rc, out = self.guest.run("journalctl -u facegate -n 15 --no-pager -o short-monotonic", 60) \
                        if self.guest.proc.poll() is None else (1, "")
                except (TimeoutError, RuntimeError, OSError) as exc2:
                    out = f"(the guest did not give its journal: {exc2})"
                for ln in out.splitlines():
                    print(f"    {ln}")

    # boots
    def boot(self, rtc: str | None = None) -> Guest:
        self.boots += 1
        g = Guest(self.work, self.accel, self.broker.port, f"{self.boots}", rtc, self.arch)
        g.wait_agent((600 if self.accel == "tcg" else 120) * self.slow)
        self.guest = g
        return g

    def probe_accel(self) -> None:
        if self.accel_wanted == "tcg" or self.arch != "x86_64" or not os.path.exists("/dev/kvm"):
            self.accel = "tcg"
            return
        self.accel = "kvm"
        try:
            g = Guest(self.work, "kvm", self.broker.port, "kvm-probe")
            g.wait_agent(60)
            g.poweroff()
            print(f"== accel: KVM probe boot reached the agent in {g.boot_s:.1f} s: using KVM", flush=True)
        except (TimeoutError, RuntimeError) as exc:
            g.kill()
            if self.accel_wanted == "kvm":
                raise CheckError(f"--accel kvm: the probe boot did not come up ({str(exc)[:200]})") from None
            self.accel = "tcg"
            tail = g.console_tail(200).strip().splitlines()
            print(f"== accel: the KVM probe boot did not reach the agent in 60 s (console's last line: "
                  f"{tail[-1] if tail else 'nothing'!r}): using TCG", flush=True)

    def wait_active(self, g: Guest, timeout_s: float = 600, old_pid: str = "") -> dict[str, str]:
        def active():
            s = g.show(props="ActiveState,SubState,MainPID,Result,NRestarts")
            if s.get("ActiveState") == "failed":
                raise CheckError(f"facegate.service failed: {s}")
            return s if s.get("ActiveState") == "active" and s.get("MainPID") not in ("0", old_pid) else None
        return wait(active, timeout_s * self.slow, "facegate.service active", 2)

    # messages
    def command(self, lifetime_s: int = 300, iat: float | None = None) -> tuple[bytes, dict]:
        """A signed verify command with the replay video's frame 20 as the reference."""
        from facegate import signing

        now = time.time() if iat is None else iat
        payload = {"request_id": os.urandom(16).hex(), "nonce": os.urandom(16), "iat": int(now),
                   "exp": int(now) + lifetime_s, "reference": self.ref}
        return signing.sign(payload, self.backend_key, f"{self.topic}/cmd/verify"), payload

    def send(self, msg: bytes) -> None:
        self.broker.backend.publish(f"{self.topic}/cmd/verify", msg)

    def results(self) -> list[dict]:
        from daemon_helpers import independent_verify

        return [independent_verify(m.payload, self.device_public, f"{self.topic}/result")
                for m in self.broker.backend.on(f"{self.topic}/result")]

    def wait_result(self, request_id: str, timeout_s: float = 300) -> dict:
        return wait(lambda: next((r for r in self.results() if r["request_id"] == request_id), None),
                    timeout_s, f"the result of {request_id[:8]}", 1)

    def online_count(self) -> int:
        return sum(1 for m in self.broker.backend.on(f"{self.topic}/status") if m.payload == b"online")

    # -- checks -------------------------------------------------------------------------
    def c_boot(self) -> None:
        g = self.boot()
        self.figures["boot"] = f"{g.boot_s:.0f}"
        s = self.wait_active(g)
        st = g.show(props="Type,NotifyAccess,StatusText,ExecMainStartTimestampMonotonic,"
                          "ActiveEnterTimestampMonotonic,WatchdogUSec,User")
        ready = (int(st["ActiveEnterTimestampMonotonic"]) - int(st["ExecMainStartTimestampMonotonic"])) / 1e6
        self.figures["ready"] = f"{ready:.1f}"
        analyze = g.ok("systemd-analyze time || true")
        boot_line = analyze.strip().splitlines()[0] if analyze.strip() else ""
        self.report("boot", True, f"agent up {g.boot_s:.0f} s after qemu started ({self.accel}); {boot_line}")
        if st.get("Type") != "notify" or not st.get("StatusText"):
            raise CheckError(f"not Type=notify with a STATUS= line: {st}")
        self.report("ready", True, f"active by READY=1 {ready:.1f} s after exec (Type={st['Type']}, "
                                   f"pid {s['MainPID']}, user {st['User']}, WatchdogUSec={st['WatchdogUSec']}), "
                                   f"STATUS={st['StatusText']!r}")
        out = g.ok("systemctl status facegate --no-pager -l")
        if "Status:" not in out or "active (running)" not in out:
            raise CheckError(f"systemctl status lacks its Status: / active (running) lines:\n{out}")
        self.device_public = bytes.fromhex(json.loads(g.ok(
            f"{FG} keys show --path /etc/facegate/signing.key --json").strip().splitlines()[-1])["public_key"])
        wait(lambda: self.online_count() > 0, 600 * self.slow, "the daemon's 'online' at the broker")
        stat = wait(lambda: (lambda d: d if d.get("broker", {}).get("connected") else None)(g.status()), 120,
                    "facegate status: broker connected")
        rc, out = g.run(f"{FG} status --config {CONF}")
        if rc != 0 or "running" not in out:
            raise CheckError(f"facegate status exited {rc}: {out}")
        self.report("status", True, "facegate status: " + "; ".join(
            ln.strip() for ln in out.splitlines() if ln.split()[:1] in (["daemon"], ["broker"], ["camera"], ["key"])))
        if stat.get("key", {}).get("source") != "credential":
            raise CheckError(f"the daemon does not sign with its systemd credential: {stat.get('key')}")
        rc, out = g.run(f"{FG} selftest --config {CONF} --key /etc/facegate/signing.key", 600)
        lines = out.strip().splitlines()
        if rc != 0:
            raise CheckError("facegate selftest: " + " | ".join(ln for ln in lines if ln.startswith("FAIL")))
        self.report("selftest", True, lines[-1] if lines else "")
        sec = g.ok("systemd-analyze security facegate.service --no-pager")
        ex = exposure(sec)
        self.figures["exposure"] = f"{ex}"
        (self.work / "security.txt").write_text(sec)
        if ex is None or ex > EXPOSURE_MAX:
            raise CheckError(f"systemd-analyze security: exposure {ex} > {EXPOSURE_MAX}")
        self.report("security", True, sec.strip().splitlines()[-1].strip())
        perms = g.ok("stat -c '%U:%G %a %n' /var/lib/facegate /var/lib/facegate/* /etc/facegate "
                     "/etc/facegate/signing.key /etc/facegate/facegate.toml")
        want = {"/var/lib/facegate": "facegate:facegate 750", "/etc/facegate/signing.key": "root:root 600",
                "/etc/facegate": "root:facegate 750", "/etc/facegate/facegate.toml": "root:facegate 640"}
        bad = []
        for ln in perms.splitlines():
            own, mode, path = ln.split(" ", 2)
            if path in want and f"{own} {mode}" != want[path]:
                bad.append(ln)
            elif path.startswith("/var/lib/facegate/") and (not own.startswith("facegate:") or mode[-2:] != "00"):
                bad.append(ln)
        if bad:
            raise CheckError("ownership / modes: " + "; ".join(bad))
        self.report("permissions", True, "state dir facegate 0750, its files facegate's only (UMask 0077), key "
                                         "root 0600 (read by systemd as a credential), config root:facegate 0640")

    def c_session(self) -> None:
        g = self.guest
        msg, p = self.command()
        t = time.monotonic()
        self.send(msg)
        r = self.wait_result(p["request_id"])
        took = time.monotonic() - t
        if r["decision"] != "match":
            raise CheckError(f"session decided {r['decision']} ({r.get('reason')}), want match")
        self.figures["session"] = f"{took:.0f}"
        self.report("session", True, f"signed command -> session -> {r['decision']}, seq {r['seq']}, signature verified with the guest's "
                                     f"key, {took:.0f} s command to result; status: {g.status().get('state')}")

    def c_journal(self) -> None:
        g = self.guest
        # the whole journal of every boot so far (the daemon's own lines and anything else)
        text = g.ok("journalctl --no-pager -o cat", 300)
        unit = g.ok("journalctl -u facegate --no-pager -o cat | wc -l", 120).strip()
        (self.work / "journal.txt").write_text(text)
        found = journal_biometric(text, [self.ref])
        if found:
            raise CheckError("the journal holds " + ", ".join(found))
        self.report("journal", True, f"{len(text.splitlines())} journal lines of {self.boots} boots ({unit} of "
                                     "facegate.service): no reference, embedding, landmark list or encoded image")

    def c_watchdog(self) -> None:
        g = self.guest
        s = g.show(props="MainPID,NRestarts,WatchdogUSec")
        pid, restarts = s["MainPID"], int(s["NRestarts"])
        online = self.online_count()
        g.ok(f"kill -STOP {pid}")
        t = time.monotonic()
        wait(lambda: g.run(f"test -d /proc/{pid}")[0] != 0, 90, f"pid {pid} killed by the watchdog", 0.5)
        killed = time.monotonic() - t
        s2 = self.wait_active(g, 600, old_pid=pid)
        restart = time.monotonic() - t
        wait(lambda: self.online_count() > online, 120, "'online' again at the broker")
        back = time.monotonic() - t
        j = g.ok("journalctl -u facegate --no-pager -o cat -n 200")
        line = next((ln for ln in j.splitlines() if "atchdog timeout" in ln), "")
        limit = int(s["WatchdogUSec"].rstrip("s")) if s["WatchdogUSec"].rstrip("s").isdigit() else 30
        self.figures["watchdog_kill"] = f"{killed:.0f}"
        self.figures["watchdog_restart"] = f"{restart:.0f}"
        if not line or int(s2["NRestarts"]) != restarts + 1 or killed > limit + 5:
            raise CheckError(f"killed after {killed:.0f} s (WatchdogSec {limit}), NRestarts {s2['NRestarts']}, "
                             f"journal {line!r}")
        self.report("watchdog", True, f"SIGSTOPped pid {pid} killed {killed:.0f} s later ({line.strip()!r}), "
                                      f"active again (pid {s2['MainPID']}) at {restart:.0f} s, online at the broker "
                                      f"at {back:.0f} s")

    def c_crashloop(self) -> None:
        g = self.guest
        d = "/run/systemd/system/facegate.service.d"
        # the journal's position now: the starts counted are this loop's only (a window of
        # wall-clock seconds also took in the watchdog check's restart just before, and the
        # clock check steps the guest's clock)
        cursor = g.ok("journalctl -n 1 --show-cursor -o cat --no-pager | sed -n 's/^-- cursor: //p'").strip()
        if not cursor or "'" in cursor:
            raise CheckError(f"no journal cursor: {cursor!r}")
        # a config that cannot be read: what a bad edit does; a runtime drop-in, gone at reboot
        g.ok(f"mkdir -p {d} && printf '[Service]\\nExecStart=\\nExecStart={FG} run --config /etc/facegate/missing.toml\\n'"
             f" > {d}/crash.conf && systemctl daemon-reload && systemctl reset-failed facegate; "
             "systemctl restart --no-block facegate")
        t = time.monotonic()
        # systemd 252 logs "Start request repeated too quickly." and leaves the unit failed
        # with the last start's result ('exit-code'), not Result=start-limit-hit
        s = wait(lambda: (lambda s: s if s.get("ActiveState") == "failed" and g.run(
            "journalctl -u facegate --no-pager -o cat -n 20 | grep -q 'repeated too quickly'")[0] == 0 else None)(
            g.show(props="Result,NRestarts,ActiveState")), 900, "the start limit", 3)
        took = time.monotonic() - t
        j = g.ok("journalctl -u facegate --no-pager -o cat -n 60")
        starts = g.ok(f"journalctl -u facegate --no-pager -o cat --after-cursor='{cursor}' | grep -c '^Starting' || true")
        clear = [ln for ln in j.splitlines() if "repeated too quickly" in ln or "start-limit-hit" in ln]
        clear += [ln for ln in j.splitlines() if "Failed with result" in ln][-1:]
        g.ok(f"rm -f {d}/crash.conf && systemctl daemon-reload && systemctl reset-failed facegate && "
             "systemctl start --no-block facegate")
        self.wait_active(g)
        if not clear:
            raise CheckError(f"no start-limit journal line; last lines:\n{j[-800:]}")
        if int(starts.strip() or 0) != 5:
            raise CheckError(f"{starts.strip()} starts before the limit, want StartLimitBurst=5")
        self.report("crashloop", True, f"stopped at the start limit after {took:.0f} s, "
                                       f"{starts.strip()} starts, then ActiveState={s['ActiveState']}, "
                                       f"Result={s['Result']}: "
                                       + " / ".join(dict.fromkeys(clear)))

    def c_camera(self) -> None:
        g = self.guest
        g.ok("modprobe vivid n_devs=1 node_types=0x1 input_types=0x0 && udevadm settle && "
             "ls -l /dev/video* && v4l2-ctl -d /dev/video0 --all | head -5")
        conf = "/etc/facegate/facegate-v4l2.toml"
        g.ok(f"sed -e '/^\\[camera\\]/,/^\\[/ s|^source = .*|source = \"v4l2\"|' "
             f"-e '/^\\[camera\\]/,/^\\[/ s|^device = .*|device = \"/dev/video0\"|' "
             f"-e '/^\\[camera\\]/,/^\\[/ s|^width = .*|width = 640|' "
             f"-e '/^\\[camera\\]/,/^\\[/ s|^height = .*|height = 360|' {CONF} > {conf} && "
             f"chown root:facegate {conf} && chmod 0640 {conf}")
        d = "/run/systemd/system/facegate.service.d"
        old = g.show(props="MainPID")["MainPID"]
        g.ok(f"mkdir -p {d} && printf '[Service]\\nExecStart=\\nExecStart={FG} run --config {conf}\\n' > {d}/v4l2.conf"
             " && systemctl daemon-reload && systemctl restart --no-block facegate")
        try:
            s = self.wait_active(g, 400, old_pid=old)
            st = wait(lambda: (lambda d: d if (d.get("camera") or {}).get("fps", 0) > 0 else None)(g.status()),
                      120, "camera frames (fps > 0) in facegate status")
            cam = st.get("camera", {})
        finally:  # the file camera again, for the checks after this one
            pid = g.show(props="MainPID")["MainPID"]
            g.ok(f"rm -f {d}/v4l2.conf {conf} && systemctl daemon-reload && systemctl reset-failed facegate; "
                 "systemctl restart --no-block facegate")
            self.wait_active(g, 600, old_pid=pid)
        self.report("camera", True, f"vivid /dev/video0 as camera (source v4l2) under the unit's sandbox: "
                                    f"active by READY=1 (pid {s['MainPID']}), {cam.get('fps')} fps, "
                                    f"camera ok={cam.get('ok')}")

    def c_power(self) -> None:
        rng = random.Random(int(os.environ.get("VM_CHECK_SEED", time.time())))
        committed: list[int] = []
        per_cut: list[str] = []
        sent: list[str] = []
        for i in range(self.cuts):
            g = self.guest
            kid0 = g.ok("sha256sum /etc/facegate/signing.key").split()[0]
            msg, p = self.command()
            self.send(msg)
            wait(lambda g=g: (g.status().get("state") or {}).get("state") not in (None, "idle"), 120,
                 "the session to start")
            self.broker.stop()
            # every other cut waits until the session's result waits in the outbox; the
            # others fall at a random moment (often mid-session under TCG: no result yet)
            wait_result = i % 2 == 0
            delay = rng.uniform(0, 5 if wait_result else 40)
            t = time.monotonic()
            last = depth = 0
            while True:
                st = g.status()
                last = max(last, int(st.get("last_seq") or 0))
                depth = max(depth, int((st.get("health") or {}).get("outbox_depth") or 0))
                if wait_result and depth == 0 and time.monotonic() - t < 300:
                    continue
                if wait_result and depth and delay > 0:
                    time.sleep(delay)
                if not wait_result and time.monotonic() - t < delay:
                    continue
                break
            delay = time.monotonic() - t  # what the report says: broker stopped to power cut
            g.kill()
            committed.append(last)
            self.broker.start()
            t = time.monotonic()
            g = self.boot()
            self.wait_active(g)
            seq_max = max(committed)
            wait(lambda m=seq_max: max([r["seq"] for r in self.results()] or [0]) >= m, 300,
                 f"results up to seq {seq_max} delivered")
            st = wait(lambda g=g: (lambda d: d if (d.get("health") or {}).get("outbox_depth") == 0 else None)(g.status()),
                      300, "outbox empty")
            integ = g.ok("python3 -c \"import sqlite3; print(sqlite3.connect('file:/var/lib/facegate/outbox.sqlite"
                         "?mode=ro', uri=True).execute('pragma integrity_check').fetchone()[0])\"").strip()
            kid1 = g.ok("sha256sum /etc/facegate/signing.key").split()[0]
            if integ != "ok" or kid0 != kid1:
                raise CheckError(f"cut {i + 1}: outbox integrity {integ!r}, key {'same' if kid0 == kid1 else 'CHANGED'}")
            per_cut.append(f"{delay:.0f} s, {depth} waiting")
            sent.append(p["request_id"])
            print(f"    cut {i + 1}: killed {delay:.1f} s after the broker stopped (last seq seen {last}); "
                  f"rebooted, delivered up to seq {st.get('last_seq')} in {time.monotonic() - t:.0f} s", flush=True)
        seqs = [r["seq"] for r in self.results()]
        n, lost, dups = delivery(seqs)
        answered = {r["request_id"] for r in self.results()}
        unanswered = [rid[:8] for rid in sent if rid not in answered]
        self.figures["power_cuts"] = f"{self.cuts} lost={lost} duplicates={dups}"
        if lost or dups:
            raise CheckError(f"{n} results over {self.cuts} cuts: lost {lost}, duplicates {dups} (seqs {seqs})")
        self.report("power", True, f"{self.cuts} cuts ({', '.join(per_cut)}): {n} results, seq 1..{max(seqs)} each "
                                   "delivered once, outbox integrity ok, key unchanged; commands whose session the cut "
                                   f"interrupted before its result was written (no answer, a backend retries): "
                                   f"{len(unanswered)}")

    def c_clock(self) -> None:
        """Booted a day behind, then a year ahead (qemu's RTC; no NTP client in the image).

        Every command here has the same lifetime as the run's others, so each one's exp lies
        above every earlier one's, as a backend's commands do. (Run 2026-12-07 with a 60 s
        lifetime here: the boot a year ahead purged the 300 s command sent minutes before,
        raising the replay floor above the new command's exp, and the daemon rightly left it
        unanswered as `replay_floor` — docs/contract.md#clock — while this check waited for
        `expired`.)"""
        done = []
        for name, days in (("behind", -1), ("ahead", 365)):
            self.guest.poweroff()
            base = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S")
            g = self.boot(rtc=base)
            self.wait_active(g)
            wait(lambda g=g: (g.status().get("broker") or {}).get("connected"), 180, "broker connected")
            guest_now = float(g.ok("date +%s").strip())
            sync = g.ok("timedatectl show -p NTPSynchronized --value").strip()
            st = wait(lambda g=g: (lambda d: d if "clock_synchronized" in (d.get("health") or {}) else None)(g.status()),
                      60, "clock_synchronized in health")
            cs = st["health"]["clock_synchronized"]
            if cs is not False:
                raise CheckError(f"clock {name}: clock_synchronized is {cs!r} (timedatectl NTPSynchronized={sync})")
            msg, p = self.command()
            self.send(msg)
            r = self.wait_result(p["request_id"], 300)
            want = "not_yet_valid" if days < 0 else "expired"
            if r["decision"] != "rejected" or r.get("reason") != want:
                raise CheckError(f"clock {name}: a fresh command decided {r['decision']} / {r.get('reason')}, want "
                                 f"rejected / {want}")
            if days > 0:  # the purge drops its record while the clock stands ahead: the floor rises
                time.sleep(12)
            g.ok(f"date -u -s @{time.time():.0f} >/dev/null")
            n_before = len(self.results())
            refused0 = self.refused(g)
            self.send(msg)  # the same bytes again, clock now right
            msg2, p2 = self.command()
            self.send(msg2)
            r2 = self.wait_result(p2["request_id"], 300)
            n0 = sum(refused0.values())
            refused = wait(lambda g=g, n0=n0: (lambda c: c if sum(c.values()) > n0 else None)(self.refused(g)), 60,
                           "the resent command counted as seen before (health ignored)")
            refused = {k: v - refused0.get(k, 0) for k, v in refused.items() if v > refused0.get(k, 0)}
            again = [r for r in self.results()[n_before:] if r["request_id"] == p["request_id"]]
            if again or r2["decision"] != "match":
                raise CheckError(f"clock {name} set right: the first command answered again {len(again)}x, a fresh "
                                 f"one decided {r2['decision']} / {r2.get('reason')}")
            done.append(f"{name} (guest {guest_now - time.time():+.0f} s): {want}, clock_synchronized=false; set "
                        f"right: the same bytes unanswered ({', '.join(f'{k} {v}' for k, v in refused.items())}), "
                        "a fresh command match")
        self.figures["clock_checks"] = str(len(done))
        self.report("clock", True, "; ".join(done))

    def refused(self, g: Guest) -> dict[str, int]:
        """This boot's health `ignored` counts of commands refused as seen before."""
        return refused_counts(g.status().get("health") or {})

    def main(self) -> int:
        self.broker.start()
        try:
            self.probe_accel()
            self.check("boot", self.c_boot)
            if "boot" in self.failed:
                return self.summary()
            for name in CHECKS[1:]:
                self.check(name, getattr(self, f"c_{name}"))
                if self.guest is None or self.guest.proc.poll() is not None:
                    try:
                        self.boot()
                        self.wait_active(self.guest)
                    except (CheckError, TimeoutError, RuntimeError) as exc:
                        self.report("reboot", False, str(exc))
                        break
            if self.guest:
                self.guest.poweroff()
        finally:
            if self.guest:
                self.guest.kill()
            self.broker.close()
        return self.summary()

    def summary(self) -> int:
        f = self.figures
        took = time.time() - self.t0
        figs = (f"boot={f.get('boot', '-')} s, ready={f.get('ready', '-')} s, "
                f"watchdog_restart={f.get('watchdog_restart', '-')} s, power_cuts={f.get('power_cuts', '-')}, "
                f"clock_checks={f.get('clock_checks', '-')}, exposure={f.get('exposure', '-')}")
        word = "FAIL" if self.failed else "PASS"
        failed = f" failed: {' '.join(self.failed)};" if self.failed else ""
        print(f"vm-check: {word} ({figs};{failed} {took:.0f} s) accel={self.accel} arch={self.arch}", flush=True)
        return 1 if self.failed else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("work", type=Path)
    p.add_argument("root", type=Path)
    r = sub.add_parser("run")
    r.add_argument("work", type=Path)
    r.add_argument("--power-cuts", type=int, default=4)
    r.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    r.add_argument("--only", default="")
    r.add_argument("--t0", type=float, default=time.time())
    r.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.work, a.root)
        return 0
    only = {x for x in a.only.split(",") if x}
    unknown = only - set(CHECKS)
    if unknown:
        ap.error(f"--only: unknown check(s) {', '.join(sorted(unknown))}; known: {', '.join(CHECKS)}")
    return Run(a.work, a.accel, a.power_cuts, only, a.t0, a.arch).main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
