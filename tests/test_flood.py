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
    # no broker-wide packet limit (the recipe's max_packet_size would refuse the 64 MiB
    # publish itself): what is tested here is the limit the daemon states in its CONNECT
    b = Mosquitto(tmp_path / "broker", max_packet_bytes=0).start()
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
        assert "too_large" not in d.status()["health"].get("ignored", {})  # the broker never sent it
        assert [x["request_id"] for x in results(be, d.public)] == [warm["request_id"], cmd["request_id"]]
    finally:
        be.close()
        d.stop()


def test_the_authentic_command_queue_is_bounded_in_bytes_and_waits_instead_of_dropping():
    import threading
    import time

    from facegate.admission import InboundQueue

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


def state_bytes(d: Path) -> int:
    """Bytes the state dir takes on disk (status.json is rewritten in place, so it counts)."""
    return sum(p.stat().st_blocks * 512 for p in d.rglob("*") if p.is_file())


def junk(i: int, backend_key) -> tuple[bytes, dict]:
    """Unauthenticated input of several kinds, each with an MQTT 5 response topic and up to
    60 KiB of correlation data (what made every refusal expensive before)."""
    import cbor2

    from facegate import signing

    kind = i % 4
    if kind == 0:
        payload = os.urandom(1 + i % 64)
    elif kind == 1:
        payload = cbor2.dumps({"request_id": f"victim-{i}", "nonce": os.urandom(16)})
    elif kind == 2:  # the trusted key's kid, a signature that does not verify
        good = bytearray(signing.sign({"request_id": f"forged-{i}", "nonce": os.urandom(16)}, backend_key,
                                      f"{ROOT}/cmd/verify"))
        good[-5] ^= 0xFF
        payload = bytes(good)
    else:
        payload = b""
    return payload, {"ResponseTopic": f"facegate/v1/replies/backend/junk-{i % 7}", "CorrelationData": os.urandom(60 * 1024)}


def test_a_junk_flood_costs_no_disk_and_drops_no_real_command(tmp_path, broker, faces, backend_key, model_dir):
    """Before: every refusal was signed and stored with its correlation data (900 one-byte
    messages: a 44 MB outbox, a real command refused storage_full, another never answered
    because the 256-slot queue dropped it after paho had acknowledged it)."""
    import time

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    d = DaemonProc(tmp_path, broker, faces, backend_key)
    d.cfg.write_text(d.cfg.read_text().replace('liveness = "passive"', 'liveness = "none"\nmax_pending = 20'))
    d.start()
    be = Backend(broker)
    flooder = Backend(broker, subscribe="nothing/here")
    try:
        wait_online(be)
        msg, warm = command(backend_key, faces["ref"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        wait_result(be, d.public, warm["request_id"])
        time.sleep(1.5)
        before = state_bytes(d.state)
        flooder.wait_for(lambda _: flooder.client.is_connected(), 10)
        sent, infos, t0 = [], [], time.monotonic()
        n_junk = 2000
        for i in range(n_junk):
            payload, props = junk(i, backend_key)
            p = Properties(PacketTypes.PUBLISH)
            p.ResponseTopic, p.CorrelationData = props["ResponseTopic"], props["CorrelationData"]
            infos.append(flooder.client.publish(f"{ROOT}/cmd/verify", payload, qos=1, properties=p))
            if i % 250 == 125:  # a real command in the middle of the flood, from the same connection
                msg, cmd = command(backend_key, faces["ref"] if i % 500 == 125 else faces["stranger"])
                infos.append(flooder.client.publish(f"{ROOT}/cmd/verify", msg, qos=1))
                sent.append(cmd["request_id"])
        for info in infos:
            info.wait_for_publish(60)
        flood_s = time.monotonic() - t0
        got = be.wait_for(lambda _: (lambda r: r if {x["request_id"] for x in r} >= set(sent) else None)(
            results(be, d.public)), 120)
        st = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = d.status()["health"]
            if sum(st.get("ignored", {}).values()) >= n_junk:
                break
            time.sleep(0.2)
        time.sleep(2.0)  # a purge or two (health_interval_s = 1)
        after = state_bytes(d.state)
        ids = [r["request_id"] for r in results(be, d.public)]
        print(f"flood: {n_junk} junk messages in {flood_s:.1f} s ({n_junk / flood_s:.0f}/s) with {len(sent)} real "
              f"commands; state dir {before / 1024:.0f} -> {after / 1024:.0f} KiB; ignored {st.get('ignored')}")
        assert all(ids.count(r) == 1 for r in sent), ids  # every real command answered exactly once
        assert set(ids) == {warm["request_id"], *sent}  # and nothing else
        assert sum(st["ignored"].values()) == n_junk, st["ignored"]
        assert not [m for m in be.messages if m.topic.startswith("facegate/v1/replies/")]
        assert after - before < 512 * 1024, (before, after)
        assert d.proc.poll() is None and got
    finally:
        flooder.close()
        be.close()
        d.stop()
