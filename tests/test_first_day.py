"""Issue 23's first-day mistakes, each with the message that names its cause and fix:
backend paths relative to backend.toml, `backend config check`, one daemon per state dir,
`keys show` before a key exists, `status` in words, the MQTT adapter's reconnect cap and
password re-read, and a second serve worker under one name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from broker import Mosquitto, password
from facegate import status
from facegate.backend.config import load as load_backend
from facegate.config import MqttConfig
from facegate.outbox import StateDirBusy, lock_state_dir
from timeouts import timeout_s, wait_until


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facegate.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout_s(120), cwd=cwd)


# -- backend config ------------------------------------------------------------------------
def test_backend_paths_resolve_against_the_config_file_not_the_working_directory(tmp_path):
    """Run from elsewhere, `devices` silently opened a new empty registry in the cwd."""
    (tmp_path / "etc").mkdir()
    toml = tmp_path / "etc" / "backend.toml"
    toml.write_text('key_file = "backend.pem"\n[mqtt]\npassword_file = "backend.password"\nca_file = "/abs/ca.pem"\n'
                    '[store]\nsqlite = "registry.db"\n')
    cfg = load_backend(toml)
    assert cfg.key_file == str(tmp_path / "etc" / "backend.pem")
    assert cfg.store.sqlite == str(tmp_path / "etc" / "registry.db")
    assert cfg.mqtt.password_file == str(tmp_path / "etc" / "backend.password") and cfg.mqtt.ca_file == "/abs/ca.pem"
    # the registry made from one directory is the one seen from another
    (tmp_path / "elsewhere").mkdir()
    assert cli("keys", "init", "--path", tmp_path / "etc" / "backend.pem").returncode == 0
    key = cli("keys", "show", "--path", tmp_path / "etc" / "backend.pem").stdout
    (tmp_path / "k.key").write_text(key)
    enrol = cli("backend", "devices", "enrol", tmp_path / "k.key", "--device", "kiosk-7", "--config", "etc/backend.toml",
                cwd=tmp_path)
    assert enrol.returncode == 0, enrol.stderr
    seen = cli("backend", "devices", "--json", "--config", toml, cwd=tmp_path / "elsewhere")
    assert [d["device"] for d in json.loads(seen.stdout)] == ["kiosk-7"], seen.stderr
    assert not (tmp_path / "elsewhere" / "registry.db").exists()


def test_backend_config_check_reports_errors_by_line_and_missing_files_with_their_fix(tmp_path):
    toml = tmp_path / "backend.toml"
    toml.write_text('key_file = "backend.pem"\n[mqtt]\nhost = "b"\nprot = 8883\n[serve]\nworkers = 2\n')
    bad = cli("backend", "config", "check", toml)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [f"{toml}:4: mqtt.prot: unknown key (a misspelling, or in the wrong [section]? "
                                       "every key: docs/backend.md)",
                                       f"{toml}:6: serve.workers: unknown key (a misspelling, or in the wrong "
                                       "[section]? every key: docs/backend.md)"], bad.stderr
    toml.write_text('key_file = "backend.pem"\n[mqtt]\nhost = "b"\n')
    missing = cli("backend", "config", "check", toml)
    assert missing.returncode == 2
    assert f"key_file = {tmp_path / 'backend.pem'}: no such file (make it: facegate keys init --path" in missing.stderr
    cli("keys", "init", "--path", tmp_path / "backend.pem")
    ok = cli("backend", "config", "check", toml)
    assert ok.returncode == 0 and f"{toml}: ok (broker b:1883, store sqlite {tmp_path / 'facegate-backend.db'}" \
        in ok.stdout, ok.stdout + ok.stderr


# -- the terminal's CLI ----------------------------------------------------------------------
def test_keys_show_before_the_first_start_names_keys_init(tmp_path):
    cfg = tmp_path / "facegate.toml"
    cfg.write_text(f'device_id = "kiosk-7"\n[camera]\npath = "x.webm"\n[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    r = cli("keys", "show", "--config", cfg)
    assert r.returncode == 1 and f"make it with 'facegate keys init --config {cfg}'" in r.stderr, r.stderr
    assert "keys rotate" not in r.stderr
    assert cli("keys", "init", "--config", cfg).returncode == 0
    shown = cli("keys", "show", "--config", cfg)
    assert shown.returncode == 0 and "public_key" in shown.stdout


def test_a_terminal_key_is_enrolled_only_under_its_own_device(tmp_path):
    """kiosk-7's key enrolled as kiosk-8 was accepted silently."""
    cfg = tmp_path / "facegate.toml"
    cfg.write_text(f'device_id = "kiosk-7"\n[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    cli("keys", "init", "--config", cfg)
    shown = cli("keys", "show", "--config", cfg).stdout
    assert "device      kiosk-7" in shown
    (tmp_path / "kiosk-7.key").write_text(shown)
    toml = tmp_path / "backend.toml"
    toml.write_text("")
    wrong = cli("backend", "devices", "enrol", tmp_path / "kiosk-7.key", "--device", "kiosk-8", "--config", toml)
    assert wrong.returncode == 2 and "is the key of kiosk-7 (its 'device' line), not of kiosk-8" in wrong.stderr
    assert cli("backend", "devices", "enrol", tmp_path / "kiosk-7.key", "--config", toml).returncode == 0
    bare = tmp_path / "bare.key"  # the hex key alone: no device line to compare
    bare.write_text(shown.split("public_key")[1].split()[0])
    again = cli("backend", "devices", "enrol", bare, "--device", "kiosk-8", "--config", toml)
    assert again.returncode == 2 and "is kiosk-7's (active): a terminal's key belongs to one device" in again.stderr
    revoke = cli("backend", "devices", "revoke", "kiosk-7", "--config", toml)
    assert "(was active, now revoked)" in revoke.stdout, revoke.stdout


def test_status_says_times_in_words_and_shows_refused_publishes(tmp_path):
    cfg = tmp_path / "facegate.toml"
    state = tmp_path / "state"
    state.mkdir()
    cfg.write_text(f'device_id = "kiosk-7"\n[daemon]\nstate_dir = "{state}"\n')
    now = time.time()
    status.write(state, {"pid": os.getpid(), "device_id": "kiosk-7", "version": "0", "ts": now - 5,
                         "state": {"state": "idle", "step": None, "session": None},
                         "health": {"publish_refused": 3, "fps": 15.0, "ignored": {}},
                         "last_decision": {"decision": "match", "reason": None, "ts": now - 300},
                         "broker": {"enabled": True, "connected": True, "error": ""}, "camera": {"ok": True}})
    r = cli("status", "--config", cfg)
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()}
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(now - 5))
    assert lines["updated"].startswith(f"updated   {stamp}") and "s ago)" in lines["updated"], r.stdout
    assert "None" not in lines["last"] and "match at" in lines["last"] and "(5 min ago)" in lines["last"], r.stdout
    assert "3 publish(es) REFUSED by the broker" in lines["broker"] and "'kiosk-7'" in lines["broker"], r.stdout


def test_one_daemon_per_state_dir(tmp_path):
    """A second `facegate run` on one config kicked the first off the broker (one client id)
    and left `status` saying 'daemon NOT running'. The lock refuses it, naming the pid."""
    fd = lock_state_dir(tmp_path)
    try:
        with pytest.raises(StateDirBusy, match=f"another facegate daemon \\(pid {os.getpid()}\\) is running on state "
                                               f"dir {tmp_path}: stop it first"):
            lock_state_dir(tmp_path)
        # another process is refused too, and gets the lock once the holder is gone
        code = ("import sys; from facegate.outbox import lock_state_dir, StateDirBusy\n"
                "try: lock_state_dir(sys.argv[1])\nexcept StateDirBusy as e: print(e); sys.exit(3)")
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert other.returncode == 3 and f"pid {os.getpid()}" in other.stdout
    finally:
        os.close(fd)
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0


# -- the terminal's MQTT adapter -------------------------------------------------------------
def _publisher(broker: Mosquitto, user: str, pw_file: Path, **cfg):
    from facegate.adapters.mqtt import PahoPublisher

    m = MqttConfig(host="127.0.0.1", port=broker.port, tls=True, ca_file=str(broker.tls["ca"]), username=user,
                   password_file=str(pw_file), **cfg)
    p = PahoPublisher(m, f"t-{user}-{os.getpid()}", will=None, persistent=False)
    connected = threading.Event()
    p.start(lambda msg: None, connected.set, connected.clear)
    return p, connected


def test_a_corrected_password_file_is_used_at_the_next_attempt_without_a_restart(tmp_path):
    (tmp_path / "b").mkdir()
    b = Mosquitto(tmp_path / "b").start()
    b.add_user("kiosk-7")
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    p, connected = _publisher(b, "kiosk-7", pw)
    try:
        wait_until(lambda: "Not authorized" in p.last_error, 15, "a refused login")
        assert "(check mqtt.username and mqtt.password_file)" in p.last_error
        pw.write_text(password("kiosk-7") + "\n")  # the technician fixes the file
        assert connected.wait(timeout_s(20)), p.last_error
    finally:
        p.stop()
        b.stop()


def test_a_terminal_is_back_within_seconds_of_its_broker(tmp_path):
    """The default back-off (reconnect_max_s 60) made the first verify after a 20 s broker
    outage wait for paho's next try, up to 38 s; now at most reconnect_max_s (5 s)."""
    assert MqttConfig().reconnect_max_s <= 5
    (tmp_path / "b").mkdir()
    b = Mosquitto(tmp_path / "b").start()
    b.add_user("kiosk-7")
    pw = tmp_path / "pw"
    pw.write_text(password("kiosk-7") + "\n")
    p, connected = _publisher(b, "kiosk-7", pw)  # the defaults, as an installed terminal has them
    try:
        assert connected.wait(timeout_s(15))
        b.stop()
        wait_until(lambda: not p.connected, 15, "the adapter to notice the broker is gone")
        time.sleep(18)  # uncapped, paho's back-off grows meanwhile: tries at 1, 3, 7, 15, then 31 s
        b.start()
        t0 = time.monotonic()
        assert connected.wait(timeout_s(30))
        assert time.monotonic() - t0 < 5 + 1.5, time.monotonic() - t0
    finally:
        p.stop()
        b.stop()


# -- serve ------------------------------------------------------------------------------------
def test_a_second_serve_worker_under_one_name_is_refused_not_left_flapping(tmp_path, caplog):
    """Two workers named alike kicked each other off every ~2 s forever ('Unspecified
    error'). On one machine the second is refused, naming the first one's pid; across
    machines the broker's drops are recognised and the cause logged."""
    from backendkit import backend_config, write_toml
    from facegate.backend.config import StoreConfig
    from facegate.backend.mqtt import BrokerClient

    (tmp_path / "b").mkdir()
    b = Mosquitto(tmp_path / "b").start()
    cfg = backend_config(b, StoreConfig(sqlite=str(tmp_path / "w.db")), tmp_path)
    toml = write_toml(cfg, tmp_path / "backend.toml")
    serve = [sys.executable, "-m", "facegate.cli", "backend", "serve", "--config", str(toml)]
    first = subprocess.Popen(serve, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        second = subprocess.run(serve, capture_output=True, text=True, timeout=timeout_s(60))
        assert second.returncode == 2, second.stderr
        assert (f"worker 1 (client id {cfg.mqtt.client_id}-w1) already runs here (pid {first.pid}): give this one "
                "another --worker name") in second.stderr
        assert first.poll() is None
        # the same client id from "another machine" (past the local lock)
        clients = [BrokerClient(cfg.mqtt, f"{cfg.mqtt.client_id}-w1", on_message=lambda m: None).start(wait=False)
                   for _ in range(2)]
        try:
            wait_until(lambda: "is another client using client id" in caplog.text, timeout_s(60),
                       "the repeated take-overs to be recognised")
        finally:
            for c in clients:
                c.close()
    finally:
        first.terminate()
        first.wait(20)
        b.stop()


def test_a_revoked_terminals_result_is_quarantined_with_a_log_line(tmp_path, caplog):
    """It went to quarantine without a word in the worker's log."""
    from backendkit import WorkerThread, backend_config
    from facegate.backend.config import StoreConfig
    from facegate.backend.registry import Registry
    from facegate.backend.store import Store
    from terminals import Link, Terminal

    (tmp_path / "b").mkdir()
    b = Mosquitto(tmp_path / "b").start()
    cfg = backend_config(b, StoreConfig(sqlite=str(tmp_path / "w.db")), tmp_path)
    term = Terminal("kiosk-gone")
    store = Store.open(cfg.store)
    Registry(store).enrol(term.dev, term.key.public, time.time())
    Registry(store).revoke(term.dev, time.time())
    w = WorkerThread(cfg)
    link = Link(b, term.dev)
    try:
        for _ in range(3):
            link.publish(term.topics.result, term.result()[1])
        wait_until(lambda: store.query("SELECT count(*) FROM quarantine")[0][0] == 3, timeout_s(30), "3 quarantined")
        said = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
        assert said == [f"a result on {term.topics.result} quarantined: revoked_key (kiosk-gone's key is revoked: "
                        "'facegate backend devices' shows it)"], said  # once, not once per result
    finally:
        link.close()
        w.close()
        store.close()
        b.stop()


def test_status_follows_the_daemon_at_once_and_a_second_daemon_is_refused(tmp_path, faces, backend_key, model_dir):
    """`status` showed 'broker not connected, camera NOT ok' for up to health_interval_s
    after a healthy start (here 300 s); it is written again whenever those change. A second
    `facegate run` on the same config is refused, naming the first one's pid."""
    from daemon_helpers import DaemonProc

    (tmp_path / "b").mkdir()
    b = Mosquitto(tmp_path / "b").start()
    (tmp_path / "d").mkdir()
    d = DaemonProc(tmp_path / "d", b, faces, backend_key)
    d.cfg.write_text(d.cfg.read_text().replace("health_interval_s = 1\n", "health_interval_s = 300\n"))
    d.start()
    try:
        def healthy():
            try:
                st = d.status()
            except (OSError, ValueError):
                return False
            return st["broker"]["connected"] and st["camera"].get("ok")
        wait_until(healthy, timeout_s(60), "status to show broker connected and camera ok")
        second = subprocess.run([sys.executable, "-m", "facegate.cli", "run", "--config", str(d.cfg)],
                                capture_output=True, text=True, timeout=timeout_s(120))
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"another facegate daemon (pid {d.proc.pid}) is running on state dir {d.state}" in second.stderr
        assert d.proc.poll() is None and d.status()["pid"] == d.proc.pid  # the first one untouched
        st = cli("status", "--config", d.cfg)
        assert st.returncode == 0 and "running (pid" in st.stdout and "broker    connected" in st.stdout
    finally:
        d.stop()
        b.stop()
