"""The on-disk outbox: signed results wait here (SQLite, WAL, synchronous=FULL) until the
broker acknowledged them. Also holds the persisted sequence counter and the request ids /
nonces of accepted commands (replay protection across restarts and wall-clock steps: the
records are dropped once their `exp` passed, and a persisted floor - the highest `exp`
dropped - refuses every command at or below it, so a clock that ran ahead and came back
cannot make an old command look new).

A result gets its `seq` and is written in one transaction, so a crash or power cut either
loses the whole not-yet-produced result or keeps it; `seq` never goes back. A result
published on several topics (R/result and an MQTT 5 response topic) is one row per topic
with the same seq. Undelivered rows expire by age or when more than `max_rows` wait;
expiries are counted, never silent.

An acknowledged row is kept for `keep_acked_s` more (then purged): a broker that crashes
forgets what it acknowledged since its last save (Mosquitto saves every autosave_interval),
so after a reconnect `redeliver(since)` puts the rows acknowledged in the last keep_acked_s
before the connection was lost back in line. A backend sees them again with the same seq
and the same bytes (at least once).
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import pidlock
from .errors import FacegateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER NOT NULL, topic TEXT NOT NULL, message BLOB NOT NULL,
    correlation BLOB, created REAL NOT NULL, acked REAL, PRIMARY KEY (seq, topic));
CREATE TABLE IF NOT EXISTS seen (
    request_id TEXT PRIMARY KEY, nonce BLOB NOT NULL UNIQUE, exp REAL NOT NULL);
"""


JOURNAL_LIMIT_BYTES = 1 << 20  # the WAL is cut back to this after each checkpoint
COMPACT_MIN_FREE_PAGES = 64  # free pages (4 KiB each) worth an incremental vacuum after a purge
WAL_TRUNCATE_BYTES = 64 * 1024  # a purge cuts a WAL beyond this back to nothing


class OutboxError(FacegateError):
    """The outbox cannot store a result (disk full, database unusable)."""


class StateDirBusy(OutboxError):
    """Another daemon holds the state dir (its outbox, seq counter and status file)."""


def lock_state_dir(state_dir: Path) -> int:
    """One daemon per state dir: an exclusive flock on {state_dir}/daemon.lock, held until
    the returned descriptor is closed (by the process's end at the latest), the holder's
    pid written in it. Two daemons on one config kicked each other off the broker (one
    client id) and left `status` saying 'NOT running' while one ran."""
    try:
        return pidlock.take(Path(state_dir) / "daemon.lock")
    except pidlock.Busy as busy:
        raise StateDirBusy(f"another facegate daemon (pid {busy.holder}) is running on state dir {state_dir}: stop "
                           "it first (systemctl stop facegate), or give this one its own daemon.state_dir") from None


@dataclass(frozen=True)
class Pending:
    """One undelivered message: the signed bytes for one topic."""

    seq: int
    topic: str
    message: bytes
    correlation: bytes | None
    created: float


def private_dir(path: Path) -> Path:
    """Make the state directory (and its parents) if absent; one this call made is mode
    0700 whatever the umask (an existing one, e.g. systemd's StateDirectory, is left as is)."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
    return path


def private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (never through a symlink),
    so that what SQLite makes beside it (-wal, -shm: it copies the database's mode) is
    private too. An existing file is left as is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Outbox:
    """Thread-safe; one connection guarded by a lock (the daemon's threads share it)."""

    def __init__(self, path: str | Path, max_age_s: float = 7 * 86400, max_rows: int = 100_000,
                 clock: Callable[[], float] = time.time, keep_acked_s: float = 0.0):
        self.path = Path(path)
        self.max_age_s, self.max_rows, self.clock = max_age_s, max_rows, clock
        self.keep_acked_s = keep_acked_s
        self._lock = threading.RLock()
        # command records the full disk could not take: request_id -> (nonce, exp), checked
        # like the table and written to it as soon as there is room (_flush_seen)
        self._unstored_seen: dict[str, tuple[bytes, float]] = {}
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file (else below)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT_BYTES}")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # an outbox made before: convert once
                try:
                    self._db.execute("VACUUM")
                except sqlite3.Error:
                    pass  # e.g. no room for the copy: it stays as it is and is tried at the next start
            if "acked" not in {r[1] for r in self._db.execute("PRAGMA table_info(results)")}:
                self._db.execute("ALTER TABLE results ADD COLUMN acked REAL")  # an outbox of 0.1.0
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- counters ----------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._meta("last_seq")

    # -- results -----------------------------------------------------------------------
    def add(self, make: Callable[[int], list[tuple[str, bytes, bytes | None]]]) -> int:
        """Allocate the next seq, call make(seq) -> [(topic, signed message, correlation)]
        and store the rows, all in one transaction. Returns the seq. Raises OutboxError
        (e.g. disk full); then nothing was stored and seq was not used."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    seq = self._meta("last_seq") + 1
                    now = self.clock()
                    for topic, message, corr in make(seq):
                        self._db.execute("INSERT INTO results (seq, topic, message, correlation, created) "
                                         "VALUES (?, ?, ?, ?, ?)", (seq, topic, message, corr, now))
                    self._set_meta("last_seq", seq)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox cannot store a result: {exc}") from None
            return seq

    def pending(self, limit: int = 100, after: tuple[int, str] | None = None) -> list[Pending]:
        """Undelivered messages in (seq, topic) order, starting after `after`."""
        with self._lock:
            if after is None:
                rows = self._db.execute("SELECT seq, topic, message, correlation, created FROM results "
                                        "WHERE acked IS NULL ORDER BY seq, topic LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute("SELECT seq, topic, message, correlation, created FROM results "
                                        "WHERE acked IS NULL AND (seq, topic) > (?, ?) ORDER BY seq, topic LIMIT ?",
                                        (*after, limit)).fetchall()
        return [Pending(*r) for r in rows]

    def delivered(self, seq: int, topic: str) -> None:
        """The broker acknowledged this message: no longer pending (kept keep_acked_s for
        redeliver(), or dropped at once when that is 0)."""
        with self._lock:
            try:
                if self.keep_acked_s > 0:
                    self._db.execute("UPDATE results SET acked = ? WHERE seq = ? AND topic = ?",
                                     (self.clock(), seq, topic))
                else:
                    self._db.execute("DELETE FROM results WHERE seq = ? AND topic = ?", (seq, topic))
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox: {exc}") from None

    def redeliver(self, since: float) -> int:
        """Put the rows acknowledged at or after `since` (outbox clock) back in line (after
        a reconnect: the broker may have lost them). Returns how many rows."""
        with self._lock:
            try:
                cur = self._db.execute("UPDATE results SET acked = NULL WHERE acked >= ?", (since,))
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox: {exc}") from None
            return cur.rowcount

    def depth(self) -> int:
        """Results (distinct seq) still waiting for delivery."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(DISTINCT seq) FROM results WHERE acked IS NULL").fetchone()[0])

    @property
    def expired(self) -> int:
        with self._lock:
            return self._meta("expired")

    def expire(self, acked_before: float | None = None) -> int:
        """Drop undelivered results older than max_age_s, then the oldest beyond max_rows;
        count them. Purge rows acknowledged before `acked_before` (default: keep_acked_s
        ago; not counted, they were delivered). Returns how many results expired now."""
        with self._lock:
            try:
                # the records held in memory first, in a transaction of their own: on a full
                # disk SQLite may roll back the whole transaction, not just the INSERT
                self._db.execute("BEGIN IMMEDIATE")
                self._flush_seen()
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
                self._db.execute("BEGIN IMMEDIATE")
                now = self.clock()
                self._db.execute("DELETE FROM results WHERE acked < ?",
                                 (now - self.keep_acked_s if acked_before is None else acked_before,))
                seqs = {r[0] for r in self._db.execute(
                    "SELECT DISTINCT seq FROM results WHERE acked IS NULL AND created < ?", (now - self.max_age_s,))}
                over = self.depth() - self.max_rows
                if over > 0:
                    seqs |= {r[0] for r in self._db.execute(
                        "SELECT DISTINCT seq FROM results WHERE acked IS NULL ORDER BY seq LIMIT ?", (over,))}
                for s in seqs:
                    self._db.execute("DELETE FROM results WHERE seq = ? AND acked IS NULL", (s,))
                self._forget_seen(self.clock())
                if seqs:
                    self._set_meta("expired", self._meta("expired") + len(seqs))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise OutboxError(f"outbox: {exc}") from None
            self._compact()
            return len(seqs)

    def _compact(self) -> None:
        """After a purge: give the freed pages back to the file system (incremental vacuum,
        when at least COMPACT_MIN_FREE_PAGES are free) and cut the WAL to nothing
        (checkpoint TRUNCATE) when it grew beyond WAL_TRUNCATE_BYTES or pages were freed:
        the disk recovers by itself once a burst is delivered or expired. Best effort."""
        try:
            freed = False
            if self._db.execute("PRAGMA freelist_count").fetchone()[0] >= COMPACT_MIN_FREE_PAGES:
                self._db.executescript("PRAGMA incremental_vacuum;")  # sqlite3_exec: every step, not only the first
                freed = True
            wal = self.path.with_name(self.path.name + "-wal")
            if freed or (wal.exists() and wal.stat().st_size > WAL_TRUNCATE_BYTES):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except (sqlite3.Error, OSError):
            pass  # a full disk or a reader in the way: the next purge tries again

    # -- replay protection -------------------------------------------------------------
    @property
    def replay_floor(self) -> float:
        """The highest `exp` of any forgotten command record (0.0: none yet). It only rises,
        whatever the wall clock does afterwards."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'replay_floor'").fetchone()
            return float(row[0]) if row else 0.0

    def _forget_seen(self, now: float) -> None:
        """Drop the records of commands expired by `now` (inside expire()'s transaction),
        raising replay_floor to the highest exp dropped: a clock that runs ahead, even for
        a moment, can make records go early, and once it is back those commands would look
        new - so everything at or below the floor is refused from then on (remember())."""
        gone = self._db.execute("SELECT MAX(exp) FROM seen WHERE exp < ?", (now,)).fetchone()[0]
        if gone is None:
            return
        row = self._db.execute("SELECT value FROM meta WHERE key = 'replay_floor'").fetchone()
        if row is None or float(row[0]) < gone:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('replay_floor', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (float(gone),))
        self._db.execute("DELETE FROM seen WHERE exp < ?", (now,))

    @property
    def unstored_seen(self) -> int:
        """Command records held in memory because the disk was full."""
        with self._lock:
            return len(self._unstored_seen)

    def _flush_seen(self) -> None:
        """Write the records held in memory to the table (all or none); they stay in
        memory while the disk is still full."""
        if not self._unstored_seen:
            return
        try:
            self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?)",
                                 [(rid, nonce, exp) for rid, (nonce, exp) in self._unstored_seen.items()])
        except sqlite3.Error as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            return
        self._unstored_seen.clear()

    def _seen_before(self, request_id: str, nonce: bytes) -> str | None:
        row = self._db.execute("SELECT nonce FROM seen WHERE request_id = ?", (request_id,)).fetchone()
        held = self._unstored_seen.get(request_id)
        known = bytes(row[0]) if row else held[0] if held else None
        if known is not None:
            return "same_command" if known == nonce else "replayed_request_id"
        if (self._db.execute("SELECT 1 FROM seen WHERE nonce = ?", (nonce,)).fetchone()
                or any(n == nonce for n, _ in self._unstored_seen.values())):
            return "replayed_nonce"
        return None

    def remember(self, request_id: str, nonce: bytes, exp: float) -> str | None:
        """Record an accepted command (kept until `exp` passes); returns None, or
        'replayed_request_id' / 'replayed_nonce' when either was seen before (and is not
        yet expired), 'same_command' when this request id came before with this very nonce,
        or 'replay_floor' when `exp` is at or below replay_floor: such a command's record
        may be gone already, so whether it ran cannot be told, and it is refused.
        A full disk does not lose the record: it is held in memory, checked like the
        table, and written as soon as there is room (so the command can still be answered
        `storage_full`, once). Any other database error raises OutboxError."""
        with self._lock:
            try:
                if exp <= self.replay_floor:
                    return "replay_floor"
                self._flush_seen()
                seen = self._seen_before(request_id, nonce)
                if seen:
                    return seen
                try:
                    self._db.execute("INSERT INTO seen VALUES (?, ?, ?)", (request_id, nonce, exp))
                except sqlite3.Error as exc:
                    if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                        raise
                    self._unstored_seen[request_id] = (nonce, exp)
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox: {exc}") from None
        return None
