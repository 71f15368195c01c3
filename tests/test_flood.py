"""Hostile volume against the real daemon (`facegate run` subprocess) on a real Mosquitto:
one oversized message (issue 15 finding 3) and a flood of unsigned junk with real commands
interleaved (finding 4)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker import Backend, Mosquitto
from daemon_helpers import ROOT, DaemonProc, command, results, wait_online, wait_result


def vm_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "broker").mkdir()
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


def test_an_oversized_message_never_reaches_the_daemons_memory(tmp_path, broker, faces, backend_key, model_dir):
    """Before: paho read the whole packet, copied it into a 256-slot queue and only then was
    its size checked (one 250 MiB message: 158 -> 938 MB peak). Now CONNECT tells the
    broker the largest packet the daemon takes (max_command_bytes + 64 KiB), and the broker
    drops a larger one for it."""
    d = DaemonProc(tmp_path, broker, faces, backend_key).start()
    be = Backend(broker)
    try:
        wait_online(be)
        msg, warm = command(backend_key, faces["ref"])  # a first session: buffers and caches warm
        be.publish(f"{ROOT}/cmd/verify", msg)
        wait_result(be, d.public, warm["request_id"])
        pid = d.proc.pid
        before = vm_kib(pid)
        reset_peak(pid)
        be.publish(f"{ROOT}/cmd/verify", os.urandom(64 * 2**20))  # 64 MiB, unsigned
        msg, cmd = command(backend_key, faces["ref"])  # then a real one: answered, after the big one
        be.publish(f"{ROOT}/cmd/verify", msg)
        r = wait_result(be, d.public, cmd["request_id"])
        after = vm_kib(pid)
        peak_growth_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
        held_mb = (after["VmRSS"] - before["VmRSS"]) / 1024
        print(f"oversized 64 MiB: daemon RSS {before['VmRSS'] / 1024:.0f} MB before, peak +{peak_growth_mb:.1f} MB, "
              f"held +{held_mb:.1f} MB after; then {r['decision']}")
        assert r["decision"] == "match"
        assert peak_growth_mb < 24 and held_mb < 16, (before, after)
        assert d.proc.poll() is None
        assert "too_large" not in d.status()["health"]["ignored"]  # the broker never sent it
        assert [x["request_id"] for x in results(be, d.public)] == [warm["request_id"], cmd["request_id"]]
    finally:
        be.close()
        d.stop()


def test_the_authentic_command_queue_is_bounded_in_bytes_and_waits_instead_of_dropping():
    import threading
    import time

    from facegate.daemon import InboundQueue

    q, stop = InboundQueue(max_items=8, max_bytes=1000), threading.Event()
    assert q.put("a", 600, stop) and q.bytes == 600
    done = []
    t = threading.Thread(target=lambda: done.append(q.put("b", 600, stop)))  # 1200 > 1000: waits
    t.start()
    time.sleep(0.3)
    assert not done and q.bytes == 600
    assert q.get(1.0) == "a"  # room again: "b" goes in, nothing was dropped
    t.join(2)
    assert done == [True] and q.get(1.0) == "b" and q.bytes == 0
    assert q.put("huge", 5000, stop) and q.get(1.0) == "huge"  # one larger than the bound still fits alone
    assert q.put("c", 900, stop)
    stop.set()
    assert q.put("d", 900, stop) is False  # stopping: the caller is told, it never hangs
    assert q.get(0.1) == "c" and q.get(0.1) is None
