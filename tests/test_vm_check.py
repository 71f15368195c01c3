"""scripts/vm-check.sh's pure parts (it boots a VM for real; that run is not part of this
suite): shellcheck-clean, and the host helper's parsing and counting on fixed inputs."""
from __future__ import annotations

import base64
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "vm-check.sh"


def _helper():
    spec = importlib.util.spec_from_file_location("vm_check", REPO / "scripts" / "vm_check.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vm_check"] = mod
    spec.loader.exec_module(mod)
    return mod


vm = _helper()


def test_vm_check_sh_is_shellcheck_clean():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed (scripts/dev.sh installs it)")
    # -x: follows the sourced scripts/lib/root.sh (shared with scripts/arm64-check.sh)
    r = subprocess.run([exe, "-x", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([exe, str(REPO / "scripts" / "lib" / "root.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_help_needs_no_root():
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--power-cuts" in r.stdout and "--arch" in r.stdout


def test_qemu_machine_per_arch():
    assert vm.qemu_machine("arm64", "tcg")[:5] == ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72"]
    assert vm.qemu_machine("x86_64", "tcg") == ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max"]
    assert vm.qemu_machine("x86_64", "kvm") == ["qemu-system-x86_64", "-accel", "kvm"]


def test_set_toml_replaces_only_in_its_section():
    text = 'device_id = "a"\n[camera]\npath = ""\nsource = "file"\n[mqtt]\nhost = "localhost"\nport = 1883\n'
    out = vm.set_toml(text, "mqtt", "port", "8883")
    assert 'port = 8883' in out and "port = 1883" not in out
    out = vm.set_toml(out, "", "device_id", '"kiosk-vm"')
    assert out.splitlines()[0] == 'device_id = "kiosk-vm"'
    out = vm.set_toml(out, "camera", "host", '"x"')  # a key new to its section goes into it
    assert out.index('host = "x"') < out.index("[mqtt]")
    out = vm.set_toml(out, "daemon", "liveness", '"none"')  # a missing section is added
    assert out.endswith('[daemon]\nliveness = "none"\n')


def test_exposure_figure():
    text = "NAME  DESCRIPTION  EXPOSURE\n...\n→ Overall exposure level for facegate.service: 1.5 OK :-)\n"
    assert vm.exposure(text) == 1.5
    assert vm.exposure("no such line") is None


def test_journal_biometric_finds_what_it_should_and_nothing_else():
    ref = bytes(range(256)) * 4
    clean = "Started facegate.service\nsession 3f2a decided match (similarity 0.73) in 4.1 s\nSTATUS=idle\n"
    assert vm.journal_biometric(clean, [ref]) == []
    assert vm.journal_biometric(clean + ref[:40].hex(), [ref])
    assert vm.journal_biometric(clean + base64.b64encode(ref[:60]).decode(), [ref])
    emb = "[" + ", ".join(f"{i / 100:.4f}" for i in range(-8, 120)) + "]"
    assert vm.journal_biometric(clean + emb, [ref]) == ["a list of 16 or more numbers"]
    assert vm.journal_biometric(clean + "A" * 300, []) == ["a run of 200+ base64 characters"]


def test_delivery_counts_gaps_and_repeats():
    assert vm.delivery([]) == (0, 0, 0)
    assert vm.delivery([1, 2, 3, 4]) == (4, 0, 0)
    assert vm.delivery([1, 2, 4]) == (3, 1, 0)
    assert vm.delivery([1, 2, 2, 3, 3, 3]) == (3, 0, 3)


def test_systemctl_show_parses_values_with_equals():
    s = vm.systemctl_show("MainPID=42\nStatusText=state=idle\nResult=success\n")
    assert s == {"MainPID": "42", "StatusText": "state=idle", "Result": "success"}


def test_refused_counts_are_the_seen_before_reasons_only():
    health = {"ignored": {"replay_floor": 1, "replayed_request_id": 2, "bad_signature": 5}, "outbox_depth": 0}
    assert vm.refused_counts(health) == {"replay_floor": 1, "replayed_request_id": 2}
    assert vm.refused_counts({}) == {}


def test_wait_agent_connects_again_when_the_socket_drops_during_boot(tmp_path):
    """qemu's agent socket dropped while a guest booted after a power cut (2026-12-07): the
    host connects again and waits for the agent's hello instead of ending the run."""
    import json
    import socket
    import threading

    path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(2)

    def serve():
        first, _ = srv.accept()
        first.close()  # the drop
        second, _ = srv.accept()
        second.recv(4096)
        second.sendall(json.dumps({"hello": "boot-2"}).encode() + b"\n")
        second.recv(4096)
        second.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    class Running:
        returncode = None

        def poll(self):
            return None

    g = object.__new__(vm.Guest)
    g.work, g.tag, g.sock_path, g.console = tmp_path, "t", path, tmp_path / "console.log"
    g.proc, g.sock, g.buf, g.slow = Running(), None, b"", 1.0
    import time

    g.t_start = time.monotonic()
    g.wait_agent(20)
    assert g.boot_id == "boot-2"
    g.sock.close()
    srv.close()


def test_agent_writes_a_long_reply_whole():
    """A virtio console port takes at most 32 KiB a write: the agent's reply of the whole
    journal was cut after the first write (the journal check timed out, 2026-12-07)."""
    spec = importlib.util.spec_from_file_location("vm_agent", REPO / "scripts" / "vm_agent.py")
    assert spec and spec.loader
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)

    class Port:  # takes at most 32 KiB per write, like virtio_console
        def __init__(self):
            self.got = b""

        def write(self, b):
            b = bytes(b[:32768])
            self.got += b
            return len(b)

    port = Port()
    data = b"x" * 200_000 + b"\n"
    agent.write_all(port, data)
    assert port.got == data
