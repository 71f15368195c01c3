"""Outbox promises the older tests could not see break (issue 25): each test names the
mutation of device/facegate/outbox.py it was checked against by hand (applied, test
failed, restored)."""
from __future__ import annotations

import os
import sqlite3

import pytest

from facegate import outbox as outbox_mod
from facegate.outbox import Outbox


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _fill_until_held_in_memory(ob: Outbox, exp: float) -> tuple[str, bytes]:
    """Remember commands until the page limit (a full disk) makes the outbox hold one in
    memory; returns that one's (request_id, nonce)."""
    n = 0
    while ob.unstored_seen == 0:
        rid, nonce = f"fill-{n}", os.urandom(16)
        assert ob.remember(rid, nonce, exp) is None
        n += 1
        assert n < 10_000, "the page limit never filled"
    return rid, nonce


def _full_disk(ob: Outbox) -> None:
    ob._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
    ob._db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: a full disk


def rows(seq: int):
    return [("dev/result", f"signed {seq}".encode(), None), ("replies/x", f"reply {seq}".encode(), b"c")]


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
    _full_disk(ob)
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


def test_a_record_held_in_memory_refuses_replays_like_the_table(tmp_path):
    """Mutation-testing survivors: `held = None` / `held[1]` in _seen_before (the memory
    records never consulted) - the older full-disk test could not tell table from memory."""
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", clock=clock)
    _full_disk(ob)
    rid, nonce = _fill_until_held_in_memory(ob, clock.t + 300)
    assert ob.unstored_seen == 1
    assert ob.remember(rid, nonce, clock.t + 300) == "same_command"
    assert ob.remember(rid, os.urandom(16), clock.t + 300) == "replayed_request_id"
    assert ob.remember("another", nonce, clock.t + 300) == "replayed_nonce"
    ob.close()


def test_expiry_counts_by_age_and_by_number_together_and_accumulates(tmp_path):
    """Survivors: `over > 0` -> `over > 1` (one row too many is kept), `seqs |=` -> `seqs =`
    (the aged ones forgotten when the count is exceeded too), the `expired` counter reset
    instead of added to."""
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", clock=clock, max_age_s=100, max_rows=2)
    ob.add(rows)  # seq 1: will be too old
    clock.t += 150
    for _ in range(3):  # seqs 2-4: young, one more than max_rows after 1 has gone
        ob.add(rows)
    assert ob.expire() == 2 and ob.expired == 2
    assert sorted({p.seq for p in ob.pending()}) == [3, 4]
    ob.add(rows)  # seq 5: again one too many
    assert ob.expire() == 1 and ob.expired == 3
    assert sorted({p.seq for p in ob.pending()}) == [4, 5]
    ob.close()
    # an aged row that is not among the oldest seqs (written while the clock stood behind)
    # goes as well when the count is exceeded at the same time
    clock = Clock()
    ob = Outbox(tmp_path / "o2.sqlite", clock=clock, max_age_s=100, max_rows=2)
    for _ in range(3):
        ob.add(rows)
    clock.t -= 500
    ob.add(rows)  # seq 4, created long ago by the clock
    clock.t += 510
    ob.expire()
    assert 4 not in {p.seq for p in ob.pending()}
    ob.close()


def test_pending_after_a_row_and_a_short_acknowledgement_window(tmp_path):
    """Survivors: pending(after=...) never called by a test (the demo pages with it);
    `keep_acked_s > 0` -> `> 1` (a window under a second dropped rows at once)."""
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", clock=clock, keep_acked_s=0.5)
    for _ in range(3):
        ob.add(rows)
    after = [(p.seq, p.topic) for p in ob.pending(after=(1, "replies/x"))]
    assert after == [(2, "dev/result"), (2, "replies/x"), (3, "dev/result"), (3, "replies/x")]
    assert [(p.seq, p.topic) for p in ob.pending(limit=1, after=(2, "dev/result"))] == [(2, "replies/x")]
    ob.delivered(1, "dev/result")
    assert ob.redeliver(clock.t - 0.4) == 1  # kept for the half-second window, so it comes back
    ob.close()


def test_a_result_whose_making_fails_leaves_nothing_and_the_outbox_usable(tmp_path):
    """Survivors: add()'s ROLLBACK replaced by a bad statement (the maker's own error turned
    into an OutboxError, the transaction left open)."""
    ob = Outbox(tmp_path / "o.sqlite")

    def broken(seq):
        raise ValueError("signing failed")

    try:
        ob.add(broken)
    except ValueError:
        pass
    else:
        raise AssertionError("the maker's error was swallowed")
    assert ob.last_seq == 0 and ob.depth() == 0 and not ob._db.in_transaction
    assert ob.add(rows) == 1
    ob.close()


def test_an_outbox_in_a_missing_directory_used_from_another_thread(tmp_path):
    """Survivors: mkdir without parents=True (a fresh state dir two levels deep), the
    connection bound to its opening thread (the delivery thread shares it)."""
    import threading

    ob = Outbox(tmp_path / "var" / "lib" / "facegate" / "outbox.sqlite")
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(ob.add(rows)))
    t.start()
    t.join(10)
    assert got == [1] and ob.depth() == 1
    ob.close()


def test_one_daemon_per_state_dir_and_the_second_is_told_who_and_what_to_do(tmp_path):
    """lock_state_dir: {state_dir}/daemon.lock holds the holder's pid; a second taker is
    refused with that pid, the state dir and the two ways out."""
    fd = outbox_mod.lock_state_dir(tmp_path)
    try:
        assert (tmp_path / "daemon.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(outbox_mod.StateDirBusy) as err:
            outbox_mod.lock_state_dir(tmp_path)
        assert str(err.value) == (f"another facegate daemon (pid {os.getpid()}) is running on state dir {tmp_path}: "
                                  "stop it first (systemctl stop facegate), or give this one its own daemon.state_dir")
        other = tmp_path / "other"
        other.mkdir()
        os.close(outbox_mod.lock_state_dir(other))  # another state dir is another lock
    finally:
        os.close(fd)
    os.close(outbox_mod.lock_state_dir(tmp_path))  # free again once the holder let go


def test_an_unusable_outbox_says_so_with_sqlite_s_reason(tmp_path):
    """Every failure is an OutboxError naming the cause (the daemon logs it; health counts it)."""
    box = Outbox(tmp_path / "outbox.sqlite")
    box.close()
    why = "Cannot operate on a closed database."
    calls = {"add": (lambda: box.add(lambda seq: [("t", b"m", None)]), f"outbox cannot store a result: {why}"),
             "delivered": (lambda: box.delivered(1, "t"), f"outbox: {why}"),
             "redeliver": (lambda: box.redeliver(0.0), f"outbox: {why}"),
             "remember": (lambda: box.remember("r", b"n", 1e12), f"outbox: {why}"),
             "expire": (lambda: box.expire(), f"outbox: {why}")}
    for name, (call, said) in calls.items():
        with pytest.raises(outbox_mod.OutboxError) as err:
            call()
        assert str(err.value) == said, name
    (tmp_path / "adir").mkdir()
    with pytest.raises(outbox_mod.OutboxError) as err:
        Outbox(tmp_path / "adir")
    assert str(err.value).startswith(f"cannot open outbox {tmp_path / 'adir'}: ") and len(str(err.value)) > 40


def test_pending_hands_out_100_at_a_time_by_default_in_seq_order(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite")
    try:
        for _ in range(150):
            box.add(lambda seq: [("t", b"m%d" % seq, None)])
        first = box.pending()
        assert [p.seq for p in first] == list(range(1, 101))
        assert [p.seq for p in box.pending(after=(first[-1].seq, first[-1].topic))] == list(range(101, 151))
    finally:
        box.close()


def test_the_state_dir_and_the_outbox_file_are_made_private_and_what_exists_is_left_alone(tmp_path):
    """private_dir: a directory it makes is 0700 whatever the umask, one that exists (systemd's
    StateDirectory) keeps its mode; private_file: a file it makes is 0600 (SQLite copies the
    database's mode to -wal / -shm), an existing file keeps its mode and bytes, and a symlink
    is never followed."""
    old = os.umask(0)
    try:
        made = outbox_mod.private_dir(tmp_path / "a" / "state")
        assert made == tmp_path / "a" / "state" and made.stat().st_mode & 0o7777 == 0o700
        outbox_mod.private_file(made / "outbox.sqlite")
        assert (made / "outbox.sqlite").stat().st_mode & 0o7777 == 0o600
        assert (made / "outbox.sqlite").read_bytes() == b""
    finally:
        os.umask(old)
    given = tmp_path / "given"
    given.mkdir(mode=0o750)
    given.chmod(0o750)
    assert outbox_mod.private_dir(given) == given and given.stat().st_mode & 0o7777 == 0o750
    existing = given / "outbox.sqlite"
    existing.write_bytes(b"old")
    existing.chmod(0o640)
    outbox_mod.private_file(existing)
    assert existing.stat().st_mode & 0o7777 == 0o640 and existing.read_bytes() == b"old"
    target = tmp_path / "elsewhere"
    (given / "link.sqlite").symlink_to(target)
    outbox_mod.private_file(given / "link.sqlite")
    assert not target.exists()  # not created through the link


def test_a_purge_cuts_a_wal_grown_past_64_kib_back_to_nothing_even_with_few_pages_freed(tmp_path):
    """Many small commits grow the WAL (every commit appends its pages) while the rows
    free too few pages for a vacuum: the purge still cuts the WAL to nothing (the disk
    recovers after a burst), and a small WAL is left alone."""
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    wal = tmp_path / "outbox.sqlite-wal"
    try:
        for _ in range(40):  # 40 commits of one small row: a WAL of many frames, few pages of data
            box.add(lambda seq: [("t", b"m%d" % seq, None)])
        assert wal.stat().st_size > outbox_mod.WAL_TRUNCATE_BYTES
        assert box._db.execute("PRAGMA page_count").fetchone()[0] < outbox_mod.COMPACT_MIN_FREE_PAGES
        for p in box.pending(limit=100):
            box.delivered(p.seq, p.topic)
        box.expire(acked_before=float("inf"))
        assert box.depth() == 0 and wal.stat().st_size == 0
        box.add(lambda seq: [("t", b"one more", None)])
        small = wal.stat().st_size
        assert 0 < small <= outbox_mod.WAL_TRUNCATE_BYTES
        box.expire()  # nothing freed, a small WAL: left as it is
        assert wal.stat().st_size >= small
    finally:
        box.close()
