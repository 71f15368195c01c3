"""Nothing lost: a broker killed mid-stream, a daemon killed with SIGKILL, a clean stop,
a key rotation. Real Mosquitto (persistent, so the backend's own session survives the
broker restart), `facegate run` subprocesses, results checked with the independent
verifier."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from broker import Backend, Mosquitto
from daemon_helpers import ROOT, DaemonProc, command, independent_verify, results, wait_online


def quick_daemon(tmp_path, broker, faces, backend_key, realtime: bool = False) -> DaemonProc:
    """No liveness, two fused frames, room for a burst of commands: fast sessions
    (realtime: the video plays at its own 15 fps, so a session lasts a fraction of a second)."""
    d = DaemonProc(tmp_path, broker, faces, backend_key)
    d.cfg.write_text(d.cfg.read_text().replace('liveness = "passive"', 'liveness = "none"\nmax_pending = 20')
                     .replace("realtime = false", f"realtime = {str(realtime).lower()}")
                     + '[verify]\nfusion_frames = 4\n')
    return d


def first_deliveries(rs: list[dict]) -> list[int]:
    """seq of each result in the order it was first seen (duplicates dropped)."""
    seen, out = set(), []
    for r in rs:
        if r["seq"] not in seen:
            seen.add(r["seq"])
            out.append(r["seq"])
    return out


def wait_status(d: DaemonProc, pred, timeout_s=30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            st = d.status()
            if pred(st):
                return st
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"status never matched; last log:\n{d.logtext()[-1500:]}")


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "broker").mkdir()
    b = Mosquitto(tmp_path / "broker", persist=True).start()
    yield b
    b.stop()


def test_broker_killed_mid_stream_loses_nothing_and_keeps_seq_order(tmp_path, broker, faces, backend_key, model_dir):
    d = quick_daemon(tmp_path, broker, faces, backend_key, realtime=True).start()
    be = Backend(broker, persistent=True)
    try:
        wait_online(be)
        sent = []
        for i in range(8):
            msg, cmd = command(backend_key, faces["ref"] if i % 2 == 0 else faces["stranger"])
            be.publish(f"{ROOT}/cmd/verify", msg)
            sent.append(cmd["request_id"])
        be.wait_for(lambda _: results(be, d.public), 60)  # the first result is through ...
        # ... then the broker goes down mid-stream. SIGTERM, not SIGKILL: mosquitto then saves
        # the backend's session with what it still queues for it, so anything missing at the
        # end was lost by the daemon, not inside the broker (a SIGKILLed broker forgets
        # messages it already acknowledged, which no publisher can redeliver).
        broker.stop()
        time.sleep(2.0)
        during = d.status()
        broker.start()
        rs = be.wait_for(lambda _: (lambda r: r if {x["request_id"] for x in r} >= set(sent) else None)(
            results(be, d.public)), 120)
        order = first_deliveries(rs)
        assert order == sorted(order), f"a result arrived out of seq order: {order}"
        assert len(order) == len(set(order)) == 8, ([(r["seq"], r["decision"], r["reason"], r["request_id"][:6]) for r in rs], d.logtext()[-3000:])
        for r in rs:  # duplicates (at-least-once) carry the same seq and the same content
            assert r == next(x for x in rs if x["seq"] == r["seq"])
        assert {r["decision"] for r in rs} == {"match", "no_match"}
        st = wait_status(d, lambda s: s["health"]["outbox_depth"] == 0)
        assert st["broker"]["connected"]
        assert during["health"]["sessions"] < 8 or during["health"]["outbox_depth"] > 0  # the outage mattered
    finally:
        be.close()
        d.stop()


def test_kill9_keeps_the_outbox_and_seq_increasing(tmp_path, broker, faces, backend_key, model_dir):
    d = quick_daemon(tmp_path, broker, faces, backend_key).start()
    be = Backend(broker, persistent=True)
    try:
        wait_online(be)
        msg, warm = command(backend_key, faces["ref"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        be.wait_for(lambda _: results(be, d.public), 60)
        before = max(r["seq"] for r in results(be, d.public))
        ids = []
        for _ in range(3):
            msg, cmd = command(backend_key, faces["ref"])
            be.publish(f"{ROOT}/cmd/verify", msg)
            ids.append(cmd["request_id"])
        wait_status(d, lambda s: s["health"]["sessions"] >= 2)
        broker.stop()  # results now pile up in the outbox
        wait_status(d, lambda s: s["health"]["sessions"] >= 4 and s["state"]["state"] == "idle", 60)
        time.sleep(1.5)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        db = sqlite3.connect(d.state / "outbox.sqlite")
        stored = db.execute("SELECT DISTINCT seq FROM results WHERE acked IS NULL ORDER BY seq").fetchall()
        db.close()
        stored = [s for (s,) in stored]  # what the outbox still held when the daemon died
        assert stored and stored == list(range(stored[0], before + 4)), (before, stored)
        broker.start()
        d.start()  # same state dir: the outbox and the seq counter survive
        rs = be.wait_for(lambda _: (lambda r: r if {x["request_id"] for x in r} >= set(ids) else None)(
            results(be, d.public)), 90)
        assert sorted(first_deliveries(rs)) == first_deliveries(rs)
        msg, after = command(backend_key, faces["stranger"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        last = be.wait_for(lambda _: [r for r in results(be, d.public) if r["request_id"] == after["request_id"]], 90)
        earlier = [r["seq"] for r in results(be, d.public) if r["request_id"] != after["request_id"]]
        assert last[0]["seq"] > max(earlier) >= before + 3
        assert len({r["boot"] for r in results(be, d.public)}) == 2  # two process starts
    finally:
        be.close()
        d.stop()


def test_clean_stop_publishes_stopped_and_rotation_republishes_attest(tmp_path, broker, faces, backend_key, model_dir):
    d = DaemonProc(tmp_path, broker, faces, backend_key).start()
    be = Backend(broker)
    try:
        wait_online(be)
        be.wait_for(lambda ms: [m for m in ms if m.topic == f"{ROOT}/attest"])
        old = d.public
        p = subprocess.run([sys.executable, "-m", "facegate.cli", "keys", "rotate", "--config", str(d.cfg), "--json"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        new = bytes.fromhex(json.loads(p.stdout)["public_key"])
        assert new != old and "reload" in p.stderr
        attest = be.wait_for(lambda ms: [m for m in ms if m.topic == f"{ROOT}/attest"
                                         and _verifies(m.payload, new, f"{ROOT}/attest")], 20)
        assert independent_verify(attest[0].payload, new, f"{ROOT}/attest")["pub"] == new
        msg, cmd = command(backend_key, faces["ref"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        r = be.wait_for(lambda _: results(be, new), 60)  # results are now signed with the new key
        assert r[0]["request_id"] == cmd["request_id"]
        assert d.stop(signal.SIGTERM) == 0
        be.wait_for(lambda ms: [m for m in ms if m.topic == f"{ROOT}/status" and m.payload == b"stopped"], 10)
        assert d.status()["pid"] and not (d.state / "status.json.tmp").exists()
    finally:
        be.close()
        d.stop()


def _verifies(payload: bytes, public: bytes, topic: str) -> bool:
    try:
        independent_verify(payload, public, topic)
        return True
    except Exception:
        return False


def test_client_certificate_is_presented_when_the_broker_requires_one(tmp_path, faces, backend_key, model_dir):
    (tmp_path / "broker").mkdir()
    b = Mosquitto(tmp_path / "broker", client_certs=True).start()
    (tmp_path / "a").mkdir()
    with_cert = DaemonProc(tmp_path / "a", b, faces, backend_key)
    with_cert.cfg.write_text(with_cert.cfg.read_text().replace(
        "tls = true\n", f'tls = true\ncert_file = "{b.tls["client_cert"]}"\nkey_file = "{b.tls["client_key"]}"\n'))
    (tmp_path / "b").mkdir()
    without = DaemonProc(tmp_path / "b", b, faces, backend_key)
    try:
        with_cert.start()
        without.start()
        st = wait_status(with_cert, lambda s: s["broker"]["connected"], 60)
        assert st["broker"]["connected"]
        bad = wait_status(without, lambda s: s["health"]["uptime_s"] > 3, 60)
        assert not bad["broker"]["connected"]  # the broker refuses a TLS client without a certificate
    finally:
        with_cert.stop()
        without.stop()
        b.stop()


@pytest.mark.parametrize("redeliver_s", [60, 0])
def test_a_result_a_crashed_broker_forgot_is_published_again(tmp_path, faces, backend_key, model_dir, redeliver_s):
    """Mosquitto saves its sessions every autosave_interval (here an hour) and on SIGTERM;
    SIGKILLed, it forgets a result it acknowledged and queued for an offline backend. The
    daemon publishes it again after the reconnect (mqtt.redeliver_s); with 0 it is gone,
    which shows that the broker really lost it."""
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", persist=True, autosave_s=3600).start()
    d = quick_daemon(tmp_path, broker, faces, backend_key)
    d.cfg.write_text(d.cfg.read_text().replace("keepalive_s = 5\n", f"keepalive_s = 5\nredeliver_s = {redeliver_s}\n"))
    d.start()
    backend_id = f"backend-{time.monotonic_ns()}"
    be = Backend(broker, persistent=True, client_id=backend_id)
    kiosk = None
    try:
        wait_online(be)
        be.close()  # the backend goes away; the broker queues for its session ...
        broker.stop()  # ... which SIGTERM saves to disk
        broker.start()
        kiosk = Backend(broker, subscribe=f"{ROOT}/status")
        wait_online(kiosk)
        wait_status(d, lambda s: s["broker"]["connected"], 30)
        msg, cmd = command(backend_key, faces["ref"])
        kiosk.publish(f"{ROOT}/cmd/verify", msg)
        wait_status(d, lambda s: s["last_seq"] >= 1 and s["health"]["outbox_depth"] == 0, 60)  # PUBACKed
        broker.stop(kill=True)  # the queued result was never saved
        broker.start()
        wait_status(d, lambda s: s["broker"]["connected"], 30)
        be = Backend(broker, persistent=True, client_id=backend_id)
        wait_online(be)
        if redeliver_s:
            r = be.wait_for(lambda _: results(be, d.public), 30)
            assert [x["request_id"] for x in r] == [cmd["request_id"]] and r[0]["seq"] == 1
        else:
            time.sleep(3.0)
            assert results(be, d.public) == []
    finally:
        be.close()
        if kiosk:
            kiosk.close()
        d.stop()
        broker.stop()


def test_the_test_broker_survives_a_password_reload_right_after_it_starts(tmp_path):
    """The harness itself: Mosquitto opens its listener before it installs its signal
    handlers, and add_user() reloads the password file with SIGHUP, whose default action
    ends the process. Under load one start in ~20 died that way and the daemon under test
    found no broker (soak: 'cannot reach 127.0.0.1:…' for 60 s). start() now returns only
    once SIGHUP is caught."""
    for i in range(15):
        d = tmp_path / f"b{i}"
        d.mkdir()
        b = Mosquitto(d).start()
        try:
            b.add_user(f"kiosk-{i}")  # SIGHUP at once
            assert b.proc is not None and b.proc.poll() is None, (b.proc and b.proc.returncode,
                                                                   (d / "mosquitto.log").read_text())
        finally:
            b.stop()
