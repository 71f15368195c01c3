"""sd_notify over a real AF_UNIX datagram socket owned by the test; the unit file checked
by systemd-analyze (verify, and security with an exposure threshold)."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from facegate.adapters.systemd import SystemdNotifier

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "facegate.service"
MAX_EXPOSURE = 3.0


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def _recv(sock) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_arrive_on_a_path_socket(listener):
    sock, path = listener
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("models loaded, 15.0 fps")
    assert _recv(sock) == ["READY=1", "STATUS=models loaded, 15.0 fps"]
    assert n.status("camera lost:\nreopening")
    assert _recv(sock) == ["STATUS=camera lost: reopening"]  # one line, whatever the text
    assert n.watchdog()
    assert _recv(sock) == ["WATCHDOG=1"]
    assert n.extend_timeout(2.5)
    assert _recv(sock) == ["EXTEND_TIMEOUT_USEC=2500000"]
    assert n.reloading()
    msg = _recv(sock)
    assert msg[0] == "RELOADING=1" and re.fullmatch(r"MONOTONIC_USEC=\d+", msg[1])
    assert n.stopping()
    assert _recv(sock) == ["STOPPING=1"]
    n.close()


def test_abstract_socket():
    name = f"facegate-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        n = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _recv(sock) == ["READY=1"]
    finally:
        sock.close()


def test_no_socket_is_a_no_op():
    n = SystemdNotifier({})
    assert not n.enabled and n.watchdog_interval_s is None
    assert not n.ready() and not n.status("x") and not n.watchdog() and not n.stopping()
    assert not SystemdNotifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_vanished_socket_does_not_raise(tmp_path):
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled and not n.ready()


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 15.0
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert SystemdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval_s is None
    assert SystemdNotifier({"WATCHDOG_USEC": "soon"}).watchdog_interval_s is None


def test_keepalive_pings_only_with_progress_and_at_the_interval(listener):
    sock, path = listener
    now = [100.0]
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}, clock=lambda: now[0])
    assert n.watchdog_interval_s == 5.0
    assert n.keepalive(progress=True)  # first ping at once
    assert _recv(sock) == ["WATCHDOG=1"]
    now[0] += 4.9
    assert not n.keepalive(progress=True)  # too early
    now[0] += 0.2
    assert not n.keepalive(progress=False)  # due, but the pipeline is stuck: no ping
    assert n.keepalive(progress=True)
    assert _recv(sock) == ["WATCHDOG=1"]
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)  # nothing else was sent


# -- the unit file ---------------------------------------------------------------------
def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        msg = "systemd-analyze is not installed"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _checkable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart binary exists: systemd-analyze verify refuses a
    unit whose command is missing, and /opt/facegate/venv is not installed here. The copy
    points ExecStart at a stub script in tmp_path; every other line is the real unit."""
    stub = tmp_path / "facegate"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    real = "ExecStart=/opt/facegate/venv/bin/facegate run --config /etc/facegate/facegate.toml"
    assert real in text.splitlines()
    copy = tmp_path / "facegate.service"
    copy.write_text(text.replace(real, f"ExecStart={stub} run --config /etc/facegate/facegate.toml"))
    return copy


def test_unit_declares_what_the_daemon_relies_on():
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines()
             if "=" in ln and not ln.startswith("#")}
    assert lines["Type"] == "notify"
    assert lines["Restart"] == "on-failure"
    assert lines["LoadCredential"] == "signing.key:/etc/facegate/signing.key"
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert lines["ProtectSystem"] == "strict" and lines["NoNewPrivileges"] == "yes"
    assert lines["DevicePolicy"] == "closed"
    assert set(lines["SupplementaryGroups"].split()) == {"video", "gpio"}
    assert int(lines["WatchdogSec"]) > 0
    # pulls in and waits for time-sync.target (issue 15: After= alone orders, never waits)
    assert "time-sync.target" in lines["Wants"].split() and "time-sync.target" in lines["After"].split()


def test_unit_passes_systemd_analyze_verify(tmp_path):
    exe = _analyze()
    unit = _checkable_unit(tmp_path)
    r = subprocess.run([exe, "verify", "--man=no", "--generators=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    own = [ln for ln in (r.stdout + r.stderr).splitlines() if unit.name in ln or str(tmp_path) in ln]
    assert r.returncode == 0, r.stdout + r.stderr
    assert not own, own  # no warning about our unit at all


def test_unit_security_exposure_at_most_3(tmp_path):
    exe = _analyze()
    unit = _checkable_unit(tmp_path)
    r = subprocess.run([exe, "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}",
                        "--no-pager", str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr
