"""The backend side: device registry, fleet consumer (`facegate backend serve`) and their
store, against a real Mosquitto (TLS, passwords, ACL, persistence) and both databases — a
SQLite file and a real PostgreSQL server started for the session (tests/postgres.py).
Terminals are simulated (tests/terminals.py: real keys, the package's contract code)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from backendkit import audit, backend_config, device, quarantined, write_toml
from broker import Mosquitto, password
from facegate.backend.config import BackendConfig, BrokerConfig, ServeConfig, StoreConfig
from facegate.backend.mqtt import Message
from facegate.backend.registry import Registry, RegistryError, parse_key_show
from facegate.backend.store import Store
from facegate.backend.trust import Keyring, check_result
from facegate.backend.worker import Worker, recheck_quarantine
from terminals import PREFIX, Links, Terminal
from timeouts import wait_until

# fixtures (tests/backendkit.py): `store` / `store_cfg` on SQLite and PostgreSQL, a broker of
# each test's own, `rig` for its workers and links


# -- the registry -------------------------------------------------------------------------
def test_enrol_from_keys_show_output_text_or_json(store):
    t = Terminal("kiosk-7")
    pub, dev = parse_key_show(t.keys_show())
    assert pub == t.key.public and dev is None
    pub2, dev2 = parse_key_show(json.dumps({"kid": t.key.kid.hex(), "public_key": t.key.public.hex(),
                                            "device": "kiosk-7"}))
    assert (pub2, dev2) == (t.key.public, "kiosk-7")
    with pytest.raises(RegistryError, match="does not belong"):
        parse_key_show(t.keys_show().replace(t.key.kid.hex(), "00" * 8))
    with pytest.raises(RegistryError, match="public_key"):
        parse_key_show("hello")
    reg = Registry(store)
    row = reg.enrol("kiosk-7", pub, time.time())
    assert row.state == "active" and row.kid == t.key.kid.hex()
    other = Terminal("kiosk-7")
    with pytest.raises(RegistryError, match="--replace"):
        reg.enrol("kiosk-7", other.key.public, time.time())
    with pytest.raises(RegistryError, match="bad device id"):
        reg.enrol("kiosk/7", pub, time.time())


def test_key_rotation_needs_approval_and_revoked_keys_are_refused(store):
    """Never trust a key on first sight: an attested key is pending until approved; after
    the approval the old key is retired (its earlier results still verify); a revoked
    key's results are refused, and it cannot be enrolled again."""
    from facegate.backend.trust import check_attest

    reg = Registry(store)
    t = Terminal("kiosk-1")
    assert reg.observe_attest(check_attest(t.attest(), t.topics.attest, PREFIX), time.time())
    pend = reg.pending()
    assert [(p.key.dev, p.key.kid, p.rotation) for p in pend] == [("kiosk-1", t.key.kid.hex(), False)]
    _, first = t.result()
    assert check_result(first, t.topics.result, PREFIX, reg.keyring()).reason == "unapproved_key"
    reg.approve("kiosk-1", time.time())
    assert check_result(first, t.topics.result, PREFIX, reg.keyring()).accepted
    # rotation: the new key's attestation is a pending change; its results wait for approval
    old_key = t.key
    import facegate.signing as signing

    t.key = signing.SigningKey.generate()
    assert reg.observe_attest(check_attest(t.attest(), t.topics.attest, PREFIX), time.time())
    assert [p.rotation for p in reg.pending()] == [True]
    _, rotated = t.result()
    assert check_result(rotated, t.topics.result, PREFIX, reg.keyring()).reason == "unapproved_key"
    reg.approve("kiosk-1", time.time())
    ring = reg.keyring()
    assert check_result(rotated, t.topics.result, PREFIX, ring).accepted
    assert check_result(first, t.topics.result, PREFIX, ring).accepted  # signed before the rotation
    assert {r.kid: r.state for r in store.keys("kiosk-1")} == {old_key.kid.hex(): "retired", t.key.kid.hex(): "active"}
    # a forged attestation (signed by another key than it announces) is no attestation
    forged = Terminal("kiosk-1", key=signing.SigningKey.generate())
    blob = forged.attest()
    import cbor2

    tag = cbor2.loads(blob)
    body = cbor2.loads(tag.value[2])
    body["pub"] = Terminal("x").key.public
    assert check_attest(signing.sign(body, forged.key, t.topics.attest), t.topics.attest, PREFIX) is None
    # revocation
    assert {r.kid for r in reg.revoke("kiosk-1", time.time())} == {old_key.kid.hex(), t.key.kid.hex()}
    ring = reg.keyring()
    assert check_result(rotated, t.topics.result, PREFIX, ring).reason == "revoked_key"
    assert check_result(first, t.topics.result, PREFIX, ring).reason == "revoked_key"
    with pytest.raises(RegistryError, match="revoked"):
        reg.enrol("kiosk-1", t.key.public, time.time(), replace=True)


def test_result_checks_name_the_reason(store):
    reg = Registry(store)
    a, b, stranger = Terminal("kiosk-a"), Terminal("kiosk-b"), Terminal("kiosk-x")
    for t in (a, b):
        reg.enrol(t.dev, t.key.public, time.time())
    ring = reg.keyring()
    _, good = a.result()
    assert check_result(good, a.topics.result, PREFIX, ring).accepted
    assert check_result(good, b.topics.result, PREFIX, ring).reason == "wrong_topic"  # copied to b's topic
    assert check_result(good, f"{PREFIX}/kiosk-a/event", PREFIX, ring).reason == "wrong_topic"
    assert check_result(stranger.result()[1], stranger.topics.result, PREFIX, ring).reason == "unknown_device"
    assert check_result(stranger.result(topic=a.topics.result)[1], a.topics.result, PREFIX,
                        ring).reason == "unknown_key"
    assert check_result(b.result(topic=a.topics.result)[1], a.topics.result, PREFIX, ring).reason == "wrong_device"
    assert check_result(a.result(dev="kiosk-b")[1], a.topics.result, PREFIX, ring).reason == "wrong_device"
    tampered = bytearray(good)
    tampered[-70] ^= 1
    assert check_result(bytes(tampered), a.topics.result, PREFIX, ring).reason in ("bad_signature", "not_cose")
    assert check_result(b"\x00garbage", a.topics.result, PREFIX, ring).reason == "not_cose"
    assert check_result(a.result(seq=-1)[1], a.topics.result, PREFIX, ring).reason == "bad_payload"
    assert check_result(a.result(decision_="maybe")[1], a.topics.result, PREFIX, ring).reason == "bad_payload"
    assert isinstance(Keyring.of(store.keys()), Keyring)


# -- the fleet consumer ---------------------------------------------------------------------
def test_forged_replayed_unknown_revoked_and_wrong_topic_results_are_quarantined(rig, store, store_cfg, tmp_path):
    reg = Registry(store)
    a, b, rogue, revoked = Terminal("fk-a"), Terminal("fk-b"), Terminal("fk-rogue"), Terminal("fk-revoked")
    for t in (a, b, revoked):
        reg.enrol(t.dev, t.key.public, time.time())
    reg.revoke(revoked.dev, time.time())
    w = rig.worker(backend_config(rig.broker, store_cfg, tmp_path))
    # each publishes with its own broker credentials (the ACL allows only its own topics):
    # a replay or a copy is what a terminal whose MQTT password leaked could send
    links = rig.links([a.dev, b.dev, rogue.dev, revoked.dev])
    links.publish(a.dev, a.topics.status, b"online", retain=True)
    links.publish(a.dev, f"{PREFIX}/fk-a/health", json.dumps({"outbox_depth": 3, "uptime_s": 5}).encode())
    sent = {}
    for _ in range(5):
        seq, m = a.result()
        sent[("fk-a", seq)] = m
        links.publish(a.dev, a.topics.result, m)
    seq, last = a.result(decision="no_match", reason="different_person")
    sent[("fk-a", seq)] = last
    links.publish(a.dev, a.topics.result, last)
    links.publish(a.dev, a.topics.result, last)  # replayed: the same bytes again
    links.publish(a.dev, a.topics.result, sent[("fk-a", 1)])  # an old one replayed
    links.publish(b.dev, b.topics.result, last)  # a's result copied onto b's topic
    links.publish(rogue.dev, rogue.topics.result, rogue.result()[1])  # unknown device
    links.publish(revoked.dev, revoked.topics.result, revoked.result()[1])  # revoked key
    forged = bytearray(a.result()[1])
    forged[-5] ^= 0x40  # a flipped signature bit
    links.publish(a.dev, a.topics.result, bytes(forged))
    a.seq = 5
    links.publish(a.dev, a.topics.result, a.result(decision="match")[1])  # a forgery re-using seq 6 (signed!)
    wait_until(lambda: len(quarantined(store)) >= 5, 20, "quarantine rows")
    # by name: it once read the first devices row, which another test's retained R/attest
    # (of `cli-new`, sorting before `fk-a`) made when the tests shared a broker
    wait_until(lambda: device(store, "fk-a").get("outbox_depth") == 3, 10, "fk-a's health")
    assert audit(store) == sent  # exactly the genuine results, once each, byte for byte
    assert quarantined(store) == sorted([("fk-b", "wrong_topic"), ("fk-rogue", "unknown_device"),
                                         ("fk-revoked", "revoked_key"), ("fk-a", "bad_signature"),
                                         ("fk-a", "conflicting_duplicate")])
    dev = device(store, "fk-a")
    assert dev["status"] == "online" and dev["last_decision"] == "no_match" and dev["last_seq"] == 6
    wait_until(lambda: w.worker.stats.duplicates >= 2, 10, "the same bytes again, and seq 1 again: duplicates")


def test_exactly_once_through_a_worker_kill_and_a_broker_restart(broker, store, store_cfg, tmp_path):
    """Two `facegate backend serve` processes share the results; one is SIGKILLed mid-stream
    and restarted under its name, then the broker is SIGKILLed and restarted (it forgets
    what came since its last save; the terminals re-send what it acknowledged lately; it
    forgets the shared subscriptions too, so worker 1 holds the journal session).
    Every result ends up in the audit table exactly once, with its signed bytes."""
    cfg = backend_config(broker, store_cfg, tmp_path, batch_max=20)
    toml = write_toml(cfg, tmp_path / "backend.toml")
    fleet = [Terminal(f"eo-{i}") for i in range(20)]
    reg = Registry(store)
    for t in fleet:
        reg.enrol(t.dev, t.key.public, time.time())

    def start_worker(name: str) -> subprocess.Popen:
        journal = ["--journal"] if name == "1" else []  # Mosquitto forgets shared subscriptions on a restart
        return subprocess.Popen([sys.executable, "-m", "facegate.cli", "backend", "serve", "--config", str(toml),
                                 "--worker", name, *journal], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"worker-{name}.log", "ab"))

    def subscribed(name: str) -> bool:
        """The worker's log says it holds its subscriptions (every SUBACK came back)."""
        log = tmp_path / f"worker-{name}.log"
        return log.exists() and " subscribed: " in log.read_text()

    workers = {n: start_worker(n) for n in ("1", "2")}
    links = Links(broker, [t.dev for t in fleet], redeliver_s=3.0)
    sent: dict[tuple[str, int], bytes] = {}
    phase = {"now": "before the kill"}  # when each result was published: named when some are missing
    published_in: dict[tuple[str, int], str] = {}
    try:
        assert links.wait_connected()
        # A result published before any worker subscribed has no session to wait in: the
        # broker drops it. A worker takes 2-6 s to start on a loaded 2-core machine; the fixed
        # 1.5 s that stood here lost 23 to 361 of 600 results there (all published before
        # the first SUBACK). Then worker 1's journal session must be on disk before the
        # broker's SIGKILL, or the results of the restart have nowhere to wait either.
        wait_until(lambda: subscribed("1") and subscribed("2"), 60, "both workers subscribed")
        broker.wait_saved()

        def publish(n: int, pause: float = 0.004):
            for i in range(n):
                t = fleet[i % len(fleet)]
                seq, m = t.result()
                sent[(t.dev, seq)] = m
                published_in[(t.dev, seq)] = phase["now"]
                links.publish(t.dev, t.topics.result, m)
                time.sleep(pause)

        publish(150)
        workers["1"].send_signal(signal.SIGKILL)  # mid-stream: batches in hand, acks not sent
        workers["1"].wait(5)
        phase["now"] = "worker 1 killed"
        publish(150)
        workers["1"] = start_worker("1")
        phase["now"] = "worker 1 restarted"
        publish(100)
        broker.stop(kill=True)  # what it acknowledged since the last autosave is gone
        phase["now"] = "broker killed"
        publish(50)  # queued by paho while the broker is away
        time.sleep(1.5)  # the workers' first reconnect fails: they re-subscribe 2 s later
        broker.start()
        phase["now"] = "broker restarted"
        publish(150)

        def missing() -> str:
            lost = sorted(set(sent) - set(audit(store)))
            by_phase = Counter(published_in[k] for k in lost)
            return f"{len(lost)} of {len(sent)} missing, published {dict(by_phase)}, e.g. {lost[:5]}"
        try:
            wait_until(lambda: len(audit(store)) >= len(sent) and links.unacked() == 0, 60, "every result stored")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {missing()}; {links.unacked()} unacknowledged by the broker") from None
        time.sleep(1.0)  # late duplicates would show up now
        got = audit(store)
        assert got == sent, (len(got), len(sent), sorted(set(sent) - set(got))[:5])
        assert quarantined(store) == []
        per_worker = dict(store.query("SELECT worker, COUNT(*) FROM results GROUP BY worker"))
        assert set(per_worker) <= {"1", "2"} and sum(per_worker.values()) == len(sent)
    finally:
        links.close()
        for p in workers.values():
            p.send_signal(signal.SIGTERM)
        for p in workers.values():
            try:
                assert p.wait(15) == 0
            except subprocess.TimeoutExpired:
                p.kill()


def test_two_workers_update_the_same_devices_without_a_deadlock(postgres):
    """Two workers' batches with results of the same two terminals in opposite orders, each
    paused (up to 3 s) after its first devices-row write until the other got there too. The
    devices rows used to be written after each result, in the batch's order: A held eo-a's
    row and waited for eo-b's, B the reverse, and PostgreSQL aborted one with `deadlock
    detected` (retried after 0.5 s, seen in 3 of 16 exactly-once runs). Written last, sorted
    by device, B waits for A instead, and both commit at the first try."""
    dsn = postgres.fresh_dsn()
    fleet = {d: Terminal(d) for d in ("dl-a", "dl-b")}
    setup = Store.open(StoreConfig(dsn=dsn))
    for t in fleet.values():
        Registry(setup).enrol(t.dev, t.key.public, time.time())
    setup.close()
    paused = threading.Barrier(2)

    def worker(name: str, devs: tuple[str, str]):
        store = Store.open(StoreConfig(dsn=dsn))
        plain = store.execute

        def execute(sql, params=()):
            cur = plain(sql, params)
            if sql.startswith("INSERT INTO devices") and not paused.broken:
                try:
                    paused.wait(3.0)  # both hold one devices row now (old order), or one waits
                except threading.BrokenBarrierError:
                    pass
            return cur
        store.execute = execute  # type: ignore[method-assign]
        cfg = BackendConfig(mqtt=BrokerConfig(prefix=PREFIX), store=StoreConfig(dsn=dsn),
                            serve=ServeConfig(worker=name))
        batch = [Message(fleet[d].topics.result, fleet[d].result()[1], 1, i, False, False, None, 0)
                 for i, d in enumerate(devs)]
        return Worker(cfg, store), batch

    a, b = worker("a", ("dl-a", "dl-b")), worker("b", ("dl-b", "dl-a"))
    errors: list[BaseException] = []

    def run(w: Worker, batch: list[Message]) -> None:
        try:
            w.process(batch)
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=run, args=pair) for pair in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert errors == [], errors
    assert a[0].stats.stored == b[0].stats.stored == 2
    check = Store.open(StoreConfig(dsn=dsn))
    try:
        assert len(audit(check)) == 4
        assert {d["dev"]: d["last_seq"] for d in check.devices()} == {"dl-a": 2, "dl-b": 2}
    finally:
        for st in (a[0].store, b[0].store, check):
            assert st is not None
            st.close()


def test_devices_cli_lists_status_health_last_decision_and_pending_keys(rig, tmp_path):
    """`facegate backend devices`: online / last seen / outbox / last decision from what a
    worker stored; `pending --scan` reads a retained R/attest; `approve` trusts it."""
    cfg = backend_config(rig.broker, StoreConfig(sqlite=str(tmp_path / "backend.db")), tmp_path)
    toml = write_toml(cfg, tmp_path / "backend.toml")
    known, newcomer = Terminal("cli-known"), Terminal("cli-new")
    store = Store.open(cfg.store)
    Registry(store).enrol(known.dev, known.key.public, time.time())
    rig.worker(cfg)
    links = rig.links([known.dev, newcomer.dev])
    links.publish(known.dev, known.topics.status, b"online", retain=True)
    links.publish(known.dev, known.topics.health, json.dumps({"outbox_depth": 2}).encode())
    links.publish(known.dev, known.topics.result, known.result(decision="spoof", reason="presentation_attack")[1])
    links.publish(newcomer.dev, newcomer.topics.attest, newcomer.attest(), retain=True)
    links.publish(newcomer.dev, newcomer.topics.result, newcomer.result()[1])  # before any approval
    wait_until(lambda: audit(store) and quarantined(store), 20, "the results stored / quarantined")
    wait_until(lambda: device(store, "cli-known").get("outbox_depth") == 2, 20, "health")
    rig.close()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "facegate.cli", "backend", "devices", *args, "--config",
                               str(toml)], capture_output=True, text=True, timeout=120)

    listed = {r["device"]: r for r in json.loads(cli("--json").stdout)}
    assert listed["cli-known"]["status"] == "online" and listed["cli-known"]["outbox_depth"] == 2
    assert listed["cli-known"]["last_decision"] == "spoof" and listed["cli-known"]["key"] == known.key.kid.hex()
    text = cli().stdout
    assert "cli-known" in text and "online" in text and "spoof (seq 1)" in text
    store.execute("DELETE FROM device_keys WHERE dev = ?", ("cli-new",))  # forget what the worker saw
    scanned = cli("pending", "--scan", "1.5", "--json")
    assert scanned.returncode == 0, scanned.stderr
    pend = json.loads(scanned.stdout)
    assert [(p["device"], p["kid"], p["rotation"]) for p in pend] == [("cli-new", newcomer.key.kid.hex(), False)]
    ok = cli("approve", "cli-new")
    assert ok.returncode == 0 and f"approved cli-new: kid {newcomer.key.kid.hex()}" in ok.stdout
    assert "1 quarantined result(s) of cli-new verify now: stored" in ok.stdout
    assert ("cli-new", 1) in audit(store) and quarantined(store) == []
    again = cli("approve", "cli-new")
    assert again.returncode == 2 and "no pending key for cli-new" in again.stderr
    assert [k.state for k in store.keys("cli-new")] == ["active"]
    store.close()


def test_bad_input_gets_one_line_and_exit_2(tmp_path):
    bad_db = tmp_path / "bad.toml"
    bad_db.write_text('[store]\ndsn = "postgresql://nobody@127.0.0.1:1/x"\n')
    r = subprocess.run([sys.executable, "-m", "facegate.cli", "backend", "devices", "--config", str(bad_db)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("facegate: cannot connect to PostgreSQL") \
        and r.stderr.count("\n") == 1, r.stderr
    (tmp_path / "k.txt").write_text("hello\n")
    cfg = tmp_path / "ok.toml"
    cfg.write_text(f'[store]\nsqlite = "{tmp_path / "b.db"}"\n')
    r = subprocess.run([sys.executable, "-m", "facegate.cli", "backend", "devices", "enrol", str(tmp_path / "k.txt"),
                        "--device", "k1", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no 'public_key' of 64 hex digits" in r.stderr and "Traceback" not in r.stderr


def test_a_database_outage_loses_nothing(rig, tmp_path):
    """PostgreSQL stopped while results arrive: the worker keeps its batch unacknowledged,
    retries with back-off, reconnects, and stores every result once."""
    from postgres import Postgres

    pg = Postgres().start()
    try:
        cfg = backend_config(rig.broker, StoreConfig(dsn=pg.fresh_dsn()), tmp_path)
        store = Store.open(cfg.store)
        fleet = [Terminal(f"db-{i}") for i in range(3)]
        for t in fleet:
            Registry(store).enrol(t.dev, t.key.public, time.time())
        store.close()
        w = rig.worker(cfg)
        links = rig.links([t.dev for t in fleet])
        sent = {}

        def publish(n):
            for i in range(n):
                t = fleet[i % 3]
                seq, m = t.result()
                sent[(t.dev, seq)] = m
                links.publish(t.dev, t.topics.result, m)

        publish(30)
        wait_until(lambda: w.worker.stats.stored == 30, 20, "the first results")
        pg.stop("immediate")
        publish(30)
        wait_until(lambda: w.worker.stats.db_errors >= 1, 20, "a database error")
        time.sleep(1.0)
        pg.start()
        wait_until(lambda: w.worker.stats.stored == 60, 60, "every result after the restart")
        store = Store.open(cfg.store)
        assert audit(store) == sent
        store.close()
        rig.close()
    finally:
        pg.remove()


def test_key_rotation_through_the_worker_needs_approval(rig, store, store_cfg, tmp_path):
    """A terminal rotates its key and re-publishes R/attest: the worker records a pending
    rotation; results under the new key are quarantined until it is approved, then stored;
    a result the old key signed before the rotation still counts; after a revocation
    nothing does."""
    from facegate import signing

    t = Terminal("rot-1")
    reg = Registry(store)
    reg.enrol(t.dev, t.key.public, time.time())
    rig.worker(backend_config(rig.broker, store_cfg, tmp_path, key_refresh_s=0.2))
    links = rig.links([t.dev])
    links.publish(t.dev, t.topics.attest, t.attest(), retain=True)
    links.publish(t.dev, t.topics.result, t.result()[1])
    _, signed_before = t.result()  # made before the rotation, delivered after it
    t.key = signing.SigningKey.generate()
    links.publish(t.dev, t.topics.attest, t.attest(), retain=True)
    wait_until(reg.pending, 20, "the rotation pending")
    assert [(p.key.dev, p.key.kid, p.rotation) for p in reg.pending()] == [(t.dev, t.key.kid.hex(), True)]
    links.publish(t.dev, t.topics.result, t.result()[1])
    wait_until(lambda: quarantined(store), 20, "the unapproved result")
    assert quarantined(store) == [(t.dev, "unapproved_key")] and sorted(audit(store)) == [(t.dev, 1)]
    reg.approve(t.dev, time.time())
    # what waited in quarantine for the approval is stored now, and leaves the quarantine
    assert recheck_quarantine(store, PREFIX, t.dev) == 1 and quarantined(store) == []
    time.sleep(0.5)  # the worker re-reads the keys every key_refresh_s
    links.publish(t.dev, t.topics.result, t.result()[1])
    links.publish(t.dev, t.topics.result, signed_before)
    wait_until(lambda: len(audit(store)) == 4, 20, "the approved and the retired key's results")
    assert sorted(audit(store)) == [(t.dev, 1), (t.dev, 2), (t.dev, 3), (t.dev, 4)]
    reg.revoke(t.dev, time.time())
    time.sleep(0.5)
    links.publish(t.dev, t.topics.result, t.result()[1])
    wait_until(lambda: (t.dev, "revoked_key") in quarantined(store), 20, "the revoked key's result")
    assert len(audit(store)) == 4
    assert recheck_quarantine(store, PREFIX, t.dev) == 0  # a revoked key's results stay out


@pytest.mark.parametrize("how", ["broker_down", "back_before_the_wait_ends"])
def test_a_subscription_cut_short_by_a_broker_crash_is_renewed_not_fatal(tmp_path, how):
    """CI caught it twice: a worker restarted just before the broker was SIGKILLed waited
    for a SUBACK that never came and exited (status 2), so its results went unstored.
    broker_down: the broker is gone when the client subscribes. back_before_the_wait_ends:
    the broker dies holding the SUBSCRIBE (frozen with SIGSTOP so the SUBACK cannot come)
    and is back, the client reconnected, before the wait for the SUBACK ran out; the
    worker then saw a live connection and took the missing SUBACK for a refusal. Either
    way the subscription is renewed on the reconnect instead, and delivers."""
    from facegate.backend.mqtt import BrokerClient

    (tmp_path / "broker").mkdir()
    b = Mosquitto(tmp_path / "broker", persist=True).start()
    got: list = []
    client = None
    try:
        cfg = backend_config(b, StoreConfig(sqlite=str(tmp_path / "unused.db")), tmp_path).mqtt
        client = BrokerClient(cfg, f"sub-{how}", on_message=got.append, session_expiry_s=60).start()
        if how == "broker_down":
            b.stop(kill=True)
            wait_until(lambda: not client.connected, 10, "the client to see the broker gone")
            t0 = time.monotonic()
            client.subscribe(f"{PREFIX}/+/result", 1, timeout_s=2.0)  # raised BrokerError before
            assert time.monotonic() - t0 < 5
            b.start()
        else:
            assert b.proc is not None
            b.proc.send_signal(signal.SIGSTOP)
            result: list = []

            def sub():
                try:
                    client.subscribe(f"{PREFIX}/+/result", 1, timeout_s=8.0)
                    result.append("ok")
                except Exception as exc:  # BrokerError before the fix
                    result.append(exc)

            t = threading.Thread(target=sub)
            t.start()
            time.sleep(0.5)  # the SUBSCRIBE is in the frozen broker's socket
            b.stop(kill=True)
            b.start()
            wait_until(lambda: client.connected, 30, "a reconnect")
            t.join(30)
            assert result == ["ok"], result
        wait_until(lambda: client.connected, 30, "a reconnect")
        b.add_user("kiosk-1")  # the result comes from the terminal: the backend's user may not write it
        (tmp_path / "kiosk-1.password").write_text(password("kiosk-1") + "\n")
        term = cfg.model_copy(update={"client_id": "pub", "username": "kiosk-1",
                                      "password_file": str(tmp_path / "kiosk-1.password")})
        pub = BrokerClient(term, f"sub-{how}-pub", on_message=lambda m: None).start()
        try:
            wait_until(lambda: (pub.publish(f"{PREFIX}/kiosk-1/result", b"x") or True) and got, 20,
                       "a message on the renewed subscription")
        finally:
            pub.close()
    finally:
        if client:
            client.close()
        b.stop()


def _mqtt_packet(kind: int, body: bytes) -> bytes:
    n, size = len(body), b""
    while True:
        n, digit = divmod(n, 128)
        size += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + size + body


def _mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def test_a_result_the_terminal_sends_again_with_dup_is_stored_once_and_counted(rig, store, store_cfg, tmp_path):
    """QoS 1 is at least once: a terminal that lost the broker's PUBACK sends the same
    PUBLISH again with the DUP flag and the same packet id, and the broker passes both on.
    Here the re-send is made on the wire (MQTT 3.1.1 over the broker's TLS, by hand: paho
    gives no way to lose a PUBACK on purpose), and the same result's bytes come a third
    time on a new packet id. One audit row, two duplicates counted, nothing quarantined."""
    import socket
    import ssl

    t = Terminal("dup-1")
    Registry(store).enrol(t.dev, t.key.public, time.time())
    w = rig.worker(backend_config(rig.broker, store_cfg, tmp_path))
    rig.broker.add_user(t.dev)
    seq, m = t.result()
    ctx = ssl.create_default_context(cafile=str(rig.broker.tls["ca"]))
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", rig.broker.port), timeout=10),
                         server_hostname="127.0.0.1") as s:
        connect = (_mqtt_str("MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big") + _mqtt_str(f"{t.dev}-raw")
                   + _mqtt_str(t.dev) + _mqtt_str(password(t.dev)))
        s.sendall(_mqtt_packet(0x10, connect))
        assert s.recv(4) == b"\x20\x02\x00\x00", "CONNACK: accepted"
        publish = _mqtt_str(t.topics.result) + (7).to_bytes(2, "big") + m
        s.sendall(_mqtt_packet(0x32, publish))  # QoS 1, packet id 7
        assert s.recv(4) == b"\x40\x02\x00\x07"  # the PUBACK the terminal is taken to have lost
        s.sendall(_mqtt_packet(0x3A, publish))  # DUP | QoS 1, the same packet id and bytes
        assert s.recv(4) == b"\x40\x02\x00\x07"
        s.sendall(_mqtt_packet(0x32, _mqtt_str(t.topics.result) + (8).to_bytes(2, "big") + m))  # and once more
        assert s.recv(4) == b"\x40\x02\x00\x08"
        s.sendall(b"\xe0\x00")  # DISCONNECT
    wait_until(lambda: w.worker.stats.stored + w.worker.stats.duplicates >= 3, 20, "three deliveries")
    assert audit(store) == {(t.dev, seq): m}
    assert (w.worker.stats.stored, w.worker.stats.duplicates, quarantined(store)) == (1, 2, [])
    assert device(store, t.dev)["last_seq"] == seq
