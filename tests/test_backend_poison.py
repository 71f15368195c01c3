"""The backend under attack (issue 22): one bad message must never stop the fleet's audit.
Each poison below stalled every worker before (the batch retried forever, unacknowledged,
nothing behind it stored); now it is a quarantine row with its reason, acknowledged, and
the terminal's genuine results around it are stored. Real Mosquitto, both stores."""
from __future__ import annotations

import json
import os
import time

import pytest

from backendkit import audit, backend_config, quarantined
from facegate import signing
from facegate.backend.mqtt import BrokerClient
from facegate.backend.registry import PENDING_KEEP, Registry
from facegate.backend.store import Store
from facegate.backend.trust import check_attest
from terminals import PREFIX, Terminal
from timeouts import wait_until

# fixtures (tests/backendkit.py): every test on SQLite and on PostgreSQL, a broker of its own


def nested(depth: int) -> dict:
    d: dict = {}
    for _ in range(depth):
        d = {"x": d}
    return d


def self_signed_attest(t: Terminal, **over) -> bytes:
    """A terminal's attestation (a fresh key, signed by itself: no trusted key needed)."""
    from facegate import messages

    p = messages.attest_payload(dev=t.dev, kid=t.key.kid, public=t.key.public, version="0.1.0", models={},
                                boot=t.boot, iat=time.time())
    p.update(over)
    return signing.sign(p, t.key, t.topics.attest)


# name -> (what the terminal publishes: (leaf, payload, retain) from the terminal, reason quarantined)
POISONS = {
    # an unsigned health message on the terminal's own topic: OverflowError (SQLite) / bigint out of range (PostgreSQL)
    "health_int_2_64": (lambda t: ("health", json.dumps({"outbox_depth": 2**64}).encode(), False), "bad_health"),
    # RecursionError in json.loads (only ValueError was caught)
    "health_deep_json": (lambda t: ("health", b"[" * 10_000, False), "bad_health"),
    # correctly signed by the terminal's key: OverflowError in float(iat)
    "result_iat_10_400": (lambda t: ("result", t.result(iat=10**400)[1], False), "bad_payload"),
    # PostgreSQL: text cannot hold NUL (a DataError, retried forever)
    "result_reason_nul": (lambda t: ("result", t.result(decision="no_match", reason="x\x00y")[1], False),
                          "bad_payload"),
    # PostgreSQL: an index row larger than a btree page (ProgramLimitExceeded; random: no compression)
    "result_request_id_10k": (lambda t: ("result", t.result(request_id=os.urandom(5000).hex())[1], False), "bad_payload"),
    # json.dumps(sort_keys=True) of a map with int and str keys: TypeError
    "result_mixed_keys": (lambda t: ("result", t.result(liveness={1: "a", "b": 2})[1], False), "bad_payload"),
    # nesting beyond what any column needs (was stored as is)
    "result_deep_map": (lambda t: ("result", t.result(quality=nested(200))[1], False), "bad_payload"),
    # a retained self-signed attestation with a NUL in sw: every worker stalled, and again after each restart
    "attest_sw_nul": (lambda t: ("attest", self_signed_attest(Terminal(t.dev), sw="1.0\x00evil"), True), "bad_attest"),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_poison_message_is_quarantined_and_the_rest_stored(rig, broker, store, store_cfg, tmp_path, poison):
    make, reason = POISONS[poison]
    t = Terminal(f"poison-{os.urandom(3).hex()}")
    Registry(store).enrol(t.dev, t.key.public, time.time())
    cfg = backend_config(broker, store_cfg, tmp_path, batch_max=5)
    w = rig.worker(cfg)
    links = rig.links([t.dev])
    sent = {}
    seq, m = t.result()
    sent[(t.dev, seq)] = m
    links.publish(t.dev, t.topics.result, m)
    leaf, payload, retain = make(t)
    links.publish(t.dev, f"{PREFIX}/{t.dev}/{leaf}", payload, retain=retain)
    for _ in range(10):
        seq, m = t.result()
        sent[(t.dev, seq)] = m
        links.publish(t.dev, t.topics.result, m)
    wait_until(lambda: len(audit(store)) >= len(sent), 20, "every genuine result stored behind the poison")
    wait_until(lambda: quarantined(store), 10, "the poison quarantined")
    assert audit(store) == sent
    assert quarantined(store) == [(t.dev, reason)]
    assert w.worker.stats.db_errors == 0  # a poison is never taken for a database outage


def test_what_the_checks_miss_the_database_refusal_quarantines(rig, broker, store, store_cfg, tmp_path, monkeypatch):
    """Second line of defence: with the payload checks switched off, a result the database
    (PostgreSQL: NUL in text) or Python (float(10**400)) refuses sends the batch through one
    message at a time; the refused one becomes an `unstorable` quarantine row, the others
    are stored, nothing is retried as if the database were down."""
    import facegate.contract.result as contract_result

    monkeypatch.setattr(contract_result, "payload_problem", lambda p: None)
    t = Terminal(f"unst-{os.urandom(3).hex()}")
    Registry(store).enrol(t.dev, t.key.public, time.time())
    w = rig.worker(backend_config(broker, store_cfg, tmp_path, batch_max=50))
    links = rig.links([t.dev])
    sent = {}
    w.worker._inbox.mutex.acquire()  # hold the worker back so the poisons share a batch with the rest
    try:
        for i in range(52):
            if i in (3, 7):
                over = {"iat": 10**400} if i == 3 else {"reason": "a\x00b"} if store.kind == "postgres" \
                    else {"iat": -(10**400)}
                links.publish(t.dev, t.topics.result, t.result(decision="no_match", **over)[1])
                continue
            seq, m = t.result()
            sent[(t.dev, seq)] = m
            links.publish(t.dev, t.topics.result, m)
        time.sleep(1.0)
    finally:
        w.worker._inbox.mutex.release()
    wait_until(lambda: len(audit(store)) >= len(sent), 20, "every storable result stored")
    wait_until(lambda: len(quarantined(store)) >= 2, 10, "the two unstorable results quarantined")
    assert audit(store) == sent
    assert quarantined(store) == [(t.dev, "unstorable")] * 2
    assert w.worker.stats.unstorable == 2 and w.worker.stats.db_errors == 0


def test_a_retired_key_vouches_only_for_what_it_signed_before_the_rotation(rig, broker, store, store_cfg, tmp_path):
    """After an approved rotation the old key's results are bounded: a seq of 2^63-1 is
    quarantined (it pinned last_seq), and once the new key's first result is stored the old
    key vouches for nothing at or above its seq (its seq 4, 5 no longer turn the genuine
    results into conflicting_duplicates); what it signed before the rotation is still stored
    and never becomes the device's last decision."""
    t = Terminal(f"ret-{os.urandom(3).hex()}")
    reg = Registry(store)
    reg.enrol(t.dev, t.key.public, time.time())
    rig.worker(backend_config(broker, store_cfg, tmp_path, key_refresh_s=0.2))
    links = rig.links([t.dev])
    old = t.key
    links.publish(t.dev, t.topics.result, t.result()[1])  # seq 1, old key
    _, held = t.result(decision="no_match")  # seq 2, old key, delivered after the rotation
    wait_until(lambda: len(audit(store)) == 1, 20, "seq 1")
    t.key = signing.SigningKey.generate()
    assert reg.observe_attest(check_attest(t.attest(), t.topics.attest, PREFIX), time.time())
    reg.approve(t.dev, time.time())
    time.sleep(0.5)  # the worker re-reads the keys

    def by_old(seq: int, decision: str = "match") -> bytes:
        key, t.key, keep = t.key, old, t.seq
        t.seq = seq - 1
        try:
            return t.result(decision=decision)[1]
        finally:
            t.key, t.seq = key, keep

    links.publish(t.dev, t.topics.result, by_old(2**63 - 1))
    wait_until(lambda: quarantined(store), 20, "the old key's seq 2^63-1")
    assert quarantined(store) == [(t.dev, "retired_key")]
    genuine = {}
    seq, m = t.result()  # seq 3, the new key: the old one is capped below it
    genuine[seq] = m
    links.publish(t.dev, t.topics.result, m)
    wait_until(lambda: len(audit(store)) == 2, 20, "the new key's first result")
    time.sleep(0.5)
    for s in (4, 5):
        links.publish(t.dev, t.topics.result, by_old(s, "no_match"))  # the old key signing on
    links.publish(t.dev, t.topics.result, held)  # signed before the rotation: still counts
    for _ in (4, 5):
        seq, m = t.result()
        genuine[seq] = m
        links.publish(t.dev, t.topics.result, m)
    wait_until(lambda: len(audit(store)) == 5, 20, "the held result and the new key's results")
    time.sleep(0.5)
    assert {s: m for (_, s), m in audit(store).items() if s > 2} == genuine
    assert quarantined(store) == [(t.dev, "retired_key")] * 3
    dev = {d["dev"]: d for d in store.devices()}[t.dev]
    assert dev["last_seq"] == 5 and dev["last_decision"] == "match"


def test_packets_are_bounded_and_the_quarantine_keeps_a_digest_and_a_kib(rig, broker, store, store_cfg, tmp_path):
    """The worker's CONNECT carries MQTT 5 Maximum Packet Size: the broker drops a 2 MiB
    message instead of sending it; a 32 KiB result that is no COSE message is quarantined
    with its digest, size and first KiB only; the quarantine is purged by age."""
    t = Terminal(f"big-{os.urandom(3).hex()}")
    Registry(store).enrol(t.dev, t.key.public, time.time())
    with store.transaction():
        store.quarantine("0" * 64, f"{PREFIX}/{t.dev}/result", t.dev, "bad_signature", b"old", time.time() - 10**8,
                         "1")
    cfg = backend_config(broker, store_cfg, tmp_path, quarantine_max_age_s=86400)
    w = rig.worker(cfg)
    links = rig.links([t.dev])
    sent = {}
    wait_until(lambda: w.worker.stats.purged == 1, 10, "the old quarantine row purged")
    links.publish(t.dev, t.topics.result, os.urandom(2 * 2**20))
    links.publish(t.dev, t.topics.result, b"\xa0" + os.urandom(32 * 1024))
    for _ in range(3):
        seq, m = t.result()
        sent[(t.dev, seq)] = m
        links.publish(t.dev, t.topics.result, m)
    wait_until(lambda: len(audit(store)) == 3 and quarantined(store), 20, "the results and the quarantine")
    time.sleep(0.5)
    rows = store.query("SELECT reason, size, message FROM quarantine")
    assert [(r, int(n), len(bytes(m))) for r, n, m in rows] == [("not_cose", 32 * 1024 + 1, 1024)]
    assert audit(store) == sent


def test_the_request_clients_connection_is_bounded_too(rig, broker, tmp_path):
    """A terminal sending 100 MiB to a backend's reply topic took `backend verify` to
    413 MB: BrokerClient (the worker's and BackendClient's connection) announces its
    Maximum Packet Size, and the broker never sends the big message."""
    from facegate.backend.config import StoreConfig

    cfg = backend_config(broker, StoreConfig(sqlite=str(tmp_path / "unused.db")), tmp_path).mqtt
    got: list = []
    c = BrokerClient(cfg, "maxpkt", on_message=got.append).start()
    links = rig.links(["maxpkt-term"])
    try:
        c.subscribe(f"{PREFIX}/replies/backend/#", 1)
        links.publish("maxpkt-term", f"{PREFIX}/replies/backend/maxpkt", b"x" * (cfg.max_packet_bytes + 1))
        links.publish("maxpkt-term", f"{PREFIX}/replies/backend/maxpkt", b"small")
        wait_until(lambda: got, 10, "the small message")
        time.sleep(0.5)
        assert [m.payload for m in got] == [b"small"]
    finally:
        c.close()


def test_a_pending_key_flood_is_bounded_and_shown(store):
    """20 000 self-signed attestations made 20 000 pending keys and `approve` refused: a
    device keeps its PENDING_KEEP newest pending keys; the rest are counted and shown."""
    reg = Registry(store)
    dev = "flooded"
    for i in range(40):
        t = Terminal(dev)
        assert reg.observe_attest(check_attest(t.attest(), t.topics.attest, PREFIX), time.time() + i)
    pend = [p for p in reg.pending() if p.key.dev == dev]
    assert len(pend) == PENDING_KEEP
    assert {d["dev"]: d for d in store.devices()}[dev]["keys_dropped"] == 40 - PENDING_KEEP
    assert isinstance(store, Store)


def test_devices_output_escapes_what_a_terminal_wrote_and_shows_a_flood(tmp_path):
    """`devices pending` printed an attestation's sw raw: '\\r\\x1b[2K' hid the line from
    the operator. Untrusted strings are printed escaped; `devices` shows how many pending
    keys a flood pushed out."""
    import subprocess
    import sys

    from facegate.backend.config import StoreConfig

    toml = tmp_path / "backend.toml"
    toml.write_text(f'[store]\nsqlite = "{tmp_path / "b.db"}"\n')
    store = Store.open(StoreConfig(sqlite=str(tmp_path / "b.db")))
    reg = Registry(store)
    hidden = Terminal("esc-1")
    sw = "1.0\r\x1b[2Kkiosk-9             kid 0000 key rotation"
    assert reg.observe_attest(check_attest(self_signed_attest(hidden, sw=sw), hidden.topics.attest, PREFIX),
                              time.time())
    for i in range(PENDING_KEEP + 4):
        t = Terminal("flood-1")
        reg.observe_attest(check_attest(t.attest(), t.topics.attest, PREFIX), time.time() + i)
    store.close()

    def cli(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "facegate.cli", "backend", "devices", *args, "--config", str(toml)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    pending = cli("pending")
    assert "\x1b" not in pending and "\r" not in pending
    assert "sw 1.0\\r\\x1b[2Kkiosk-9" in pending
    listed = cli()
    assert f"+{PENDING_KEEP} pending (4 dropped)" in listed
    assert {r["device"]: r["keys_dropped"] for r in json.loads(cli("--json"))}["flood-1"] == 4


def test_oversized_messages_never_stop_a_session_for_good(rig, broker, tmp_path):
    """Mosquitto 2.0.11 does not give back the send quota of a message it dropped for our
    Maximum Packet Size: receive_max such messages (here 5, by default 200) and the
    worker's session received nothing more, whatever came after. The worker's probe
    (an idle worker's own message that does not come back) finds it and reconnects."""
    from facegate.backend.config import StoreConfig

    store = Store.open(StoreConfig(sqlite=str(tmp_path / "backend.db")))
    t = Terminal(f"quota-{os.urandom(3).hex()}")
    Registry(store).enrol(t.dev, t.key.public, time.time())
    cfg = backend_config(broker, StoreConfig(sqlite=str(tmp_path / "backend.db")), tmp_path, receive_max=5,
                         probe_s=1.0)
    w = rig.worker(cfg)
    links = rig.links([t.dev])
    sent = {}
    try:
        for i in range(52):
            if 2 <= i < 50:
                links.publish(t.dev, t.topics.result, os.urandom(cfg.mqtt.max_packet_bytes + 1))
                continue
            seq, m = t.result()
            sent[(t.dev, seq)] = m
            links.publish(t.dev, t.topics.result, m)
        wait_until(lambda: len(audit(store)) == len(sent), 20, "the results behind the oversized messages")
        assert audit(store) == sent and w.worker.stats.reconnects >= 1
    finally:
        store.close()


def test_a_database_made_before_gets_the_new_columns(store_cfg):
    """max_seq, keys_dropped and size were added for issue 22: a database without them
    gets them when opened, on both stores."""
    s = Store.open(store_cfg)
    with s.transaction():
        for table, col in (("device_keys", "max_seq"), ("devices", "keys_dropped"), ("quarantine", "size")):
            s.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    s.close()
    s = Store.open(store_cfg)
    try:
        with s.transaction():
            s.quarantine("1" * 64, f"{PREFIX}/x/result", "x", "not_cose", b"abc", time.time(), "1", 3)
        assert s.query("SELECT size FROM quarantine")[0][0] == 3
        assert s.keys() == [] and s.devices() == []
    finally:
        s.close()


def test_the_limits_count_depth_outside_strings_and_bound_every_value():
    from facegate.backend import limits

    assert limits.json_depth(b'{"a": "[[[[\\"[[[", "b": [1, [2]]}', 8) == 3  # brackets in strings do not count
    assert limits.parse_json_map(b'{"a": "' + b"[" * 50 + b'"}') == ({"a": "[" * 50}, None)
    assert limits.parse_json_map(b"[" * 20 + b"]" * 20) == (None, "too_deep")
    assert limits.parse_json_map(b"[1]") == (None, "not_an_object")
    assert limits.parse_json_map(b"{" + b" " * limits.MAX_HEALTH_BYTES + b"}") == (None, "too_large")
    assert limits.tree_problem(nested(limits.MAX_DEPTH - 1)) is None
    assert limits.tree_problem(nested(limits.MAX_DEPTH)) == "too_deep"
    for bad in ({"a": 2**63}, {"a": -(2**63) - 1}, {"a": float("nan")}, {"a": float("inf")}, {"a": "x\x00"},
                {"a": object()}, {"a": b"x" * 1000}):
        assert limits.tree_problem(bad) == "bad_value", bad
    assert limits.tree_problem({1: "a"}) == "bad_key"
    assert limits.tree_problem({"a": list(range(limits.MAX_NODES))}) == "too_many_values"
    assert limits.tree_problem({"a": [2**63 - 1, -(2**63), 1.5, True, None, "ok", b"\x00"]}) is None
    assert not limits.text("\ud800") and not limits.text("x" * 257) and limits.text("x" * 256)
    assert not limits.int63(True) and not limits.number(10**400) and limits.number(-(2**63))
