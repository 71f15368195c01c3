#!/usr/bin/env python3
"""What the Prometheus metrics cost a serve worker: its check-and-store path (Worker.process:
signature checks, one PostgreSQL transaction per batch, COMMIT) on pre-signed results, one
worker whose metrics are on (its /metrics scraped every second — 15 times as often as
Prometheus' usual 15 s — the fleet gauges recomputed every metrics.fleet_refresh_s, 5 s by
default, --refresh-s 0: on every scrape) for some batches and off (no hooks counting, no scrapes) for the others,
alternately (on, off, off, on, ...: drift in the machine's load falls on both alike), on one
database connection. (Two workers, one with and one without, differ by more than the metrics
cost: their connections and caches; measured 2026-12-07, the one created second was 30 %
slower with the metrics off in both.)

    .venv/bin/python scripts/metrics_overhead.py [--batches 60] [--terminals 200]

Prints wall-clock throughput and CPU time per result both ways and the cost in percent
(positive: slower with metrics). scripts/fleet_soak.py runs it after its fleet run.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from facegate.backend.config import BackendConfig  # noqa: E402
from facegate.backend.metrics import NoMetrics, WorkerMetrics  # noqa: E402
from facegate.backend.mqtt import Message  # noqa: E402
from facegate.backend.registry import Registry  # noqa: E402
from facegate.backend.store import Store  # noqa: E402
from facegate.backend.worker import Worker  # noqa: E402
from terminals import PREFIX, Terminal  # noqa: E402

ORDER = (True, False, False, True)  # with metrics?


def measure(dsn: str, batches: int = 60, batch_size: int = 200, terminals: int = 200, refresh_s: float = 5.0,
            log: Callable[[str], None] = print) -> dict[str, float]:
    """refresh_s: metrics.fleet_refresh_s (5 s by default: the fleet query at most every 5 s)."""
    cfg = BackendConfig.model_validate({"store": {"dsn": dsn}, "mqtt": {"prefix": PREFIX},
                                        "metrics": {"fleet_refresh_s": refresh_s, "stale_after_s": 3600}})
    fleet = [Terminal(f"oh-{i:04d}") for i in range(terminals)]
    setup = Store.open(cfg.store)
    reg = Registry(setup)
    for t in fleet:
        reg.enrol(t.dev, t.key.public, time.time())
    setup.close()
    decisions = ("match", "match", "no_match", "spoof")
    work = [[Message(t.topics.result, t.result(decision=decisions[(b + i) % 4])[1], 1, 0, False, False, None, 0)
             for i, t in ((i, fleet[(b * batch_size + i) % terminals]) for i in range(batch_size))]
            for b in range(batches + 4)]
    metrics, none = WorkerMetrics(cfg), NoMetrics()
    w = Worker(cfg, store=Store.open(cfg.store), metrics=metrics)
    metrics.worker = w
    assert metrics.serve("127.0.0.1:0")
    stop, scraping, scrapes = threading.Event(), threading.Event(), [0]

    def scraper():  # a Prometheus scraping every second (15 s is usual), while the metrics are on
        while not stop.wait(1.0):
            if scraping.wait(1.0) and not stop.is_set():
                urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10).read()
                scrapes[0] += 1

    th = threading.Thread(target=scraper, daemon=True)
    th.start()
    wall = {True: 0.0, False: 0.0}
    cpu = {True: 0.0, False: 0.0}
    done = {True: 0, False: 0}
    try:
        for b, batch in enumerate(work):
            with_metrics = ORDER[b % len(ORDER)]
            w.metrics = metrics if with_metrics else none
            scraping.set() if with_metrics else scraping.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            w.process(batch)
            t1, c1 = time.perf_counter(), time.process_time()
            if b >= 4:  # the first round warms both up
                wall[with_metrics] += t1 - t0
                cpu[with_metrics] += c1 - c0
                done[with_metrics] += len(batch)
    finally:
        stop.set()
        th.join(5)
        metrics.close()
        if w.store:
            w.store.close()
    rate_on, rate_off = done[True] / wall[True], done[False] / wall[False]
    r = {"rate_on": rate_on, "rate_off": rate_off, "overhead_pct": (rate_off - rate_on) / rate_off * 100,
         "cpu_us_on": cpu[True] / done[True] * 1e6, "cpu_us_off": cpu[False] / done[False] * 1e6,
         "results": done[True] + done[False], "scrapes": scrapes[0]}
    assert w.stats.stored == len(work) * batch_size
    assert sum(metrics._stored.labels(d)._value.get() for d in set(decisions)) == done[True] + 2 * batch_size
    log(f"metrics cost: {r['results']} results in batches of {batch_size}, {scrapes[0]} scrapes "
        f"(fleet_refresh_s {refresh_s:g}): "
        f"{rate_off:.0f}/s without, {rate_on:.0f}/s with ({r['overhead_pct']:+.1f} %); CPU (process, incl. the "
        f"scrapes) {r['cpu_us_off']:.0f} vs {r['cpu_us_on']:.0f} us/result")
    return r


def main() -> int:
    from postgres import Postgres

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--terminals", type=int, default=200)
    ap.add_argument("--refresh-s", type=float, default=5.0, help="metrics.fleet_refresh_s")
    args = ap.parse_args()
    pg = Postgres().start()
    try:
        r = measure(pg.fresh_dsn(), args.batches, terminals=args.terminals, refresh_s=args.refresh_s)
    finally:
        pg.remove()
    return 0 if r["overhead_pct"] <= 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
