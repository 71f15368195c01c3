"""The worker's Prometheus metrics (`facegate backend serve`, /metrics on [metrics] listen,
127.0.0.1:9464 by default), with prometheus_client (this module is the backend's only
importer of it). docs/backend.md "Watching the fleet" says what each one means.

Hot series (per result) have only bounded labels: decision (the contract's words) and
quarantine reason (trust.QUARANTINE_REASONS), each capped at MAX_LABELS values with the rest
counted as "other" — no device id. Counts are staged per batch and counted only once the
batch's transaction committed (a batch rolled back and retried is counted once).

Fleet gauges (terminals by state, with a problem, outbox depths, keys by state) are computed
at scrape time from the registry and the terminals' last status and health (fleet.snapshot),
on the collector's own database connection, at most once per [metrics] fleet_refresh_s
whatever the number of scrapers. Every worker of a group reports the same fleet: aggregate
them with max, not sum (ops/prometheus/alerts.yml does).
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from .config import BackendConfig
from .fleet import PROBLEMS, STATES, snapshot
from .store import KEY_STATES, Store

log = logging.getLogger(__name__)
MAX_LABELS = 32  # distinct values of one label; beyond: "other"
# publish (the result's iat) -> COMMIT: tens of ms when all is well, hours for an outbox replayed after a day offline
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)


class _Bounded:
    """A label's values: the first MAX_LABELS distinct ones as they are, the rest 'other'."""

    def __init__(self, known: Iterable[str] = ()):
        self.seen: set[str] = set(known)
        self.lock = threading.Lock()

    def __call__(self, value: object) -> str:
        v = value if isinstance(value, str) and 0 < len(value) <= 40 and value.isidentifier() else "other"
        if v in self.seen:
            return v
        with self.lock:
            if len(self.seen) < MAX_LABELS:
                self.seen.add(v)
                return v
        return "other"


class NoMetrics:
    """The hooks of a worker without metrics (in-process ingest, `--metrics-listen ''`)."""

    def begin(self) -> None:
        """A batch starts: what an earlier, failed attempt staged is dropped."""

    def stored(self, decision: str, iat: Any) -> None:
        """One result stored (staged until committed)."""

    def quarantined(self, reason: str, new: bool) -> None:
        """One message quarantined; new=False: it was already in quarantine."""

    def committed(self) -> None:
        """The batch's transaction committed: what it staged is counted."""


class WorkerMetrics(NoMetrics):
    def __init__(self, cfg: BackendConfig, worker: Any = None):
        from ..contract import DECISIONS as _DECISIONS
        from .trust import QUARANTINE_REASONS

        DECISIONS = tuple(str(d) for d in _DECISIONS)

        self.cfg, self.worker = cfg, worker
        self.registry = CollectorRegistry(auto_describe=False)  # no fleet query at registration
        r = self.registry
        self._stored = Counter("facegate_results_stored", "Results stored in the audit table (new rows), by decision",
                               ["decision"], registry=r)
        self._quarantined = Counter("facegate_results_quarantined",
                                    "Messages put in quarantine (new rows), by reason", ["reason"], registry=r)
        self._repeats = Counter("facegate_quarantine_repeats",
                                "Copies of messages already in quarantine (redeliveries, the journal's copy)", registry=r)
        self._latency = _Latency()
        r.register(self._latency)
        self._decision, self._reason = _Bounded(DECISIONS), _Bounded(QUARANTINE_REASONS)
        for d in DECISIONS:
            self._stored.labels(d)
        for q in QUARANTINE_REASONS:
            self._quarantined.labels(q)
        self._staged: list[tuple[str, float]] = []
        self._staged_q: list[tuple[str, bool]] = []
        r.register(_WorkerCollector(self))
        self.fleet = _FleetCollector(cfg)
        r.register(self.fleet)
        self._server: Any = None

    # -- the hooks (the worker thread) ----------------------------------------------------
    def begin(self) -> None:
        self._staged.clear()
        self._staged_q.clear()

    def stored(self, decision: str, iat: Any) -> None:
        self._staged.append((decision, float(iat) if isinstance(iat, int | float) else time.time()))

    def quarantined(self, reason: str, new: bool) -> None:
        self._staged_q.append((reason, new))

    def committed(self) -> None:
        now = time.time()
        per: dict[str, int] = {}
        for decision, _ in self._staged:
            per[decision] = per.get(decision, 0) + 1
        self._latency.observe_many([max(0.0, now - iat) for _, iat in self._staged])
        for decision, n in per.items():  # one labelled increment per decision and batch
            self._stored.labels(self._decision(decision)).inc(n)
        for reason, new in self._staged_q:
            if new:
                self._quarantined.labels(self._reason(reason)).inc()
            else:
                self._repeats.inc()
        self.begin()

    # -- /metrics --------------------------------------------------------------------------
    def serve(self, listen: str) -> bool:
        """Serve /metrics on `listen` (host:port) in a thread; False (and an error in the
        log) when the address cannot be had: the worker goes on storing results."""
        host, _, port = listen.rpartition(":")
        try:
            self._server, _ = start_http_server(int(port), host.strip("[]") or "127.0.0.1", registry=self.registry)
        except (OSError, ValueError) as exc:
            log.error("metrics not served: cannot listen on %s (%s); give each worker on a machine its own "
                      "--metrics-listen", listen, exc)
            return False
        log.info("metrics on http://%s/metrics", listen)
        return True

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.fleet.close()


class _Latency(Collector):
    """facegate_store_latency_seconds: a histogram observed a batch at a time (one lock and a
    bisect per result: prometheus_client's Histogram.observe took 3 us a result here)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.total = 0.0

    def observe_many(self, values: list[float]) -> None:
        if not values:
            return
        where = [bisect.bisect_left(LATENCY_BUCKETS, v) for v in values]  # le: v <= bound
        with self.lock:
            for i in where:
                self.counts[i] += 1
            self.total += sum(values)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            counts, total = list(self.counts), self.total
        cumulative, buckets = 0, []
        for bound, n in zip((*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"), counts):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("facegate_store_latency_seconds", "From a result's iat (signed by the terminal "
                                    "as it publishes) to the COMMIT that stored it, seconds", buckets=buckets,
                                    sum_value=total)


class _WorkerCollector(Collector):
    """The worker's own counters, read from the WorkerStats it logs once a minute."""

    def __init__(self, m: WorkerMetrics):
        self.m = m

    def collect(self) -> Iterator[Metric]:
        w = self.m.worker
        serve = self.m.cfg.serve
        info = InfoMetricFamily("facegate_worker", "This worker: its name, shared-subscription group, version")
        info.add_metric([], {"worker": serve.worker, "group": serve.group, "version": __version__})
        yield info
        if w is None:
            return
        s = w.stats
        for name, value, doc in (
                ("facegate_results_duplicate", s.duplicates, "Results already stored (the same signed bytes again)"),
                ("facegate_batches", s.batches, "Batches committed (one database transaction each)"),
                ("facegate_db_errors", s.db_errors, "Failed attempts to store a batch (each retried with back-off)"),
                ("facegate_acks_lost", s.not_acked, "Acknowledgements whose connection was gone (the broker resends)"),
                ("facegate_messages_other", s.other, "Status, health and attestation messages handled")):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("facegate_inbox_messages", "Messages received and not yet committed",
                                value=w._inbox.qsize())
        conn = GaugeMetricFamily("facegate_broker_connected", "1 while the session is connected to the broker",
                                 labels=["session"])
        conn.add_metric(["shared"], float(w.broker.connected))
        if w.journal is not None:
            conn.add_metric(["journal"], float(w.journal.connected))
        yield conn


class _FleetCollector(Collector):
    """Fleet gauges at scrape time (fleet.snapshot), on its own connection, cached."""

    def __init__(self, cfg: BackendConfig):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.store: Store | None = None
        self.cached: tuple[float, list[Metric]] | None = None
        self.errors = 0

    def close(self) -> None:
        with self.lock:
            if self.store is not None:
                self.store.close()
                self.store = None

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            now = time.monotonic()
            ok = 1.0
            if self.cached is None or now - self.cached[0] >= self.cfg.metrics.fleet_refresh_s:
                try:
                    self.cached = (now, self._families())
                except Exception as exc:  # the database is down: say so, and no stale fleet figures
                    self.errors += 1
                    ok, self.cached = 0.0, None
                    log.error("fleet metrics: the database query failed: %s", exc)
                    if self.store is not None:
                        self.store.close()
                        self.store = None
            yield GaugeMetricFamily("facegate_fleet_up", "1 when the fleet gauges could be read from the database",
                                    value=ok)
            yield CounterMetricFamily("facegate_fleet_query_errors", "Fleet queries that failed", value=self.errors)
            if self.cached:
                yield from self.cached[1]

    def _families(self) -> list[Metric]:
        if self.store is None:
            self.store = Store.open(self.cfg.store)
        t0 = time.monotonic()
        f = snapshot(self.store, time.time(), self.cfg.metrics.stale_after_s)
        terminals = GaugeMetricFamily("facegate_terminals", "Enrolled terminals (an active key) by state: online, "
                                      "stale (says online, silent for stale_after_s), offline, stopped, unknown",
                                      labels=["state"])
        for state in STATES:
            terminals.add_metric([state], f.count(state))
        problem = GaugeMetricFamily("facegate_terminals_problem", "Terminals online (or stale) whose last health "
                                    "reports a problem, by problem", labels=["problem"])
        for p in PROBLEMS:
            problem.add_metric([p], f.with_problem(p))
        keys = GaugeMetricFamily("facegate_keys", "Device keys by state (pending: waiting for "
                                 "'facegate backend devices approve')", labels=["state"])
        for k in KEY_STATES:
            keys.add_metric([k], f.keys.get(k, 0))
        total, biggest = f.outbox()
        return [GaugeMetricFamily("facegate_terminals_enrolled", "Terminals with an active key", value=len(f.terminals)),
                terminals, problem, keys,
                GaugeMetricFamily("facegate_outbox_depth_sum", "Results waiting in the terminals' outboxes "
                                  "(last R/health of each enrolled terminal), all together", value=total),
                GaugeMetricFamily("facegate_outbox_depth_max", "The deepest outbox of one terminal", value=biggest),
                GaugeMetricFamily("facegate_fleet_query_seconds", "How long the fleet query took",
                                  value=time.monotonic() - t0)]
