"""The terminal's signing key on disk (issue 25: signing's key functions were reached only by
the daemon and CLI tests, too slow to run per mutant). Where the key is taken from, and why
(config, systemd credential, state dir); created once with mode 0600 and then kept; the
errors that name the file and what is wrong with it. Public API only (`facegate.signing`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from facegate import signing
from facegate.config import Config
from facegate.signing import SignatureError


def cfg(tmp_path: Path, **daemon) -> Config:
    return Config.model_validate({"device_id": "kiosk-1", "daemon": {"state_dir": str(tmp_path / "state"),
                                                                      **daemon}})


def test_the_key_comes_from_the_config_then_the_credential_then_the_state_dir(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    state = (tmp_path / "state" / "signing.key", "state_dir")
    assert signing.key_source(cfg(tmp_path)) == state
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert signing.key_source(cfg(tmp_path)) == state  # a credential directory without the key
    (creds / "signing.key").write_text("x")
    assert signing.key_source(cfg(tmp_path)) == (creds / "signing.key", "credential")
    assert signing.key_path(cfg(tmp_path)) == creds / "signing.key"
    mine = tmp_path / "etc" / "my.key"
    assert signing.key_source(cfg(tmp_path, key_file=str(mine))) == (mine, "config")  # the config wins
    assert signing.key_path(cfg(tmp_path, key_file=str(mine))) == mine
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "")
    assert signing.key_source(cfg(tmp_path)) == state


def test_a_key_is_created_once_0600_whatever_the_umask_and_then_kept(tmp_path):
    path = tmp_path / "fresh" / "dir" / "signing.key"
    old = os.umask(0)
    try:
        key, created = signing.load_or_create_key(path)
    finally:
        os.umask(old)
    assert created and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temp file left beside it
    again, created2 = signing.load_or_create_key(path)
    assert not created2 and again.public == key.public and again.kid == signing.kid_of(key.public)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8 PEM, unencrypted


def test_a_key_file_that_is_missing_garbage_or_another_kind_is_named_with_what_is_wrong(tmp_path):
    missing = tmp_path / "none.key"
    with pytest.raises(SignatureError) as err:
        signing.load_key(missing)
    assert str(err.value) == f"cannot read signing key {missing}: No such file or directory"
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello")
    with pytest.raises(SignatureError) as err:
        signing.load_key(garbage)
    assert str(err.value) == f"{garbage} is not an unencrypted PEM private key"
    other = tmp_path / "ec.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(SignatureError) as err:
        signing.load_key(other)
    assert str(err.value) == f"{other} is not an Ed25519 key"
    with pytest.raises(SignatureError):  # an existing file that is no key is not replaced by a new one
        signing.load_or_create_key(garbage)
    assert garbage.read_text() == "hello"


def test_a_public_key_in_hex_is_exactly_32_bytes():
    k = signing.SigningKey.generate()
    assert signing.public_raw(signing.public_from_hex(f"  {k.public.hex()}\n")) == k.public
    assert signing.public_raw(k.private) == signing.public_raw(k.private.public_key()) == k.public
    for bad in (k.public.hex()[:-2], k.public.hex() + "00", "zz" * 32, ""):
        with pytest.raises(SignatureError) as err:
            signing.public_from_hex(bad)
        assert str(err.value) == "a public key is 64 hex digits (32 raw bytes)"


def test_a_temp_name_someone_took_is_never_written_through_and_another_is_tried(tmp_path, monkeypatch):
    """save_key's temp file is new: a link planted under the name it draws is skipped (the
    next random name is used), never written through; when no name is free it says so."""
    import secrets

    names = iter(["a" * 16, "b" * 16])
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: next(names))
    target = tmp_path / "victim"
    target.write_text("untouched")
    path = tmp_path / "signing.key"
    (tmp_path / f".signing.key.{'a' * 16}.tmp").symlink_to(target)
    k = signing.SigningKey.generate()
    signing.save_key(k, path)
    assert target.read_text() == "untouched" and signing.load_key(path).public == k.public
    assert not (tmp_path / f".signing.key.{'b' * 16}.tmp").exists()  # renamed into place
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: "a" * 16)  # every name taken
    with pytest.raises(FileExistsError) as err:
        signing.save_key(k, path)
    assert str(err.value) == f"no free temp name beside {path}" and target.read_text() == "untouched"


def test_a_message_of_exactly_the_size_limit_is_verified_one_byte_more_is_not_cose():
    import cbor2

    k = signing.SigningKey.generate()
    base = len(signing.sign({"pad": b""}, k, "t"))
    n = signing.MAX_MESSAGE_BYTES - base - 8  # the pad's and the payload's CBOR heads grow by 4 bytes each
    m = signing.sign({"pad": b"x" * n}, k, "t")
    assert len(m) == signing.MAX_MESSAGE_BYTES, len(m) - signing.MAX_MESSAGE_BYTES
    assert signing.verify(m, {k.kid: k.private.public_key()}, "t").payload["pad"] == b"x" * n
    bigger = cbor2.dumps(cbor2.loads(m)) + b"\x00"
    with pytest.raises(SignatureError) as err:
        signing.verify(bigger, {k.kid: k.private.public_key()}, "t")
    assert str(err.value) == "not_cose"
