"""Wall-clock steps: the real daemon (in-process, real models, real Mosquitto) with its wall
clock stepped ahead and back; and how the system clock adapter tells whether the clock is
synchronised."""
from __future__ import annotations

import pytest

from broker import Backend, Mosquitto
from daemon_helpers import ROOT, DaemonProc, command, in_process, results, wait_online, wait_result
from facegate.adapters.clock import FakeClock, SystemClock, kernel_clock_synchronized
from timeouts import wait_until


# -- the adapter -----------------------------------------------------------------------------
def _denied():
    raise PermissionError(1, "adjtimex: Operation not permitted")  # ProtectClock=yes under the unit


def test_the_kernel_is_asked_first():
    assert isinstance(kernel_clock_synchronized(), bool)  # adjtimex works outside the unit
    assert SystemClock().synchronized() is kernel_clock_synchronized()
    assert SystemClock(kernel=lambda: True, timedatectl=lambda: False).synchronized() is True


def test_under_protect_clock_the_timesyncd_flag_then_timedated_answer(tmp_path):
    flag = tmp_path / "synchronized"
    assert SystemClock(kernel=_denied, flag=flag, timedatectl=lambda: False).synchronized() is False
    assert SystemClock(kernel=_denied, flag=flag, timedatectl=lambda: None).synchronized() is None
    flag.touch()  # systemd-timesyncd's mark of its first synchronisation since boot
    assert SystemClock(kernel=_denied, flag=flag, timedatectl=lambda: False).synchronized() is True


def test_the_answer_is_cached():
    calls = []
    clock = SystemClock(cache_s=60, kernel=lambda: calls.append(1) or True)
    assert [clock.synchronized() for _ in range(5)] == [True] * 5 and len(calls) == 1


# -- the daemon ------------------------------------------------------------------------------
@pytest.fixture
def stepped(tmp_path, faces, backend_key, model_dir):
    """The daemon built as `facegate run` builds it, with a FakeClock for its wall time."""
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    clock = FakeClock(synced=False)
    config = DaemonProc(tmp_path, broker, faces, backend_key).cfg.read_text()  # a terminal of the broker
    be = Backend(broker)
    try:
        with in_process(config, clock=clock) as d:
            wait_online(be)
            yield d, be, clock
    finally:
        be.close()
        broker.stop()


def _answers(be, d, request_id) -> list[tuple[str, str | None]]:
    return [(r["decision"], r["reason"]) for r in results(be, d.key.public) if r["request_id"] == request_id]


def test_a_clock_step_ahead_and_back_does_not_reopen_the_replay_window(stepped, faces, backend_key):
    """Issue 15: with the clock an hour ahead for a moment and then back, the same command
    bytes ran a second session and decided `match` again (a second relay pulse). Now the
    purge that the step ahead allows raises the replay floor, and the bytes are refused."""
    d, be, clock = stepped
    msg, cmd = command(backend_key, faces["ref"])
    be.publish(f"{ROOT}/cmd/verify", msg)
    assert wait_result(be, d.key.public, cmd["request_id"])["decision"] == "match"

    clock.step(3600)  # e.g. a wrong NTP answer, or a date set by hand
    # a fresh command is expired by this clock (answered once: its exp lies above the replay
    # floor the early purge raises; one from the same second as `cmd` would be counted only)
    late, ahead = command(backend_key, faces["ref"], lifetime_s=180)
    be.publish(f"{ROOT}/cmd/verify", late)
    assert wait_result(be, d.key.public, ahead["request_id"])["reason"] == "expired"
    wait_until(lambda: d.outbox.replay_floor >= cmd["exp"], 20, "the replay floor")  # the daemon's own purge (every health_interval_s)
    clock.step(-3600)

    be.publish(f"{ROOT}/cmd/verify", msg)  # the same bytes again
    # answered only after the replay was handled; it lives longer than `late`, whose record
    # the clock ahead purged too: a fresh command at or below the floor is counted, not answered
    msg2, after = command(backend_key, faces["stranger"], lifetime_s=240)
    be.publish(f"{ROOT}/cmd/verify", msg2)
    assert wait_result(be, d.key.public, after["request_id"])["decision"] == "no_match"
    answers = _answers(be, d, cmd["request_id"])
    assert answers[0] == ("match", None)
    assert answers[1:] == [], answers  # refused, unanswered: never a second session, never a second answer
    assert d.health.ignored_counts().get("replay_floor") == 1


def test_a_clock_far_behind_refuses_fresh_commands_as_not_yet_valid(stepped, faces, backend_key):
    """A Pi without a real-time clock may boot with the time of its last shutdown
    (fake-hwclock) until NTP answers: commands carry the backend's time and are refused as
    not yet valid; health says the clock is not synchronised; once the clock is right
    they run."""
    d, be, clock = stepped
    assert d.health_dict()["clock_synchronized"] is False
    clock.step(-3 * 3600)
    early, cmd = command(backend_key, faces["ref"])
    be.publish(f"{ROOT}/cmd/verify", early)
    assert wait_result(be, d.key.public, cmd["request_id"])["reason"] == "not_yet_valid"
    clock.step(3 * 3600)
    clock.synced = True  # NTP answered
    assert d.health_dict()["clock_synchronized"] is True
    ok, cmd2 = command(backend_key, faces["ref"])
    be.publish(f"{ROOT}/cmd/verify", ok)
    assert wait_result(be, d.key.public, cmd2["request_id"])["decision"] == "match"
