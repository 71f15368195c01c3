"""The outbox on a real SQLite file: seq allocation, PUBACK bookkeeping, the redelivery
window for a broker that crashed (also through Delivery across a long outage), expiry, and
an outbox written by 0.1.0 (no `acked`)."""
from __future__ import annotations

import os
import sqlite3

from facegate.delivery import Delivery
from facegate.outbox import SCHEMA, Outbox


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def rows(seq: int):
    return [("dev/result", f"signed {seq}".encode(), None), ("replies/x", f"reply {seq}".encode(), b"c")]


def test_acknowledged_rows_come_back_after_a_reconnect_within_the_window(tmp_path):
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", clock=clock, keep_acked_s=60)
    assert [ob.add(rows) for _ in range(3)] == [1, 2, 3]
    for p in ob.pending():
        if p.seq <= 2:
            ob.delivered(p.seq, p.topic)
    assert ob.depth() == 1 and [p.seq for p in ob.pending()] == [3, 3]
    clock.t += 30
    ob.delivered(3, "dev/result")  # seq 3 still waits for its reply topic
    assert ob.depth() == 1
    assert ob.redeliver(clock.t - 60) == 5  # everything acknowledged in the last 60 s
    again = ob.pending()
    assert [(p.seq, p.topic) for p in again] == [(s, t) for s in (1, 2, 3) for t in ("dev/result", "replies/x")]
    assert again[0].message == b"signed 1" and again[1].correlation == b"c"  # the same bytes
    assert ob.depth() == 3


def test_the_window_closes_and_old_acknowledged_rows_are_purged_uncounted(tmp_path):
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", clock=clock, keep_acked_s=60)
    ob.add(rows)
    for p in ob.pending():
        ob.delivered(p.seq, p.topic)
    clock.t += 61
    assert ob.redeliver(clock.t - 60) == 0 and ob.pending() == []
    assert ob.expire() == 0 and ob.expired == 0
    n = sqlite3.connect(tmp_path / "o.sqlite").execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert n == 0


def test_without_a_window_a_delivered_row_is_gone_at_once(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite")
    ob.add(rows)
    for p in ob.pending():
        ob.delivered(p.seq, p.topic)
    assert ob.redeliver(0.0) == 0 and ob.depth() == 0
    assert sqlite3.connect(tmp_path / "o.sqlite").execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0


def test_expiry_counts_undelivered_results_only(tmp_path):
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", max_age_s=100, max_rows=10, clock=clock, keep_acked_s=1000)
    ob.add(rows)
    ob.add(rows)
    for p in ob.pending():
        if p.seq == 1:
            ob.delivered(p.seq, p.topic)
    clock.t += 101
    assert ob.expire() == 1 and ob.expired == 1  # seq 2 expired undelivered; seq 1 was delivered
    assert ob.redeliver(0.0) == 2 and {p.seq for p in ob.pending()} == {1}
    for _ in range(12):
        ob.add(rows)
    assert ob.expire() == 3 and ob.depth() == 10 and ob.last_seq == 14  # beyond max_rows: oldest first


def test_an_outbox_from_before_the_window_opens_and_keeps_its_rows(tmp_path):
    db = sqlite3.connect(tmp_path / "o.sqlite")
    db.executescript(SCHEMA.replace(" acked REAL,", ""))
    db.execute("INSERT INTO results VALUES (7, 'dev/result', x'01', NULL, 5.0)")
    db.execute("INSERT INTO meta VALUES ('last_seq', 7)")
    db.commit()
    db.close()
    ob = Outbox(tmp_path / "o.sqlite", keep_acked_s=60)
    assert [p.seq for p in ob.pending()] == [7] and ob.last_seq == 7
    assert ob.add(rows) == 8


def test_the_window_is_counted_back_from_the_lost_connection_not_from_the_reconnect(tmp_path):
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", clock=clock, keep_acked_s=60)
    dl = Delivery(ob, None, max_inflight=10)
    for _ in range(3):
        ob.add(rows)
        clock.t += 40
        for p in ob.pending():
            ob.delivered(p.seq, p.topic)  # acknowledged at +40, +80, +120
    clock.t += 1
    dl.connection_lost()  # at +121
    for _ in range(10):  # a ten-minute outage: the health timer purges meanwhile
        clock.t += 60
        ob.expire(acked_before=dl.acked_cutoff())
    dl.connected()
    assert sorted({p.seq for p in ob.pending()}) == [2, 3]  # acknowledged within 60 s of the loss
    for p in ob.pending():
        ob.delivered(p.seq, p.topic)
    clock.t += 61
    ob.expire(acked_before=dl.acked_cutoff())
    dl.connection_lost()
    dl.connected()
    assert ob.pending() == []  # connected for more than the window: nothing left to send again


def test_a_clock_that_ran_ahead_cannot_reopen_the_replay_window(tmp_path):
    """Records are dropped when their exp passes by the outbox clock. A clock stepped an
    hour ahead drops them early; stepped back, the same command would look new, but its exp
    is at or below the floor (the highest exp dropped), persisted across restarts."""
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", clock=clock)
    exp = clock.t + 120
    assert ob.remember("r1", b"n1", exp) is None
    assert ob.remember("r1", b"n1", exp) == "same_command"
    ob.expire()  # nothing has expired yet
    assert ob.replay_floor == 0.0 and ob.remember("r1", b"n1", exp) == "same_command"
    clock.t += 3600  # the clock steps ahead, the purge drops r1 ...
    ob.expire()
    assert ob.replay_floor == exp
    clock.t -= 3600  # ... and back
    assert ob.remember("r1", b"n1", exp) == "replay_floor"
    assert ob.remember("r2", b"n2", exp) == "replay_floor"  # whatever its ids: it could have been seen
    assert ob.remember("r3", b"n3", exp + 0.5) is None  # a later command is fine
    ob.close()
    again = Outbox(tmp_path / "o.sqlite", clock=clock)  # a restart keeps the floor
    assert again.replay_floor == exp and again.remember("r1", b"n1", exp) == "replay_floor"
    clock.t += 3600
    again.expire()  # the floor only rises
    assert again.replay_floor == exp + 0.5
    clock.t -= 7200
    again.expire()
    assert again.replay_floor == exp + 0.5


def _disk_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_the_space_of_purged_rows_goes_back_to_the_disk(tmp_path):
    """Issue 15 finding 4: the outbox never vacuumed and its WAL had no size limit, so a
    burst left the state dir full for good. Now the purge gives the pages back and cuts
    the WAL."""
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path, max_rows=10)
    ob.add(lambda seq: [("t", b"small", None)])
    ob.expire()
    baseline = _disk_bytes(path)
    for _ in range(300):  # a burst: 300 results of 64 KiB, more than max_rows
        ob.add(lambda seq: [("t", os.urandom(64 * 1024), None)])
    full = _disk_bytes(path)
    assert full > 300 * 64 * 1024
    ob.expire()  # the oldest beyond max_rows expire ...
    for p in ob.pending(1000):  # ... and the rest is delivered
        ob.delivered(p.seq, p.topic)
    ob.expire()
    after = _disk_bytes(path)
    assert after < baseline + 2 * 2**20, (baseline, full, after)
    assert ob.depth() == 0 and ob.last_seq == 301
    ob.close()
    again = Outbox(path)
    assert again.last_seq == 301 and again._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again.close()


def test_an_outbox_made_without_auto_vacuum_is_converted_on_open(tmp_path):
    path = tmp_path / "outbox.sqlite"
    old = sqlite3.connect(path)  # as an earlier version made it: no auto_vacuum
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                      "INSERT INTO meta VALUES ('last_seq', 41);")
    old.close()
    ob = Outbox(path)
    assert ob._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2 and ob.last_seq == 41
    ob.close()


def test_a_full_disk_keeps_command_records_in_memory_until_there_is_room(tmp_path):
    """With the disk full, an authentic command's record cannot be written; it used to be
    dropped unanswered (OutboxError). The record is held in memory, refuses replays like the
    table does, and is written once there is room (a new outbox on the file sees it)."""
    clock = Clock()
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, clock=clock)
    ob._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
    ob._db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: a full disk
    exp = clock.t + 300
    n = 0
    while ob.unstored_seen == 0:
        assert ob.remember(f"req-{n}", os.urandom(16) + bytes([n % 256]), exp) is None
        n += 1
        assert n < 10_000, "the page limit never filled"
    held = f"req-{n - 1}"
    nonce = os.urandom(16)
    assert ob.remember("held-2", nonce, exp) is None and ob.unstored_seen >= 1  # table or memory
    assert ob.remember("held-2", nonce, exp) == "same_command"
    assert ob.remember("held-2", os.urandom(16), exp) == "replayed_request_id"
    assert ob.remember("other", nonce, exp) == "replayed_nonce"
    ob._db.execute("PRAGMA max_page_count = 1073741823")  # room again
    assert ob.remember("after", os.urandom(16), exp) is None and ob.unstored_seen == 0
    ob.close()
    again = Outbox(path, clock=clock)
    assert again.remember(held, os.urandom(16), exp) == "replayed_request_id"
    assert again.remember("held-2", os.urandom(16), exp) == "replayed_request_id"
    again.close()
