"""Promises of README / docs/contract.md that no test exercised (issue 25), each against a
real Mosquitto and `facegate run` as a subprocess. Each docstring names the mutation it was
checked against by hand (applied, the test failed, restored)."""
from __future__ import annotations

import json
import signal
import time

import pytest

from broker import Backend, Mosquitto
from daemon_helpers import ROOT, DaemonProc, command, independent_verify, results, wait_online, wait_result
from facegate import signing
from facegate.outbox import Outbox
from facegate.vocab import Failure, Verdict


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


def _status_payloads(be: Backend) -> list[bytes]:
    return [m.payload for m in be.on(f"{ROOT}/status")]


def _ignored(d: DaemonProc, reason: str, at_least: int, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            n = d.status()["health"].get("ignored", {}).get(reason, 0)
        except (OSError, KeyError):
            n = 0
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def test_a_daemon_that_dies_is_announced_offline_by_its_last_will(tmp_path, broker, faces, backend_key, model_dir):
    """R/status: `offline` as the last will. Mutation: will_set removed from
    adapters/mqtt.py - fails (no offline after the SIGKILL)."""
    d = DaemonProc(tmp_path, broker, faces, backend_key).start()
    be = Backend(broker)
    try:
        wait_online(be)
        n = len(be.messages)
        d.stop(signal.SIGKILL)
        be.wait_for(lambda ms: [m for m in ms[n:] if m.topic == f"{ROOT}/status" and m.payload == b"offline"], 30)
        late = Backend(broker, user="dashboard", subscribe=f"{ROOT}/status")  # and it is retained
        try:
            late.wait_for(lambda ms: [m for m in ms if m.retain and m.payload == b"offline"], 10)
        finally:
            late.close()
    finally:
        be.close()
        d.stop()


def test_sighup_loads_a_changed_trusted_key_and_drops_the_old_one(tmp_path, broker, faces, backend_key, model_dir):
    """mqtt.trusted_keys re-read on SIGHUP: a new backend key is trusted from then on and
    the removed one is not (the old test reloaded an unchanged key). Mutation: the reload
    keeping the gate's old key list (daemon.py's reload not replacing `trusted`) - fails."""
    d = DaemonProc(tmp_path, broker, faces, backend_key).start()
    be = Backend(broker)
    new_key = signing.SigningKey.generate()
    try:
        wait_online(be)
        msg, _ = command(new_key, faces["stranger"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        assert _ignored(d, "unknown_key", 1) >= 1  # not trusted yet
        d.cfg.write_text(d.cfg.read_text().replace(backend_key.public.hex(), new_key.public.hex()))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reloaded: 1 trusted key" not in d.logtext():
            assert time.monotonic() < deadline, d.logtext()[-2000:]
            time.sleep(0.1)
        msg, cmd = command(new_key, faces["stranger"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        assert wait_result(be, d.public, cmd["request_id"])["decision"] == Verdict.NO_MATCH
        before = _ignored(d, "unknown_key", 0)
        msg, old_cmd = command(backend_key, faces["stranger"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        assert _ignored(d, "unknown_key", before + 1) == before + 1  # the old key is out
        assert not [r for r in results(be, d.public) if r["request_id"] == old_cmd["request_id"]]
    finally:
        be.close()
        d.stop()


def test_a_camera_that_never_delivers_answers_camera_unavailable(tmp_path, broker, faces, backend_key, model_dir):
    """`error` / `camera_unavailable` if the camera never delivered (instead of a command
    waiting forever). Mutation: _serve() without its `if not self.ready` answer - fails
    (the session runs on a camera that never delivered and answers something else)."""
    d = DaemonProc(tmp_path, broker, {**faces, "video": tmp_path / "no-such-camera.webm"}, backend_key).start()
    be = Backend(broker)
    try:
        wait_online(be)
        msg, cmd = command(backend_key, faces["ref"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        r = wait_result(be, d.public, cmd["request_id"], timeout_s=60)
        assert (r["decision"], r["reason"]) == (Verdict.ERROR, Failure.CAMERA_UNAVAILABLE), (r, d.logtext()[-2000:])
    finally:
        be.close()
        d.stop()


def test_commands_still_queued_at_a_clean_stop_are_answered_shutting_down(tmp_path, broker, faces, backend_key,
                                                                          model_dir):
    """`shutting_down` for commands still queued at a clean stop: each of them gets its one
    answer before the process exits. Mutation: _shutdown() not answering the queue - fails
    (the queued commands are never answered)."""
    d = DaemonProc(tmp_path, broker, faces, backend_key).start()
    be = Backend(broker)
    try:
        wait_online(be)
        n = len(be.messages)
        cmds = []
        for _ in range(4):  # one runs, three wait (max_pending 4)
            msg, cmd = command(backend_key, faces["ref"])
            be.publish(f"{ROOT}/cmd/verify", msg)
            cmds.append(cmd["request_id"])
        be.wait_for(lambda ms: [m for m in ms[n:] if m.topic == f"{ROOT}/state"
                                and json.loads(m.payload)["state"] == "waiting_face"], 60)
        # all four taken by the daemon (one running, three queued), not still on their way
        deadline = time.monotonic() + 60
        while d.logtext().count("command accepted (request ") < 4:
            assert time.monotonic() < deadline, d.logtext()[-2000:]
            time.sleep(0.05)
        assert d.stop(signal.SIGTERM) == 0
        # every one answered: published before the exit, or in the outbox for the next start
        ob = Outbox(d.state / "outbox.sqlite")
        waiting = [independent_verify(p.message, d.public, p.topic) for p in ob.pending(100)]
        ob.close()
        got = {r["request_id"]: r for r in [*results(be, d.public), *waiting] if r["request_id"] in cmds}
        assert set(got) == set(cmds), (len(got), d.logtext()[-2000:])
        assert len(results(be, d.public)) == len({r["seq"] for r in results(be, d.public)})
        late = [r for r in got.values() if (r["decision"], r["reason"]) == (Verdict.ERROR, Failure.SHUTTING_DOWN)]
        assert late, [(r["decision"], r["reason"]) for r in got.values()]
        assert be.on(f"{ROOT}/status")[-1].payload == b"stopped"
    finally:
        be.close()
        d.stop()


def test_a_publish_the_broker_refuses_is_counted_not_retried(tmp_path, broker, faces, backend_key, model_dir):
    """A publish the broker refuses (PUBACK "not authorized": the ACL's Home Assistant
    pattern does not cover another ha_prefix) is counted in health as `publish_refused`,
    and the daemon goes on. Mutation: the publisher not counting refusals - fails."""
    d = DaemonProc(tmp_path, broker, faces, backend_key, extra='ha_prefix = "elsewhere"\n').start()
    be = Backend(broker)
    try:
        wait_online(be)
        deadline = time.monotonic() + 30
        while True:
            try:
                refused = d.status()["health"].get("publish_refused", 0)
            except (OSError, KeyError):
                refused = 0
            if refused > 0:
                break
            assert time.monotonic() < deadline, d.logtext()[-2000:]
            time.sleep(0.2)
        health = be.wait_for(lambda ms: [json.loads(m.payload) for m in ms if m.topic == f"{ROOT}/health"
                                         and json.loads(m.payload).get("publish_refused", 0) > 0], 20)
        assert health[-1]["publish_refused"] >= 1
        msg, cmd = command(backend_key, faces["stranger"])  # and it still answers
        be.publish(f"{ROOT}/cmd/verify", msg)
        assert wait_result(be, d.public, cmd["request_id"])["decision"] == Verdict.NO_MATCH
    finally:
        be.close()
        d.stop()
