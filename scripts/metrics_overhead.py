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

Judged (<= 5 %): what the metrics add to the worker's CPU time per result — the hooks' CPU
time (each call timed in the worker thread) plus the scrapes' CPU time (timed in the HTTP
server's thread) spread over the results stored meanwhile — over the worker's CPU per result
without them (median over its batches without): the throughput a CPU-bound worker would lose.
Also printed, both ways: the worker thread's CPU per result and the wall-clock throughput;
on a machine shared with other work these vary by more than the metrics cost (an A/A run,
metrics off both ways, differed by up to 17 % in CPU and 12 % in wall clock here).
scripts/fleet_soak.py runs it after its fleet run.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
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
SCRAPER = """\
import sys, urllib.request
for _ in sys.stdin:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read()
"""


class TimedMetrics(WorkerMetrics):
    """The worker's metrics, each hook's CPU time added up (the timer's own cost included:
    the figure errs high)."""

    spent = 0.0

    def begin(self) -> None:
        c0 = time.thread_time()
        super().begin()
        self.spent += time.thread_time() - c0

    def stored(self, decision, iat) -> None:
        c0 = time.thread_time()
        super().stored(decision, iat)
        self.spent += time.thread_time() - c0

    def quarantined(self, reason, new) -> None:
        c0 = time.thread_time()
        super().quarantined(reason, new)
        self.spent += time.thread_time() - c0

    def committed(self) -> None:
        c0 = time.thread_time()
        super().committed()
        self.spent += time.thread_time() - c0


def measure(dsn: str, batches: int = 60, batch_size: int = 200, terminals: int = 200, refresh_s: float = 5.0,
            scrape_every_s: float = 1.0, control: bool = False,
            log: Callable[[str], None] = print) -> dict[str, float]:
    """refresh_s: metrics.fleet_refresh_s (5 s by default: the fleet query at most every 5 s);
    control: the same schedule with the metrics off in both slots (an A/A run: the noise)."""
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
    metrics, none = TimedMetrics(cfg), NoMetrics()
    w = Worker(cfg, store=Store.open(cfg.store), metrics=metrics)
    metrics.worker = w
    assert metrics.serve("127.0.0.1:0")
    stop, scraping, scrapes = threading.Event(), threading.Event(), [0]

    # a Prometheus scraping every second (15 s is usual) while the metrics are on: in another
    # process, as Prometheus is (an HTTP client in this one would compete for its GIL)
    client = subprocess.Popen([sys.executable, "-c", SCRAPER, str(metrics.port)], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True)

    def scraper():
        while not stop.wait(scrape_every_s):
            if scraping.wait(1.0) and not stop.is_set():
                assert client.stdin is not None
                client.stdin.write("scrape\n")
                client.stdin.flush()
                scrapes[0] += 1

    scrape_cpu = [0.0]
    collect = metrics.registry.collect

    def timed_collect():  # runs in the HTTP server's thread: its CPU time is the scrape's cost
        c0 = time.thread_time()
        yield from collect()
        scrape_cpu[0] += time.thread_time() - c0

    metrics.registry.collect = timed_collect  # type: ignore[method-assign]
    th = threading.Thread(target=scraper, daemon=True)
    if scrape_every_s > 0:
        th.start()
    blocks: list[dict[bool, float]] = []
    wall = {True: 0.0, False: 0.0}
    cpu: dict[bool, list[float]] = {True: [], False: []}  # the worker thread's CPU per result, each batch
    done = {True: 0, False: 0}
    try:
        for b, batch in enumerate(work):
            with_metrics = ORDER[b % len(ORDER)]
            w.metrics = metrics if with_metrics and not control else none
            scraping.set() if with_metrics and not control else scraping.clear()
            t0, c0 = time.perf_counter(), time.thread_time()
            w.process(batch)
            t1, c1 = time.perf_counter(), time.thread_time()
            if b >= 4:  # the first round warms both up
                if b % len(ORDER) == 0:
                    blocks.append({True: 0.0, False: 0.0})
                blocks[-1][with_metrics] += t1 - t0
                wall[with_metrics] += t1 - t0
                cpu[with_metrics].append((c1 - c0) / len(batch))
                done[with_metrics] += len(batch)
    finally:
        stop.set()
        if th.is_alive():
            th.join(5)
        client.stdin.close() if client.stdin else None
        client.wait(10)
        metrics.close()
        if w.store:
            w.store.close()
    rate_on, rate_off = done[True] / wall[True], done[False] / wall[False]
    per_block = sorted((1 - blk[False] / blk[True]) * 100 for blk in blocks if blk[True] and blk[False])
    cpu_on, cpu_off = statistics.median(cpu[True]), statistics.median(cpu[False])
    scrape_per_result = scrape_cpu[0] / done[True]
    hooks_per_result = metrics.spent / (done[True] + 2 * batch_size)
    r = {"rate_on": rate_on, "rate_off": rate_off, "wall_pct": (rate_off - rate_on) / rate_off * 100,
         "blocks": len(per_block), "block_median": statistics.median(per_block),
         "block_q1": per_block[len(per_block) // 4], "block_q3": per_block[3 * len(per_block) // 4],
         "cpu_us_on": cpu_on * 1e6, "cpu_us_off": cpu_off * 1e6, "scrape_ms": scrape_cpu[0] / max(1, scrapes[0]) * 1e3,
         "scrape_us_per_result": scrape_per_result * 1e6, "hooks_us_per_result": hooks_per_result * 1e6,
         "paired_pct": (cpu_on - cpu_off + scrape_per_result) / cpu_off * 100,
         # judged: what the metrics add to the worker's CPU per result (its hooks, timed, and the scrapes spread
         # over the results stored meanwhile), over its CPU per result without: a CPU-bound worker loses that share
         "overhead_pct": (hooks_per_result + scrape_per_result) / cpu_off * 100,
         "results": done[True] + done[False], "scrapes": scrapes[0]}
    log(("A/A control (metrics off in both slots) " if control else "") + f"metrics cost: {r['results']} results in batches of {batch_size}, {scrapes[0]} scrapes every {scrape_every_s:g} s "
        f"(fleet_refresh_s {refresh_s:g}, {r['scrape_ms']:.1f} ms CPU each): hooks {r['hooks_us_per_result']:.2f} + "
        f"scrapes {r['scrape_us_per_result']:.2f} us/result of the worker's {r['cpu_us_off']:.0f} us/result without "
        f"metrics: cost {r['overhead_pct']:+.2f} %; the worker thread's CPU per result both ways (median per batch) "
        f"{r['cpu_us_off']:.0f} vs {r['cpu_us_on']:.0f} us ({r['paired_pct']:+.1f} % with the scrapes); wall clock {rate_off:.0f}/s without, {rate_on:.0f}/s with "
        f"({r['wall_pct']:+.1f} %; per block of 4 batches median {r['block_median']:+.1f} %, quartiles "
        f"{r['block_q1']:+.1f} / {r['block_q3']:+.1f} %: the noise of a shared machine)")
    assert w.stats.stored == len(work) * batch_size
    assert control or sum(metrics._stored.labels(d)._value.get() for d in set(decisions)) == done[True] + 2 * batch_size
    return r


def main() -> int:
    from postgres import Postgres

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--terminals", type=int, default=200)
    ap.add_argument("--refresh-s", type=float, default=5.0, help="metrics.fleet_refresh_s")
    ap.add_argument("--scrape-every-s", type=float, default=1.0, help="0: no scrapes (the hooks alone)")
    ap.add_argument("--control", action="store_true", help="then an A/A run: the metrics off in both slots")
    args = ap.parse_args()
    pg = Postgres().start()
    try:
        r = measure(pg.fresh_dsn(), args.batches, terminals=args.terminals, refresh_s=args.refresh_s,
                    scrape_every_s=args.scrape_every_s)
        if args.control:
            measure(pg.fresh_dsn(), args.batches, terminals=args.terminals, control=True)
    finally:
        pg.remove()
    return 0 if r["overhead_pct"] <= 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
