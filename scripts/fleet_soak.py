#!/usr/bin/env python3
"""The fleet consumer under load and faults: many terminals, a real Mosquitto, a real
PostgreSQL, several `facegate backend serve` workers.

    .venv/bin/python scripts/fleet_soak.py [--terminals 200] [--rate 200] [--duration 60]
                                           [--workers 3] [--seed 14]

Terminals are lightweight signers (tests/terminals.py: a real Ed25519 key each, results
built and signed by the package's own contract code), each on its own MQTT connection as
its own broker user (TLS, passwords, the per-device ACL of tests/broker.py). They publish
results round-robin at --rate per second in total, and re-send what the broker acknowledged
in the 3 s before a lost connection (as the daemon's mqtt.redeliver_s does; the broker saves
every 1 s). The workers share $share/fleet/facegate/v1/+/result on persistent sessions and
store into PostgreSQL (tests/postgres.py starts a throw-away cluster); worker 1 also holds
the journal session (serve.journal: Mosquitto 2.0 does not restore shared subscriptions
after a restart, so the results published before the workers re-subscribe reach only it).

Faults: at 1/3 of the run one worker is SIGKILLed and restarted 2 s later under the same
name; at 2/3 the broker is SIGKILLed and restarted 1 s later. Attacks, each about once a
second: a forged result (signature bit flipped) on a terminal's own topic, a terminal's old
result replayed, a result copied onto another terminal's topic, a result by an unenrolled
device, a result by a revoked device. Poison messages (issue 22), one a second in turn: an
outbox_depth of 2**64 and health JSON nested 10 000 deep on a terminal's health topic, a
result signed by its terminal with iat = 10**400, with a NUL in its reason, with a quality
map nested 200 deep, a 1 MiB message on a result topic (above the workers' MQTT Maximum
Packet Size: the broker drops it), a result by a retired key (seq far beyond its bound), a
self-signed attestation with a NUL in sw, and a flood of 50 self-signed attestations of
one device (pending keys bounded per device). Each worker's RSS and the database's size are
printed before and after.

Checked from the database at the end: lost = a genuine (dev, seq) never stored;
duplicates = rows beyond one per (dev, seq) or a stored message other than the one sent;
forged_accepted = an audit row that is not a genuine result; quarantined = quarantine rows
(every attack but the replays must be there). Latency = stored_at (set just before the
COMMIT) - the publish time, for each result's first storing.

Through the metrics: each worker serves /metrics (--metrics-listen on its own loopback port);
the killed worker is scraped every 0.5 s until the kill, every worker at the end. Each
worker's counters (stored, quarantined) must equal its rows in the database (`worker`
column) — for the killed one, its two lives' counters may fall short only by what it
stored in the last 0.5 s before the SIGKILL — and the fleet gauges must count every
terminal online. Then the metrics' cost (scripts/metrics_overhead.py): the worker's own
check-and-store path on one worker whose metrics are on (scraped every second) and off on
alternate batches, both ways in this run; the hooks' and scrapes' CPU time over the worker's
CPU per result must be at most 5 %. An A/A control (off both ways) shows the noise of the
paired CPU and wall-clock comparisons, which are printed too.
Ends with a metrics line and one line:
  fleet: terminals=T results=N lost=0 duplicates=0 forged_accepted=0 quarantined=Q poison=P rate=R/s p99_ms=P
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from broker import Mosquitto, free_port, password  # noqa: E402
from facegate import messages, signing  # noqa: E402
from facegate.backend.config import StoreConfig  # noqa: E402
from facegate.backend.registry import Registry  # noqa: E402
from facegate.backend.store import Store  # noqa: E402
from postgres import Postgres  # noqa: E402
from terminals import PREFIX, Links, Terminal, add_users  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def scrape(port: int) -> dict[str, float] | None:
    """{sample name with labels: value} from a worker's /metrics; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    return {s.name + str(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples}


def total(m: dict[str, float] | None, name: str) -> float:
    return sum(v for k, v in (m or {}).items() if k.split("[", 1)[0] == name)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def self_signed_attest(dev: str, sw: str = "0.1.0") -> bytes:
    t = Terminal(dev)
    p = messages.attest_payload(dev=dev, kid=t.key.kid, public=t.key.public, version=sw, models={}, boot=t.boot,
                                iat=time.time())
    return signing.sign(p, t.key, t.topics.attest)


def nested(depth: int) -> dict:
    d: dict = {}
    for _ in range(depth):
        d = {"x": d}
    return d


POISONS = ("health_int", "health_deep", "iat_10_400", "reason_nul", "deep_quality", "oversized", "retired_key",
           "attest_nul", "attest_flood")
EXPECTED_REASON = {"health_int": "bad_health", "health_deep": "bad_health", "iat_10_400": "bad_payload",
                   "reason_nul": "bad_payload", "deep_quality": "bad_payload", "retired_key": "retired_key",
                   "attest_nul": "bad_attest"}  # oversized: dropped by the broker; a flood: pending keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--terminals", type=int, default=200)
    ap.add_argument("--rate", type=float, default=200.0, help="results per second, all terminals together")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--overhead-batches", type=int, default=100,
                    help="batches of 200 results for the metrics' cost (half with, half without)")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    d = Path(tempfile.mkdtemp(prefix="fleet-soak-"))
    log(f"work dir {d}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    (d / "broker").mkdir()
    broker = Mosquitto(d / "broker", persist=True, autosave_s=1).start()
    pg = Postgres().start()
    dsn = pg.fresh_dsn()
    fleet = [Terminal(f"term-{i:04d}") for i in range(args.terminals)]
    rogue, revoked, rotated = Terminal("rogue-1"), Terminal("revoked-1"), Terminal("rotated-1")
    flooder = "flooded-1"
    store = Store.open(StoreConfig(dsn=dsn))
    reg = Registry(store)
    for t in fleet + [revoked, rotated]:
        reg.enrol(t.dev, t.key.public, time.time())
    reg.revoke(revoked.dev, time.time())
    retired_key = rotated.key  # rotated-1's first key, retired by a rotation: bound to seq <= 32
    rotated.key = signing.SigningKey.generate()
    reg.enrol(rotated.dev, rotated.key.public, time.time(), replace=True)
    rotated.key = retired_key
    add_users(broker, [t.dev for t in fleet] + [rogue.dev, revoked.dev, rotated.dev, flooder, "backend"])
    (d / "backend.password").write_text(password("backend") + "\n")
    toml = d / "backend.toml"
    toml.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntls = true\nca_file = "{broker.tls["ca"]}"\n'
                    f'username = "backend"\npassword_file = "{d / "backend.password"}"\nkeepalive_s = 5\n'
                    f'client_id = "fleet"\n[store]\ndsn = "{dsn}"\n[serve]\ngroup = "fleet"\n'
                    '[metrics]\nstale_after_s = 3600\n')
    ports = {str(i + 1): free_port() for i in range(args.workers)}

    def start_worker(name: str) -> subprocess.Popen:
        journal = ["--journal"] if name == "1" else []  # Mosquitto forgets shared subscriptions on a restart
        return subprocess.Popen([sys.executable, "-m", "facegate.cli", "backend", "serve", "--config", str(toml),
                                 "--worker", name, "--log-level", "info", "--metrics-listen",
                                 f"127.0.0.1:{ports[name]}", *journal], stdout=subprocess.DEVNULL,
                                stderr=open(d / f"worker-{name}.log", "ab"))

    workers = {str(i + 1): start_worker(str(i + 1)) for i in range(args.workers)}
    t0 = time.monotonic()
    links = Links(broker, [t.dev for t in fleet] + [rogue.dev, revoked.dev, rotated.dev, flooder], redeliver_s=3.0)
    if not links.wait_connected(60):
        log("not every terminal connected")
        return 2
    log(f"{len(fleet)} terminals connected in {time.monotonic() - t0:.1f} s; {args.workers} workers")
    for t in fleet:  # as each daemon does on connecting (its health then every 30 s; stale_after_s is long here)
        links.publish(t.dev, t.topics.status, b"online", retain=True)
        links.publish(t.dev, t.topics.health, b'{"outbox_depth": 0, "camera_ok": true, "clock_synchronized": true}')
    deadline = time.monotonic() + 60
    while not all("subscribed" in (d / f"worker-{w}.log").read_text() for w in workers):
        if time.monotonic() > deadline:
            log("a worker did not subscribe")
            return 2
        time.sleep(0.2)

    def db_mb() -> float:
        return store.query("SELECT pg_database_size(current_database())")[0][0] / 2**20

    def rss() -> str:
        return ", ".join(f"worker {w} {rss_mb(p.pid):.0f} MB" for w, p in sorted(workers.items()))

    rss_before, db_before = rss(), db_mb()
    log(f"before: RSS {rss_before}; database {db_before:.1f} MiB")
    poisons = dict.fromkeys(POISONS, 0)
    poison_n = 0

    def poison() -> None:
        nonlocal poison_n
        kind = POISONS[poison_n % len(POISONS)]
        poison_n += 1
        poisons[kind] += 1
        t = rnd.choice(fleet)
        k = poison_n
        if kind == "health_int":
            links.publish(t.dev, t.topics.health, json.dumps({"outbox_depth": 2**64, "n": k}).encode())
        elif kind == "health_deep":
            links.publish(t.dev, t.topics.health, b"[" * (10_000 + k))
        elif kind in ("iat_10_400", "reason_nul", "deep_quality"):
            over = {"iat_10_400": {"iat": 10**400}, "reason_nul": {"reason": f"x\x00{k}"},
                    "deep_quality": {"quality": nested(200)}}[kind]
            m = t.result(decision="no_match", **over)[1]
            t.seq -= 1  # the poison does not use up the terminal's seq
            links.publish(t.dev, t.topics.result, m)
        elif kind == "oversized":
            links.publish(t.dev, t.topics.result, os.urandom(2**20))
        elif kind == "retired_key":
            rotated.seq = 10**6 + k
            links.publish(rotated.dev, rotated.topics.result, rotated.result()[1])
        elif kind == "attest_nul":
            links.publish(flooder, f"{PREFIX}/{flooder}/attest", self_signed_attest(flooder, f"1.0\x00{k}"))
        else:
            for _ in range(50):
                links.publish(flooder, f"{PREFIX}/{flooder}/attest", self_signed_attest(flooder))

    sent: dict[tuple[str, int], tuple[bytes, float]] = {}
    attacks = {"forged": 0, "replayed": 0, "wrong_topic": 0, "unknown_device": 0, "revoked": 0}
    events: list[str] = []
    stop = threading.Event()

    victim = "2" if "2" in workers else "1"
    before_kill: dict[str, float] | None = None

    def faults():
        nonlocal before_kill
        third = args.duration / 3
        kill_at = time.monotonic() + third
        while time.monotonic() < kill_at:  # as Prometheus would, only more often
            before_kill = scrape(ports[victim]) or before_kill
            if stop.wait(min(0.5, max(0.0, kill_at - time.monotonic()))):
                return
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(5)
        events.append(f"worker {victim} SIGKILLed at {time.monotonic() - start:.1f} s")
        stop.wait(2.0)
        workers[victim] = start_worker(victim)
        events.append(f"worker {victim} restarted at {time.monotonic() - start:.1f} s")
        if stop.wait(third - 2.0):
            return
        broker.stop(kill=True)
        events.append(f"broker SIGKILLed at {time.monotonic() - start:.1f} s")
        stop.wait(1.0)
        broker.start()
        events.append(f"broker restarted at {time.monotonic() - start:.1f} s")

    start = time.monotonic()
    ft = threading.Thread(target=faults, daemon=True)
    ft.start()
    interval, n, next_attack = 1.0 / args.rate, 0, start + 1.0
    while (now := time.monotonic()) - start < args.duration:
        due = start + n * interval
        if due > now:
            time.sleep(min(due - now, 0.01))
            continue
        t = fleet[n % len(fleet)]
        seq, m = t.result(decision=rnd.choice(("match", "match", "no_match", "spoof")))
        sent[(t.dev, seq)] = (m, time.time())
        links.publish(t.dev, t.topics.result, m)
        n += 1
        if now >= next_attack:
            next_attack += 1.0
            a, b = rnd.sample(fleet, 2)
            forged = bytearray(a.result()[1])
            a.seq -= 1  # the forgery does not use up a's seq
            forged[-1 - rnd.randrange(60)] ^= 1 << rnd.randrange(8)
            links.publish(a.dev, a.topics.result, bytes(forged))
            old = rnd.choice(list(sent))
            links.publish(old[0], f"{PREFIX}/{old[0]}/result", sent[old][0])
            copied = rnd.choice(list(sent))
            links.publish(b.dev, b.topics.result, sent[copied][0])  # (b's own one: a replay)
            links.publish(rogue.dev, rogue.topics.result, rogue.result()[1])
            links.publish(revoked.dev, revoked.topics.result, revoked.result()[1])
            attacks["forged"] += 1
            attacks["replayed"] += 1 + (copied[0] == b.dev)
            attacks["wrong_topic"] += copied[0] != b.dev
            attacks["unknown_device"] += 1
            attacks["revoked"] += 1
            poison()
    publish_s = time.monotonic() - start
    stop.set()
    ft.join()
    log(f"published {n} results in {publish_s:.1f} s ({n / publish_s:.0f}/s); " + "; ".join(events))

    deadline = time.monotonic() + 180
    stored = 0
    while time.monotonic() < deadline:
        stored = store.query("SELECT COUNT(*) FROM results")[0][0]
        if stored >= len(sent) and links.unacked() == 0:
            break
        time.sleep(1.0)
    time.sleep(3.0)  # late duplicates would arrive now
    rows = store.query("SELECT dev, seq, message, stored_at, worker FROM results")
    quarantine = store.query("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason")
    log(f"load average {os.getloadavg()[0]:.1f}")
    metrics_ok = check_metrics(store, {w: scrape(ports[w]) for w in workers}, victim, before_kill, len(fleet))
    rss_after, db_after = rss(), db_mb()
    q_max = store.query("SELECT MAX(LENGTH(message)), MAX(size) FROM quarantine")[0]
    pend = [k for k in store.keys(flooder) if k.state == "pending"]
    dropped = {d["dev"]: d.get("keys_dropped") for d in store.devices()}.get(flooder)
    log(f"after: RSS {rss_after}; database {db_after:.1f} MiB (+{db_after - db_before:.1f}); "
        f"largest quarantine row keeps {q_max[0]} of {q_max[1]} bytes")
    log(f"poison sent: {poisons}; {flooder}: {len(pend)} pending keys kept, {dropped} dropped")

    got: dict[tuple[str, int], tuple[bytes, float, str]] = {}
    duplicates = forged_accepted = 0
    for dev, seq, msg, stored_at, worker in rows:
        key = (dev, int(seq))
        if key in got:
            duplicates += 1
            continue
        got[key] = (bytes(msg), float(stored_at), worker)
        if key not in sent or sent[key][0] != bytes(msg):
            forged_accepted += 1
    lost = len(set(sent) - set(got))
    latency = [(got[k][1] - sent[k][1]) * 1000 for k in sent if k in got]
    first = min(v[1] for k, v in sent.items())
    last = max(v[1] for v in got.values()) if got else first
    rate = len(got) / max(1e-9, last - first)
    per_worker: dict[str, int] = {}
    for _, _, w in got.values():
        per_worker[w] = per_worker.get(w, 0) + 1
    q_total = sum(c for _, c in quarantine)
    q_expected = attacks["forged"] + attacks["wrong_topic"] + attacks["unknown_device"] + attacks["revoked"]
    q_expected += sum(n for kind, n in poisons.items() if kind in EXPECTED_REASON and not kind.startswith("health"))
    by_reason = dict(quarantine)
    # health goes out at QoS 0 (as the daemon's does): one in flight when a worker or the broker is killed is gone
    health = by_reason.get("bad_health", 0)
    poison_ok = len(pend) <= 3 and 0 < health <= poisons["health_int"] + poisons["health_deep"]
    q_total -= health
    for w in sorted(per_worker):
        log(f"worker {w}: {per_worker[w]} results, {per_worker[w] / max(1e-9, last - first):.0f}/s")
    log(f"publish -> commit: p50 {pct(latency, 50):.0f} ms, p99 {pct(latency, 99):.0f} ms, max {max(latency):.0f} ms, "
        f"mean {statistics.fmean(latency):.0f} ms")
    log(f"attacks sent: {attacks}; quarantine by reason: {dict(quarantine)} "
        f"({q_total} of the {q_expected} expected, besides {health} bad_health)")
    if lost:
        missing = sorted(set(sent) - set(got), key=lambda k: sent[k][1])
        log(f"lost {lost}, published at (s into the run): "
            f"{[round(sent[k][1] - first, 2) for k in missing][:40]}")
    links.close()
    for p in workers.values():
        p.send_signal(signal.SIGTERM)
    for p in workers.values():
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    store.close()
    from metrics_overhead import measure

    overhead = measure(pg.fresh_dsn(), batches=args.overhead_batches, log=log)
    control = measure(pg.fresh_dsn(), batches=args.overhead_batches, log=log, control=True)  # the noise
    log(f"metrics: counters {'agree' if metrics_ok else 'DISAGREE'} with the database; cost "
        f"{overhead['overhead_pct']:+.1f} % of the worker's CPU per result (wall clock {overhead['wall_pct']:+.1f} %: "
        f"{overhead['rate_off']:.0f}/s without, {overhead['rate_on']:.0f}/s with; the A/A control's wall clock "
        f"{control['wall_pct']:+.1f} %, CPU {control['paired_pct']:+.1f} %)")
    broker.stop()
    pg.remove()
    if not args.keep:
        import shutil

        shutil.rmtree(d, ignore_errors=True)
    print(f"fleet: terminals={len(fleet)} results={len(got)} lost={lost} duplicates={duplicates} "
          f"forged_accepted={forged_accepted} quarantined={q_total + health} poison={poison_n} rate={rate:.0f}/s "
          f"p99_ms={pct(latency, 99):.0f}")
    print(f"fleet: worker RSS before {rss_before}; after {rss_after}; database {db_before:.1f} -> {db_after:.1f} MiB")
    return 0 if (lost == duplicates == forged_accepted == 0 and q_total == q_expected and poison_ok
                 and metrics_ok and overhead["overhead_pct"] <= 5.0) else 1


def check_metrics(store: Store, final: dict, victim: str, before_kill: dict | None, terminals: int) -> bool:
    """Each worker's scraped counters against its rows in the database."""
    ok = True
    db_r = dict(store.query("SELECT worker, COUNT(*) FROM results GROUP BY worker"))
    db_q = dict(store.query("SELECT worker, COUNT(*) FROM quarantine GROUP BY worker"))
    for w, m in sorted(final.items()):
        if m is None:
            log(f"worker {w}: /metrics did not answer")
            ok = False
            continue
        got_r, got_q = total(m, "facegate_results_stored_total"), total(m, "facegate_results_quarantined_total")
        want_r, want_q = db_r.get(w, 0), db_q.get(w, 0)
        if w == victim:  # two lives: the first one's last scrape before its SIGKILL, and this one
            got_r += total(before_kill, "facegate_results_stored_total")
            got_q += total(before_kill, "facegate_results_quarantined_total")
            exact = got_r <= want_r and got_q <= want_q and want_r - got_r <= 200  # <= 0.5 s at the offered rate
        else:
            exact = (got_r, got_q) == (want_r, want_q)
        log(f"worker {w}: scraped stored {got_r:.0f} quarantined {got_q:.0f}; database {want_r} / {want_q}"
            + (f" (unscraped before the kill: {want_r - got_r:.0f} / {want_q - got_q:.0f})" if w == victim else "")
            + ("" if exact else "  MISMATCH"))
        ok &= exact
    online = [(m or {}).get("facegate_terminals[('state', 'online')]") for m in final.values()]
    log(f"fleet gauges: online {online} of {terminals} enrolled")
    return ok and all(v == terminals for v in online)


if __name__ == "__main__":
    sys.exit(main())
