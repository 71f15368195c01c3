"""What the backend tests (test_backend*.py) share: the store on both databases, a broker of
the test's own, a worker on a thread, the terminals' links, and the queries they check.

Isolation: every test gets a fresh Mosquitto (`broker`, half a second to start), so no test
sees another's retained status / attestations or persistent sessions; the shuffled suite
found two that did (a retained `R/attest` of `cli-new` made a devices row that sorted before
the device a later test looked at, and `pending --scan` listed another test's rotation).
`postgres` is one server for the session (conftest.py imports these fixtures), each test
its own database on it (`fresh_dsn`)."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Mosquitto, password
from facegate.backend.config import BackendConfig, BrokerConfig, ServeConfig, StoreConfig
from facegate.backend.store import Store
from facegate.backend.worker import Worker
from terminals import Links


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    from postgres import Postgres

    pg = Postgres().start()
    yield pg
    pg.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def store_cfg(request, tmp_path) -> StoreConfig:
    """Each test twice: on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "postgres":
        return StoreConfig(dsn=request.getfixturevalue("postgres").fresh_dsn())
    return StoreConfig(sqlite=str(tmp_path / "backend.db"))


@pytest.fixture()
def store(store_cfg) -> Iterator[Store]:
    s = Store.open(store_cfg)
    yield s
    s.close()


@pytest.fixture()
def broker(tmp_path_factory) -> Iterator[Mosquitto]:
    """A Mosquitto of this test's own (persistent sessions, autosave every second)."""
    b = Mosquitto(tmp_path_factory.mktemp("broker"), persist=True).start()
    yield b
    b.stop()


@pytest.fixture()
def rig(broker) -> Iterator[Rig]:
    """Workers and links started by the test, closed after it (links first)."""
    r = Rig(broker)
    yield r
    r.close()


# -- helpers -----------------------------------------------------------------------------------
def backend_config(broker: Mosquitto, store_cfg: StoreConfig, d: Path, **serve) -> BackendConfig:
    """A config for the `backend` user; each test its own client ids and shared group (a
    broker keeps a stopped worker's session, and its share of the group, for a day)."""
    tag = f"t{time.monotonic_ns() % 10**9}"
    serve.setdefault("group", tag)
    pw = d / "backend.password"
    pw.write_text(password("backend") + "\n")
    return BackendConfig(mqtt=BrokerConfig(host="127.0.0.1", port=broker.port, tls=True, ca_file=str(broker.tls["ca"]),
                                           username="backend", password_file=str(pw), keepalive_s=5,
                                           client_id=tag),
                         store=store_cfg, serve=ServeConfig(**serve))


def write_toml(cfg: BackendConfig, path: Path) -> Path:
    lines = []
    for section in ("mqtt", "store", "serve"):
        lines.append(f"[{section}]")
        for k, v in getattr(cfg, section).model_dump().items():
            lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


class WorkerThread:
    """A worker in this process (for the tests that do not kill it); `metrics`: its
    WorkerMetrics, told which worker it counts for."""

    def __init__(self, cfg: BackendConfig, metrics=None):
        self.worker = Worker(cfg, metrics=metrics) if metrics is not None else Worker(cfg)
        if metrics is not None:
            metrics.worker = self.worker
        self.stop, ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop, ready), daemon=True)
        self.thread.start()
        assert ready.wait(15), "worker did not connect"

    def close(self):
        self.stop.set()
        self.thread.join(15)


class Rig:
    """What a test starts against its broker, closed in reverse order by the `rig` fixture."""

    def __init__(self, broker: Mosquitto):
        self.broker = broker
        self._close: list = []

    def worker(self, cfg: BackendConfig) -> WorkerThread:
        """A worker on a thread, subscribed (every SUBACK back) when this returns."""
        w = WorkerThread(cfg)
        self._close.append(w.close)
        return w

    def links(self, devs) -> Links:
        """One connected MQTT link per terminal (each as its own broker user)."""
        links = Links(self.broker, list(devs))
        self._close.append(links.close)
        assert links.wait_connected(), "the terminals' links did not connect"
        return links

    def close(self) -> None:
        while self._close:
            self._close.pop()()


def audit(store: Store) -> dict[tuple[str, int], bytes]:
    return {(d, s): bytes(m) for d, s, m in store.query("SELECT dev, seq, message FROM results")}


def quarantined(store: Store) -> list[tuple[str, str]]:
    return sorted((d or "", r) for d, r in store.query("SELECT dev, reason FROM quarantine"))


def device(store: Store, dev: str) -> dict:
    """`dev`'s devices row ({} when it has none yet)."""
    return {d["dev"]: d for d in store.devices()}.get(dev, {})
