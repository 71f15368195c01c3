"""The terminal's state outside systemd (issue 22, item 6): the state dir is made 0700 and
the outbox and status.json 0600 whatever the umask, and status.json is never written
through a symlink left beside it."""
from __future__ import annotations

import os
import stat

import pytest

from facegate import status
from facegate.outbox import Outbox, private_dir


@pytest.fixture()
def open_umask():
    old = os.umask(0o002)  # the loosest an admin's shell commonly has
    yield
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_state_dir_outbox_and_status_are_private_whatever_the_umask(tmp_path, open_umask):
    state = private_dir(tmp_path / "var" / "facegate")
    assert mode(state) == 0o700
    ob = Outbox(state / "outbox.sqlite")
    ob.close()
    assert mode(state / "outbox.sqlite") == 0o600
    assert all(mode(p) == 0o600 for p in state.glob("outbox.sqlite*")), [(p.name, oct(mode(p))) for p in state.iterdir()]
    status.write(state, {"pid": 1})
    assert mode(state / "status.json") == 0o600 and status.read(state) == {"pid": 1}
    existing = tmp_path / "systemd-made"
    existing.mkdir(mode=0o750)
    existing.chmod(0o750)
    assert mode(private_dir(existing)) == 0o750  # a StateDirectory systemd made is left as it is


def test_status_is_never_written_through_a_symlink(tmp_path, open_umask):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    state = private_dir(tmp_path / "state")
    (state / "status.json.tmp").symlink_to(victim)  # the fixed temp name the writer used to follow
    status.write(state, {"pid": 2})
    assert victim.read_text() == "keep me"
    assert status.read(state) == {"pid": 2} and not (state / "status.json").is_symlink()
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp") and p.name != "status.json.tmp"] == []
