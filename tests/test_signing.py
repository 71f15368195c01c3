"""The signing key on disk: save_key never writes through a file or link it did not create."""
from __future__ import annotations

import os
import stat

from facegate import signing


def _mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_save_key_ignores_a_left_over_0644_tmp(tmp_path):
    key_file = tmp_path / "signing.key"
    stale = tmp_path / "signing.key.tmp"  # the fixed temp name the old code opened with O_TRUNC
    stale.write_bytes(b"left over")
    stale.chmod(0o644)
    key = signing.SigningKey.generate()
    signing.save_key(key, key_file)
    assert _mode(key_file) == 0o600
    assert signing.load_key(key_file).public == key.public
    assert stale.read_bytes() == b"left over"  # not ours: untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key", "signing.key.tmp"]


def test_save_key_does_not_write_through_a_symlinked_tmp(tmp_path):
    key_file = tmp_path / "signing.key"
    target = tmp_path / "elsewhere" / "readable.txt"
    target.parent.mkdir()
    target.write_bytes(b"")
    target.chmod(0o644)
    (tmp_path / "signing.key.tmp").symlink_to(target)
    signing.save_key(signing.SigningKey.generate(), key_file)
    assert target.read_bytes() == b""  # the PEM went nowhere but the key file
    assert _mode(key_file) == 0o600 and not key_file.is_symlink()
    assert b"PRIVATE KEY" in key_file.read_bytes()


def test_save_key_replaces_an_existing_key_and_a_symlinked_key_path_itself(tmp_path):
    key_file = tmp_path / "signing.key"
    target = tmp_path / "target.pem"
    target.write_bytes(b"not to be overwritten")
    key_file.symlink_to(target)
    key = signing.SigningKey.generate()
    signing.save_key(key, key_file)
    assert target.read_bytes() == b"not to be overwritten"
    assert not key_file.is_symlink() and _mode(key_file) == 0o600
    again = signing.SigningKey.generate()
    signing.save_key(again, key_file)
    assert signing.load_key(key_file).public == again.public
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key", "target.pem"]  # no temp left
