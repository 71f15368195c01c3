"""The terminal's signing key on disk: where it lives (key_source), how it is written
(0600 from the start, atomically) and read. The COSE_Sign1 signing and verification of
messages is the contract room's (contract/cose.py); its names are re-exported here for the
callers of this module's old address.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .contract.cose import (
    ALG_EDDSA,
    COSE_SIGN1_TAG,
    HDR_ALG,
    HDR_KID,
    MAX_MESSAGE_BYTES,
    SignatureError,
    SigningKey,
    Verified,
    kid_of,
    public_from_hex,
    public_raw,
    sign,
    verify,
)

if TYPE_CHECKING:
    from .config import Config

__all__ = ["ALG_EDDSA", "COSE_SIGN1_TAG", "HDR_ALG", "HDR_KID", "MAX_MESSAGE_BYTES", "SignatureError", "SigningKey",
           "Verified", "key_path", "key_source", "kid_of", "load_key", "load_or_create_key", "public_from_hex",
           "public_raw", "save_key", "sign", "verify"]


def save_key(key: SigningKey, path: Path) -> None:
    """Write a PKCS#8 PEM private key atomically, mode 0600 from the start.

    The temp file is new and randomly named in the key's directory, opened with O_EXCL and
    O_NOFOLLOW: a file or symlink someone left under any name is never written through or
    keeps its mode; it is fsynced, renamed over `path`, and the directory fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temp name beside {path}")
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask or the directory's default ACL
            view = memoryview(pem)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_key(path: Path) -> SigningKey:
    """Read a PEM (PKCS#8) Ed25519 private key (raises SignatureError)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise SignatureError(f"cannot read signing key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise SignatureError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 key")
    return SigningKey(key)


def load_or_create_key(path: Path) -> tuple[SigningKey, bool]:
    """The key at `path`, generated (0600) when the file does not exist; (key, created)."""
    if Path(path).exists():
        return load_key(path), False
    key = SigningKey.generate()
    save_key(key, Path(path))
    return key, True


def key_source(cfg: Config) -> tuple[Path, str]:
    """Where the terminal's signing key lives and why: (path, "config" | "credential" |
    "state_dir"): daemon.key_file, else the systemd credential signing.key, else the state dir."""
    if cfg.daemon.key_file:
        return Path(cfg.daemon.key_file), "config"
    cred = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred and (Path(cred) / "signing.key").exists():
        return Path(cred) / "signing.key", "credential"
    return Path(cfg.daemon.state_dir) / "signing.key", "state_dir"


def key_path(cfg: Config) -> Path:
    """Where the terminal's signing key lives (key_source without the why)."""
    return key_source(cfg)[0]
