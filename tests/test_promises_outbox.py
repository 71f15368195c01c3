"""Outbox promises the older tests could not see break (issue 25): each test names the
mutation of device/facegate/outbox.py it was checked against by hand (applied, test
failed, restored)."""
from __future__ import annotations

import os
import sqlite3

from facegate import outbox as outbox_mod
from facegate.outbox import Outbox


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _fill_until_held_in_memory(ob: Outbox, exp: float) -> None:
    """Remember commands until the page limit (a full disk) makes the outbox hold one in memory."""
    n = 0
    while ob.unstored_seen == 0:
        assert ob.remember(f"fill-{n}", os.urandom(16), exp) is None
        n += 1
        assert n < 10_000, "the page limit never filled"


def test_the_replay_floor_never_goes_down_when_an_older_record_is_dropped_later(tmp_path):
    """A record held in memory on a full disk reaches the table only after a purge freed
    room - by then the floor may already be above its exp. Dropping it must not lower the
    floor: a command between the two exps could run twice.
    Mutation: `if row is None or float(row[0]) < gone:` -> `if True:` in _forget_seen
    (the floor follows the last drop) - this test fails (remember answers None).
    It also found a bug: the first expire() below raised OutboxError ("cannot commit - no
    transaction is active"): on SQLITE_FULL SQLite rolled back expire()'s whole transaction,
    the purge went on in autocommit and COMMIT found nothing. The held records are now
    flushed in a transaction of their own (reverting that fails here too)."""
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", clock=clock)
    top, mid = clock.t + 1000, clock.t + 100
    assert ob.remember("top", b"n-top", top) is None  # in the table
    ob._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
    ob._db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: a full disk
    _fill_until_held_in_memory(ob, mid)  # the table fills with `mid`, one `mid` waits in memory
    clock.t = top + 10
    ob.expire()  # the memory record cannot be written yet; the table's are dropped: floor = top
    assert ob.replay_floor == top and ob.unstored_seen == 1
    ob.expire()  # now there is room: the held record (exp = mid < floor) is written, then dropped
    assert ob.unstored_seen == 0
    assert ob.replay_floor == top
    assert ob.remember("between", b"n-between", (mid + top) / 2) == "replay_floor"
    ob.close()


def test_the_outbox_connection_syncs_fully_whatever_sqlite_s_default(tmp_path, monkeypatch):
    """A power cut must not lose a result the broker was told about: every commit is
    fsynced (synchronous=FULL, 2). SQLite's compiled-in default is FULL on Debian but NORMAL
    or OFF on other builds, so the test starts each connection at OFF (as such a build
    would) and checks the outbox raised it.
    Mutations: deleting `PRAGMA synchronous=FULL`, or FULL -> NORMAL - this test fails."""
    real_connect = sqlite3.connect

    def weak_build(*a, **kw):
        db = real_connect(*a, **kw)
        db.execute("PRAGMA synchronous=OFF")
        return db

    monkeypatch.setattr(outbox_mod.sqlite3, "connect", weak_build)
    ob = Outbox(tmp_path / "o.sqlite")
    assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ob.add(lambda seq: [("t", b"m", None)])
    ob.close()
