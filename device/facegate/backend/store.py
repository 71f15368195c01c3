"""The backend's database: SQLite (one file, WAL, synchronous=FULL) or PostgreSQL (psycopg 3)
with the same tables and the same SQL (written with `?` placeholders; PostgreSQL gets `%s`).

Tables:
  device_keys (dev, kid) -> pub, state (pending | active | retired | revoked), source
                (enrol | attest), sw, first_seen, changed_at, max_seq (a retired key: the
                highest seq it may still vouch for)
  devices     dev -> status (online | offline | stopped), status_at, last_seen, health (JSON),
                outbox_depth, last_seq, last_decision, last_result_at, sw, boot,
                keys_dropped (pending keys pushed out by newer ones: an attestation flood)
  results     (dev, seq) -> the audit row: decision, reason, request_id, session, iat, boot,
                kid, liveness / quality / models (JSON), policy, topic, message (the signed
                bytes), received_at, stored_at, worker
  quarantine  digest (sha256 of topic + message) -> topic, dev (from the topic), reason,
                message (whole when it may verify later, else its first KiB), size (of the
                whole message), received_at, worker
  client_seq  dev -> the highest seq the request client accepted
Times are Unix seconds (float). This module is the backend's only importer of sqlite3 and
psycopg.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract import Result
from ..errors import FacegateError
from .config import StoreConfig

KEY_STATES = ("pending", "active", "retired", "revoked")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_keys (
  dev TEXT NOT NULL, kid TEXT NOT NULL, pub {blob} NOT NULL, state TEXT NOT NULL, source TEXT NOT NULL,
  sw TEXT, first_seen {real} NOT NULL, changed_at {real} NOT NULL, PRIMARY KEY (dev, kid));
CREATE TABLE IF NOT EXISTS devices (
  dev TEXT PRIMARY KEY, status TEXT, status_at {real}, last_seen {real}, health TEXT, outbox_depth BIGINT,
  last_seq BIGINT, last_decision TEXT, last_result_at {real}, sw TEXT, boot TEXT);
CREATE TABLE IF NOT EXISTS results (
  dev TEXT NOT NULL, seq BIGINT NOT NULL, kid TEXT NOT NULL, boot TEXT, iat {real}, session TEXT, request_id TEXT,
  decision TEXT NOT NULL, reason TEXT, liveness TEXT, quality TEXT, models TEXT, policy TEXT, topic TEXT NOT NULL,
  message {blob} NOT NULL, received_at {real} NOT NULL, stored_at {real} NOT NULL, worker TEXT,
  PRIMARY KEY (dev, seq));
CREATE INDEX IF NOT EXISTS results_request ON results (request_id);
CREATE TABLE IF NOT EXISTS quarantine (
  digest TEXT PRIMARY KEY, topic TEXT NOT NULL, dev TEXT, reason TEXT NOT NULL, message {blob} NOT NULL,
  received_at {real} NOT NULL, worker TEXT);
CREATE INDEX IF NOT EXISTS quarantine_received ON quarantine (received_at);
CREATE TABLE IF NOT EXISTS client_seq (dev TEXT PRIMARY KEY, last_seq BIGINT NOT NULL);
"""
# columns added after the first release: a database made before gets them on open
_ADDED = (("device_keys", "max_seq", "BIGINT"), ("devices", "keys_dropped", "BIGINT"), ("quarantine", "size", "BIGINT"))
# PostgreSQL SQLSTATE classes that say the message is at fault, not the database: data
# exception, integrity violation, program limit exceeded (e.g. an index row too large)
_DATA_CLASSES = ("22", "23", "54")


class StoreError(FacegateError):
    """The database cannot be opened or used. outage: the database (connection, lock,
    disk, serialization) failed and the same work may succeed later; False: the data was
    refused (a value no column holds) and retrying it can never succeed."""

    def __init__(self, message: str, outage: bool = True):
        super().__init__(message)
        self.outage = outage


@dataclass(frozen=True)
class KeyRow:
    dev: str
    kid: str
    pub: bytes
    state: str
    source: str
    sw: str | None
    first_seen: float
    changed_at: float
    max_seq: int | None = None


@dataclass(frozen=True)
class ResultRow:
    """One audit row (see the module docstring); liveness / quality / models are JSON text."""

    dev: str
    seq: int
    kid: str
    boot: str | None
    iat: float | None
    session: str | None
    request_id: str | None
    decision: str
    reason: str | None
    liveness: str
    quality: str
    models: str
    policy: str | None
    topic: str
    message: bytes
    received_at: float
    stored_at: float
    worker: str | None

    @classmethod
    def of(cls, r: Result, *, dev: str, kid: str, topic: str, message: bytes, received_at: float, stored_at: float,
           worker: str | None) -> ResultRow:
        """The audit row of a verified result (its maps as JSON text). A result field
        without a column of its own is still kept: in `message`, the signed bytes."""
        return cls(dev=dev, seq=r.seq, kid=kid, boot=r.boot, iat=float(r.iat), session=r.session,
                   request_id=r.request_id, decision=r.decision, reason=r.reason, liveness=json_text(r.liveness),
                   quality=json_text(r.quality), models=json_text(r.models), policy=r.policy, topic=topic,
                   message=message, received_at=received_at, stored_at=stored_at, worker=worker)


def json_text(d: object) -> str:
    """A terminal's map as the JSON text a column holds (keys sorted, bytes as hex; not a map: {})."""
    return json.dumps(d if isinstance(d, dict) else {}, sort_keys=True, default=lambda o: o.hex()
                      if isinstance(o, bytes) else str(o))


RESULT_COLUMNS = tuple(ResultRow.__dataclass_fields__)


class Store:
    """One connection; use it from one thread at a time (a lock guards it)."""

    def __init__(self, conn: Any, kind: str):
        self.conn, self.kind = conn, kind
        self.lock = threading.RLock()
        self._depth = 0
        self._db_errors: tuple = (sqlite3.Error,)
        if kind == "postgres":
            import psycopg

            self._db_errors = (psycopg.Error,)
        with self.transaction():
            for stmt in _SCHEMA.format(blob="BYTEA" if kind == "postgres" else "BLOB",
                                       real="DOUBLE PRECISION" if kind == "postgres" else "REAL").split(";"):
                if stmt.strip():
                    self.execute(stmt)
            self._add_columns()

    def _add_columns(self) -> None:
        for table, col, kind in _ADDED:  # looked up first: an ALTER TABLE would wait for every worker's batch
            if self.kind == "postgres":
                have = {r[0] for r in self.execute("SELECT column_name FROM information_schema.columns WHERE "
                                                   "table_schema = current_schema() AND table_name = ?",
                                                   (table,)).fetchall()}
            else:
                have = {r[1] for r in self.execute(f"PRAGMA table_info({table})").fetchall()}
            if col not in have:
                self.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")

    def _is_outage(self, exc: BaseException) -> bool:
        """Is `exc` (one of the driver's errors) the database failing, rather than the data?"""
        if self.kind == "sqlite":
            return isinstance(exc, sqlite3.OperationalError)  # locked, busy, disk I/O, full
        import psycopg

        state = getattr(exc, "sqlstate", None)
        if state:
            return state[:2] not in _DATA_CLASSES
        # raised by psycopg itself: a lost connection, or a value it cannot send (a NUL in text)
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))

    @classmethod
    def open(cls, cfg: StoreConfig) -> Store:
        if cfg.dsn:
            try:
                import psycopg
            except ImportError:
                raise StoreError("store.dsn needs psycopg 3: pip install 'facegate[backend]'") from None
            try:
                conn = psycopg.connect(cfg.dsn, connect_timeout=10)
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to PostgreSQL: {' '.join(str(exc).split())}") from None
            return cls(conn, "postgres")
        return cls.sqlite(Path(cfg.sqlite))

    @classmethod
    def sqlite(cls, path: Path) -> Store:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from None
        return cls(conn, "sqlite")

    # -- plumbing --------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence = ()) -> Any:
        if self.kind == "postgres":
            sql = sql.replace("?", "%s")
        return self.conn.execute(sql, tuple(params))

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Everything inside commits together or not at all (nested: joins the outer one)."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            try:
                if self.kind == "sqlite":
                    self.conn.execute("BEGIN IMMEDIATE")
            except self._db_errors as exc:
                raise StoreError(f"{self.kind}: {' '.join(str(exc).split())}", self._is_outage(exc)) from exc
            self._depth = 1
            try:
                yield self
                self._depth = 0
                self.conn.commit() if self.kind == "postgres" else self.conn.execute("COMMIT")
            except BaseException as exc:
                self._depth = 0
                try:
                    self.conn.rollback() if self.kind == "postgres" else self.conn.execute("ROLLBACK")
                except Exception:  # a broken connection has nothing to roll back
                    pass
                if isinstance(exc, self._db_errors):
                    raise StoreError(f"{self.kind}: {' '.join(str(exc).split())}", self._is_outage(exc)) from exc
                raise

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self.transaction():
            return [tuple(r) for r in self.execute(sql, params).fetchall()]

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing a broken connection: nothing left to do
            pass

    def _greatest(self) -> str:
        return "GREATEST" if self.kind == "postgres" else "MAX"

    # -- device keys -----------------------------------------------------------------------
    def keys(self, dev: str | None = None) -> list[KeyRow]:
        sql = "SELECT dev, kid, pub, state, source, sw, first_seen, changed_at, max_seq FROM device_keys"
        rows = self.query(sql + (" WHERE dev = ?" if dev else "") + " ORDER BY dev, first_seen",
                          (dev,) if dev else ())
        return [KeyRow(r[0], r[1], bytes(r[2]), *r[3:]) for r in rows]

    def add_key(self, row: KeyRow) -> bool:
        """Inside a transaction: a key not yet known for this device (False if it is)."""
        cur = self.execute("INSERT INTO device_keys (dev, kid, pub, state, source, sw, first_seen, changed_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dev, kid) DO NOTHING",
                           (row.dev, row.kid, row.pub, row.state, row.source, row.sw, row.first_seen, row.changed_at))
        return cur.rowcount == 1

    def set_key_state(self, dev: str, kid: str, state: str, now: float, max_seq: int | None = None) -> None:
        assert state in KEY_STATES, state
        self.execute("UPDATE device_keys SET state = ?, changed_at = ?, max_seq = ? WHERE dev = ? AND kid = ?",
                     (state, now, max_seq, dev, kid))

    def highest_seq(self, dev: str) -> int | None:
        """Inside a transaction: the highest seq stored for `dev` (its last_seq), or None."""
        r = self.execute("SELECT MAX(seq) FROM results WHERE dev = ?", (dev,)).fetchone()
        return None if r is None or r[0] is None else int(r[0])

    def cap_retired(self, dev: str, below: int) -> int:
        """Inside a transaction: `dev`'s retired keys vouch for no seq >= `below` (a newer
        key signed that one); returns how many keys were capped."""
        cur = self.execute("UPDATE device_keys SET max_seq = ? WHERE dev = ? AND state = 'retired' "
                           "AND (max_seq IS NULL OR max_seq >= ?)", (below - 1, dev, below))
        return cur.rowcount

    def prune_pending(self, dev: str, keep: int) -> int:
        """Inside a transaction: only `dev`'s `keep` newest pending keys stay; the others are
        deleted and counted in devices.keys_dropped. Returns how many were deleted."""
        rows = self.execute("SELECT kid FROM device_keys WHERE dev = ? AND state = 'pending' "
                            "ORDER BY first_seen DESC, kid", (dev,)).fetchall()
        drop = [r[0] for r in rows[keep:]]
        for kid in drop:
            self.execute("DELETE FROM device_keys WHERE dev = ? AND kid = ? AND state = 'pending'", (dev, kid))
        if drop:
            self._upsert_device(dev, {"keys_dropped": len(drop)},
                                "keys_dropped = COALESCE(devices.keys_dropped, 0) + excluded.keys_dropped")
        return len(drop)

    # -- results and quarantine (inside a transaction) ---------------------------------
    def insert_result(self, row: ResultRow) -> bool:
        """The audit row, once: False when (dev, seq) is already stored."""
        cols = ", ".join(RESULT_COLUMNS)
        marks = ", ".join("?" for _ in RESULT_COLUMNS)
        cur = self.execute(f"INSERT INTO results ({cols}) VALUES ({marks}) ON CONFLICT (dev, seq) DO NOTHING",
                           [getattr(row, c) for c in RESULT_COLUMNS])
        return cur.rowcount == 1

    def stored_message(self, dev: str, seq: int) -> bytes | None:
        r = self.execute("SELECT message FROM results WHERE dev = ? AND seq = ?", (dev, seq)).fetchone()
        return bytes(r[0]) if r else None

    def quarantine(self, digest: str, topic: str, dev: str | None, reason: str, message: bytes,
                   received_at: float, worker: str | None, size: int | None = None) -> bool:
        """`message` as kept (maybe cut short), `size` the whole message's length."""
        cur = self.execute("INSERT INTO quarantine (digest, topic, dev, reason, message, size, received_at, worker) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                           (digest, topic, dev, reason, message, len(message) if size is None else size,
                            received_at, worker))
        return cur.rowcount == 1

    def purge_quarantine(self, before: float) -> int:
        """Delete quarantine rows received before `before` (Unix s); returns how many."""
        with self.transaction():
            return self.execute("DELETE FROM quarantine WHERE received_at < ?", (before,)).rowcount

    # -- device status ---------------------------------------------------------------------
    def _upsert_device(self, dev: str, cols: dict, update_sql: str) -> None:
        names = ["dev", *cols]
        self.execute(f"INSERT INTO devices ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
                     f"ON CONFLICT (dev) DO UPDATE SET {update_sql}", [dev, *cols.values()])

    def device_seen(self, dev: str, now: float) -> None:
        g = self._greatest()
        self._upsert_device(dev, {"last_seen": now},
                            f"last_seen = {g}(COALESCE(devices.last_seen, 0), excluded.last_seen)")

    def device_status(self, dev: str, status: str, now: float, seen: bool = True) -> None:
        """seen=False for a retained status (sent by the broker, maybe long after the device)."""
        g = self._greatest()
        self._upsert_device(dev, {"status": status, "status_at": now, "last_seen": now if seen else None},
                            "status = excluded.status, status_at = excluded.status_at, "
                            f"last_seen = {g}(COALESCE(devices.last_seen, 0), COALESCE(excluded.last_seen, 0))")

    def device_health(self, dev: str, health_json: str, outbox_depth: int | None, now: float) -> None:
        g = self._greatest()
        self._upsert_device(dev, {"health": health_json, "outbox_depth": outbox_depth, "last_seen": now},
                            "health = excluded.health, outbox_depth = excluded.outbox_depth, "
                            f"last_seen = {g}(COALESCE(devices.last_seen, 0), excluded.last_seen)")

    def device_attest(self, dev: str, sw: str | None, boot: str | None, now: float) -> None:
        g = self._greatest()
        self._upsert_device(dev, {"sw": sw, "boot": boot, "last_seen": now},
                            "sw = excluded.sw, boot = excluded.boot, "
                            f"last_seen = {g}(COALESCE(devices.last_seen, 0), excluded.last_seen)")

    def device_result(self, dev: str, seq: int, decision: str, now: float) -> None:
        """The newest result (by seq) is the device's last decision."""
        g = self._greatest()
        newer = "excluded.last_seq > COALESCE(devices.last_seq, -1)"
        self._upsert_device(dev, {"last_seq": seq, "last_decision": decision, "last_result_at": now, "last_seen": now},
                            f"last_decision = CASE WHEN {newer} THEN excluded.last_decision ELSE devices.last_decision END, "
                            f"last_result_at = CASE WHEN {newer} THEN excluded.last_result_at ELSE devices.last_result_at END, "
                            f"last_seq = {g}(COALESCE(devices.last_seq, -1), excluded.last_seq), "
                            f"last_seen = {g}(COALESCE(devices.last_seen, 0), excluded.last_seen)")

    def devices(self) -> list[dict]:
        cols = ("dev", "status", "status_at", "last_seen", "health", "outbox_depth", "last_seq", "last_decision",
                "last_result_at", "sw", "boot", "keys_dropped")
        return [dict(zip(cols, r)) for r in self.query(f"SELECT {', '.join(cols)} FROM devices ORDER BY dev")]

    # -- the request client's seq high-water mark -------------------------------------------
    def advance_client_seq(self, dev: str, seq: int) -> bool:
        """True when `seq` is above every seq the client accepted from `dev` (and records it)."""
        with self.transaction():
            cur = self.execute("INSERT INTO client_seq (dev, last_seq) VALUES (?, ?) ON CONFLICT (dev) DO UPDATE "
                               "SET last_seq = excluded.last_seq WHERE client_seq.last_seq < excluded.last_seq",
                               (dev, seq))
            return cur.rowcount == 1
