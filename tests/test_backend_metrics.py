"""Operating the fleet: the serve worker's Prometheus metrics (backend/metrics.py), the alert
rules and the dashboard in ops/, and `facegate backend devices --stale / --problems`.

Against the real things: Mosquitto (tests/broker.py), SQLite and PostgreSQL (tests/postgres.py),
terminals with real keys (tests/terminals.py), Debian's `promtool` on the shipped rules and
their unit tests, and a real Prometheus on loopback scraping a `facegate backend serve`
process and evaluating the shipped rules."""
from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backendkit import WorkerThread, backend_config, write_toml
from broker import Mosquitto, free_port, password
from facegate.backend.config import MetricsConfig, StoreConfig
from facegate.backend.metrics import MAX_LABELS, WorkerMetrics, _Bounded
from facegate.backend.registry import Registry
from facegate.backend.store import Store
from facegate.backend.worker import Worker
from terminals import PREFIX, Links, Terminal, add_users
from timeouts import wait_until

REPO = Path(__file__).resolve().parents[1]
OPS = REPO / "ops"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(not (PROMETHEUS and PROMTOOL),
                                      reason="Debian's prometheus package (scripts/dev.sh setup installs it)")


# -- helpers -----------------------------------------------------------------------------------
def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from GET /metrics parsed by prometheus_client."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    """{label value: value} of `name`, zeros left out."""
    return {dict(lbl)[label]: v for (n, lbl), v in samples.items() if n == name and v}


def one(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class ServedWorker(WorkerThread):
    """A worker on a thread in this process, its metrics served on a free loopback port."""

    def __init__(self, cfg):
        self.metrics = WorkerMetrics(cfg)
        super().__init__(cfg, metrics=self.metrics)
        assert self.metrics.serve("127.0.0.1:0")
        self.port = self.metrics.port

    def close(self):
        super().close()
        self.metrics.close()


def devices_cli(toml: Path, *flags: str) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "facegate.cli", "backend", "devices", "--config", str(toml), "--json",
                        *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def with_metrics(toml: Path, **metrics) -> Path:
    toml.write_text(toml.read_text() + "[metrics]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in metrics.items()))
    return toml


# -- the counters agree with the database ----------------------------------------------------------
def test_scraped_counters_and_fleet_gauges_agree_with_the_database(broker, store_cfg, tmp_path):
    """A real worker stores genuine results and quarantines attacks; /metrics, scraped over
    HTTP, says exactly what the database holds: stored by decision, quarantined by reason,
    the duplicate, the quarantine repeat, one latency observation per stored result; the fleet
    gauges count terminals by state and problem from R/status and R/health — and no label
    value anywhere is a device id. `devices --stale / --problems` name the same terminals."""
    cfg = backend_config(broker, store_cfg, tmp_path)
    cfg = cfg.model_copy(update={"metrics": MetricsConfig(fleet_refresh_s=0, stale_after_s=60)})
    store = Store.open(cfg.store)
    reg = Registry(store)
    a, b, quiet, rogue, revoked = (Terminal(f"mx-{n}") for n in ("a", "b", "quiet", "rogue", "revoked"))
    for t in (a, b, quiet, revoked):
        reg.enrol(t.dev, t.key.public, time.time())
    reg.revoke(revoked.dev, time.time())
    w = ServedWorker(cfg)
    links = Links(broker, [a.dev, b.dev, rogue.dev, revoked.dev])
    try:
        assert links.wait_connected()
        for t, health in ((a, {"outbox_depth": 4, "clock_synchronized": False, "camera_ok": True, "models_ok": True}),
                          (b, {"outbox_depth": 1, "clock_synchronized": True, "camera_ok": False, "models_ok": True})):
            links.publish(t.dev, t.topics.status, b"online", retain=True)
            links.publish(t.dev, t.topics.health, json.dumps(health).encode())
        sent = []
        for t, decision, n in ((a, "match", 5), (a, "no_match", 2), (b, "spoof", 3)):
            for _ in range(n):
                sent.append(t.result(decision=decision)[1])
                links.publish(t.dev, t.topics.result, sent[-1])
        links.publish(a.dev, a.topics.result, sent[0])  # replayed: a duplicate
        links.publish(b.dev, b.topics.result, sent[1])  # a's result on b's topic
        links.publish(rogue.dev, rogue.topics.result, rogue.result()[1])
        links.publish(revoked.dev, revoked.topics.result, revoked.result()[1])
        forged = bytearray(a.result()[1])
        forged[-5] ^= 0x40
        links.publish(a.dev, a.topics.result, bytes(forged))
        wait_until(lambda: store.query("SELECT COUNT(*) FROM quarantine")[0][0] == 4, 20, "4 quarantine rows")
        links.publish(a.dev, a.topics.result, bytes(forged))  # the same forgery again: a repeat, no new row
        wait_until(lambda: w.worker.stats.quarantined == 5 and w.worker.stats.duplicates == 1, 20, "the repeats")
        wait_until(lambda: sum(d["outbox_depth"] or 0 for d in store.devices()) == 5, 20, "both healths")

        m = scrape(w.port)
        db_stored = dict(store.query("SELECT decision, COUNT(*) FROM results GROUP BY decision"))
        db_quarantined = dict(store.query("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"))
        assert db_stored == {"match": 5, "no_match": 2, "spoof": 3}
        assert by_label(m, "facegate_results_stored_total", "decision") == db_stored
        assert db_quarantined == {"wrong_topic": 1, "unknown_device": 1, "revoked_key": 1, "bad_signature": 1}
        assert by_label(m, "facegate_results_quarantined_total", "reason") == db_quarantined
        assert one(m, "facegate_quarantine_repeats_total") == 1
        assert one(m, "facegate_results_duplicate_total") == 1
        assert one(m, "facegate_store_latency_seconds_count") == 10
        assert 0 <= one(m, "facegate_store_latency_seconds_sum") < 10 * 30
        assert one(m, "facegate_batches_total") >= 1 and one(m, "facegate_db_errors_total") == 0
        assert one(m, "facegate_broker_connected", session="shared") == 1
        assert one(m, "facegate_worker_info", worker="1", group=cfg.serve.group, version=__import__("facegate").__version__) == 1
        # the fleet: a and b online, quiet never heard of; a's clock and b's camera
        assert one(m, "facegate_terminals_enrolled") == 3
        assert by_label(m, "facegate_terminals", "state") == {"online": 2, "unknown": 1}
        assert by_label(m, "facegate_terminals_problem", "problem") == {"clock_unsynchronized": 1, "camera_down": 1}
        assert (one(m, "facegate_outbox_depth_sum"), one(m, "facegate_outbox_depth_max")) == (5, 4)
        assert by_label(m, "facegate_keys", "state") == {"active": 3, "revoked": 1}
        assert one(m, "facegate_fleet_up") == 1
        devs = {t.dev for t in (a, b, quiet, rogue, revoked)}
        assert not [lbl for (_, lbl) in m for _, v in lbl if v in devs], "a device id in a label"

        toml = with_metrics(write_toml(cfg, tmp_path / "backend.toml"), stale_after_s=60)
        assert [r["device"] for r in devices_cli(toml, "--stale")] == [quiet.dev]
        assert {r["device"]: r["problems"] for r in devices_cli(toml, "--problems")} == {
            a.dev: ["clock_unsynchronized"], b.dev: ["camera_down"]}
        text = subprocess.run([sys.executable, "-m", "facegate.cli", "backend", "devices", "--config", str(toml),
                               "--problems"], capture_output=True, text=True, timeout=60).stdout
        assert re.search(rf"^{a.dev} .* online .*problems: clock_unsynchronized$", text, re.M), text
        assert quiet.dev not in text and rogue.dev not in text
        # b is taken offline (its will): counted offline, its camera no longer a live problem
        links.publish(b.dev, b.topics.status, b"offline", retain=True)
        wait_until(lambda: by_label(scrape(w.port), "facegate_terminals", "state").get("offline") == 1, 20, "offline")
        m = scrape(w.port)
        assert by_label(m, "facegate_terminals", "state") == {"online": 1, "offline": 1, "unknown": 1}
        assert by_label(m, "facegate_terminals_problem", "problem") == {"clock_unsynchronized": 1}
        assert {r["device"] for r in devices_cli(toml, "--stale")} == {quiet.dev, b.dev}
    finally:
        links.close()
        w.close()
        store.close()


def test_a_batch_rolled_back_is_counted_once(tmp_path):
    """A batch whose transaction fails after its rows were written (rolled back) and is then
    retried must count each result once: the metrics are staged and counted after COMMIT."""
    from facegate.backend.config import BackendConfig
    from facegate.backend.mqtt import Message

    cfg = BackendConfig.model_validate({"store": {"sqlite": str(tmp_path / "b.db")}, "mqtt": {"prefix": PREFIX}})
    store = Store.open(cfg.store)
    t = Terminal("rb-1")
    Registry(store).enrol(t.dev, t.key.public, time.time())
    metrics = WorkerMetrics(cfg)
    w = Worker(cfg, store=store, metrics=metrics)
    metrics.worker = w
    batch = [Message(t.topics.result, t.result(decision=d)[1], 1, 0, False, False, None, 0) for d in ("match", "spoof")]
    batch.append(Message(t.topics.result, b"\x00garbage", 1, 0, False, False, None, 0))
    real, calls = store.device_result, []

    def fail_once(*a, **k):  # the database fails in the middle of the batch, once
        calls.append(a)
        if len(calls) == 2:
            raise RuntimeError("connection lost")
        return real(*a, **k)

    store.device_result = fail_once  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.process(batch)
    assert store.query("SELECT COUNT(*) FROM results")[0][0] == 0  # rolled back
    w.process(batch)
    from prometheus_client import generate_latest

    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for f in text_string_to_metric_families(generate_latest(metrics.registry).decode()) for s in f.samples}
    assert by_label(m, "facegate_results_stored_total", "decision") == {"match": 1, "spoof": 1}
    assert by_label(m, "facegate_results_quarantined_total", "reason") == {"not_cose": 1}
    assert one(m, "facegate_store_latency_seconds_count") == 2
    # signed a moment ago: both in every bucket from 60 s up (the buckets are cumulative)
    assert one(m, "facegate_store_latency_seconds_bucket", le="60.0") == 2
    assert one(m, "facegate_store_latency_seconds_bucket", le="+Inf") == 2
    metrics.close()
    store.close()


def test_an_unstorable_message_is_counted_once_after_its_own_commit(tmp_path, monkeypatch):
    """A batch with a result Python cannot store (iat = -10^400, the payload checks switched
    off) goes through one message at a time; the refused one is quarantined as `unstorable`
    in a transaction of its own, outside process(): counted there, once, and what its failed
    attempts staged is not."""
    import threading

    import facegate.contract.result as contract_result
    from facegate.backend.config import BackendConfig
    from facegate.backend.mqtt import Message

    monkeypatch.setattr(contract_result, "payload_problem", lambda p: None)
    cfg = BackendConfig.model_validate({"store": {"sqlite": str(tmp_path / "u.db")}, "mqtt": {"prefix": PREFIX}})
    store = Store.open(cfg.store)
    t = Terminal("un-1")
    Registry(store).enrol(t.dev, t.key.public, time.time())
    metrics = WorkerMetrics(cfg)
    w = Worker(cfg, store=store, metrics=metrics)
    metrics.worker = w
    batch = [Message(t.topics.result, t.result(decision=d, **over)[1], 1, 0, False, False, None, 0)
             for d, over in (("match", {}), ("spoof", {"iat": -(10**400)}), ("no_match", {}))]
    w._commit_with_retry(batch, threading.Event())
    from prometheus_client import generate_latest

    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for f in text_string_to_metric_families(generate_latest(metrics.registry).decode()) for s in f.samples}
    assert dict(store.query("SELECT decision, COUNT(*) FROM results GROUP BY decision")) == {"match": 1, "no_match": 1}
    assert by_label(m, "facegate_results_stored_total", "decision") == {"match": 1, "no_match": 1}
    assert by_label(m, "facegate_results_quarantined_total", "reason") == {"unstorable": 1}
    assert w.stats.unstorable == 1
    metrics.close()
    store.close()


def test_labels_stay_bounded_and_a_busy_address_does_not_stop_the_worker(tmp_path, caplog):
    bounded = _Bounded(("match",))
    values = {bounded(f"reason_{i}") for i in range(500)} | {bounded("kiosk/7"), bounded(None), bounded("x" * 100)}
    assert len(values) == MAX_LABELS and "other" in values  # 31 new words and "other"
    from facegate.backend.metrics import _Latency

    lat = _Latency()
    lat.observe_many([0.05, 0.0500001, 0.0, 1e6])  # le is inclusive: 0.05 is in the 0.05 bucket
    buckets = {s.labels["le"]: s.value for f in lat.collect() for s in f.samples if s.name.endswith("_bucket")}
    assert (buckets["0.01"], buckets["0.05"], buckets["0.1"], buckets["86400.0"], buckets["+Inf"]) == (1, 2, 3, 3, 4)
    from facegate.backend.config import BackendConfig

    cfg = BackendConfig.model_validate({"store": {"sqlite": str(tmp_path / "b.db")}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        m = WorkerMetrics(cfg)
        with caplog.at_level(logging.ERROR):
            assert not m.serve(f"127.0.0.1:{s.getsockname()[1]}")
        assert "give each worker on a machine its own --metrics-listen" in caplog.text
        m.close()


# -- the alert rules and the dashboard ------------------------------------------------------
def exported_names(tmp_path) -> set[str]:
    """Every sample name a worker exports (one with an enrolled terminal, so the fleet gauges too)."""
    from prometheus_client import generate_latest

    from facegate.backend.config import BackendConfig

    cfg = BackendConfig.model_validate({"store": {"sqlite": str(tmp_path / "names.db")}, "serve": {"journal": True}})
    store = Store.open(cfg.store)
    Registry(store).enrol("n-1", Terminal("n-1").key.public, time.time())
    store.close()
    m = WorkerMetrics(cfg)
    m.worker = Worker(cfg, metrics=m)
    text = generate_latest(m.registry).decode()
    m.close()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bfacegate_[a-z_]+\b", expr))


@needs_prometheus
def test_promtool_accepts_the_rules_and_their_unit_tests_pass(tmp_path):
    """`promtool check rules` and `promtool test rules` (the rules at their real `for:`
    durations on synthetic series: fires after 5 minutes offline and not before, one alert
    for the fleet whatever the number of workers, ...); every rule names only metrics the
    worker exports, and the alerts the operators asked for exist."""
    rules = OPS / "prometheus" / "alerts.yml"
    r = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([PROMTOOL, "test", "rules", "alerts.test.yml"], cwd=OPS / "prometheus", capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([PROMTOOL, "check", "config", str(OPS / "prometheus" / "prometheus.yml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = rules.read_text()
    alerts = re.findall(r"- alert: (\w+)", text)
    assert {"FacegateTerminalOffline", "FacegateClockUnsynchronized", "FacegateOutboxGrowing", "FacegateCameraDown",
            "FacegateQuarantineSpike", "FacegateAuditLag", "FacegateWorkerDown"} <= set(alerts)
    names = exported_names(tmp_path)
    for expr in re.findall(r"expr: (.*)", text):
        assert metric_names_in(expr) <= names, (expr, metric_names_in(expr) - names)


def test_every_dashboard_panel_queries_an_exported_metric(tmp_path):
    dash = json.loads((OPS / "grafana" / "facegate-fleet.json").read_text())
    names = exported_names(tmp_path)
    panels = dash["panels"]
    assert len(panels) >= 10
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used = metric_names_in(t["expr"])
            assert used or re.search(r"\bup\{", t["expr"]), (p["title"], t["expr"])
            assert used <= names, (p["title"], used - names)
    used_all = set().union(*(metric_names_in(t["expr"]) for p in panels for t in p["targets"]))
    # the questions of every morning each have a panel
    assert {"facegate_terminals", "facegate_terminals_problem", "facegate_outbox_depth_sum",
            "facegate_results_stored_total", "facegate_results_quarantined_total",
            "facegate_store_latency_seconds_bucket", "facegate_keys"} <= used_all


# -- a real Prometheus scrapes a real worker ---------------------------------------------------
class Prometheus:
    """Debian's prometheus on a free loopback port, scraping `targets` every second and
    evaluating `rules` every second."""

    def __init__(self, d: Path, targets: list[str], rules: str):
        d.mkdir(parents=True, exist_ok=True)
        (d / "alerts.yml").write_text(rules)
        (d / "prometheus.yml").write_text(textwrap.dedent(f"""\
            global: {{scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}}
            rule_files: [alerts.yml]
            scrape_configs:
              - job_name: facegate-backend
                static_configs: [{{targets: {json.dumps(targets)}}}]
            """))
        self.port = free_port()
        self.log = open(d / "prometheus.log", "wb")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                                      "--log.level=warn"], stdout=self.log, stderr=subprocess.STDOUT, cwd=d)
        self.d = d
        wait_until(self._ready, 60, "prometheus ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, (self.d / "prometheus.log").read_text()[-2000:]
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, expr: str) -> float | None:
        r = self.api("query", query=expr)["result"]
        return float(r[0]["value"][1]) if r else None

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.api("alerts")["alerts"] if a["state"] == "firing"}

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


TERMINAL = """\
import json, sys, time
import paho.mqtt.client as mqtt
dev, port, ca, pw, prefix = sys.argv[1:6]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev + "-daemon", protocol=mqtt.MQTTv5)
c.username_pw_set(dev, pw)
c.tls_set(ca_certs=ca)
c.will_set(f"{prefix}/{dev}/status", b"offline", qos=1, retain=True)  # as the daemon's will
c.connect("127.0.0.1", int(port), keepalive=5)
c.loop_start()
c.publish(f"{prefix}/{dev}/status", b"online", qos=1, retain=True).wait_for_publish(10)
health = {"outbox_depth": 0, "camera_ok": True, "models_ok": True, "storage_ok": True, "clock_synchronized": True}
while True:
    c.publish(f"{prefix}/{dev}/health", json.dumps(health).encode(), qos=0, retain=True)
    print("up", flush=True)
    time.sleep(1)
"""


def start_terminal(b: Mosquitto, t: Terminal) -> subprocess.Popen:
    """A terminal's daemon as far as the broker sees it: its will, status and health (a process to SIGKILL)."""
    add_users(b, [t.dev])
    p = subprocess.Popen([sys.executable, "-c", TERMINAL, t.dev, str(b.port), str(b.tls["ca"]),
                          password(t.dev), PREFIX], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "up"
    return p


@needs_prometheus
def test_real_prometheus_scrapes_a_worker_and_fires_terminal_offline_only(broker, tmp_path):
    """`facegate backend serve --metrics-listen` in its own process; Prometheus (started here
    on loopback) scrapes it every second and evaluates the shipped rules (their `for:`
    shortened to 0 s — promtool's unit tests check the real durations). With three healthy
    terminals online no alert fires (among them CameraDown, WorkerDown, QuarantineSpike, which
    must not); SIGKILL one terminal (the broker sends its will, R/status offline) and
    FacegateTerminalOffline fires — and it alone."""
    cfg = backend_config(broker, StoreConfig(sqlite=str(tmp_path / "backend.db")), tmp_path)
    toml = with_metrics(write_toml(cfg, tmp_path / "backend.toml"), fleet_refresh_s=0)
    fleet = [Terminal(f"pm-{i}") for i in range(3)]
    store = Store.open(cfg.store)
    for t in fleet:
        Registry(store).enrol(t.dev, t.key.public, time.time())
    port = free_port()
    worker = subprocess.Popen([sys.executable, "-m", "facegate.cli", "backend", "serve", "--config", str(toml),
                               "--metrics-listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "worker.log", "wb"))
    rules = re.sub(r"for: \w+", "for: 0s", (OPS / "prometheus" / "alerts.yml").read_text())
    prom = terminals = None
    try:
        prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"], rules)
        terminals = [start_terminal(broker, t) for t in fleet]
        links = Links(broker, [fleet[0].dev])
        assert links.wait_connected()
        # a result published before the worker's shared subscription exists has no session to
        # wait in (seen in a shuffled run: the worker took longer to start than Prometheus)
        wait_until(lambda: " subscribed: " in (tmp_path / "worker.log").read_text(), 60, "the worker subscribed")
        links.publish(fleet[0].dev, fleet[0].topics.result, fleet[0].result()[1])
        wait_until(lambda: prom.value('sum(facegate_results_stored_total)') == 1, 60, "the result scraped")
        links.close()
        wait_until(lambda: prom.value('facegate_terminals{state="online"}') == 3, 60, "3 terminals online scraped")
        wait_until(lambda: prom.value('up{job="facegate-backend"}') == 1 and not prom.firing(), 30,
                   "no alert firing with a healthy fleet")
        time.sleep(3)  # a few more evaluations: still nothing
        assert prom.firing() == set()
        terminals[1].kill()
        terminals[1].wait(10)
        wait_until(lambda: "FacegateTerminalOffline" in prom.firing(), 60, "FacegateTerminalOffline firing")
        alert = next(a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "FacegateTerminalOffline")
        assert alert["labels"]["state"] == "offline" and float(alert["value"]) == 1
        time.sleep(3)
        assert prom.firing() == {"FacegateTerminalOffline"}
        assert [r["device"] for r in devices_cli(toml, "--stale")] == [fleet[1].dev]
    finally:
        for p in terminals or []:
            p.kill()
            p.wait(10)
        if prom:
            prom.close()
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(20) == 0
        except subprocess.TimeoutExpired:
            worker.kill()
        store.close()
