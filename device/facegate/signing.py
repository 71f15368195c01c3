"""COSE_Sign1 (RFC 9052) with EdDSA / Ed25519: signed results and signed commands.

A message is the CBOR tag 18 around `[protected, unprotected, payload, signature]`:
protected = bstr(CBOR {1: -8, 4: kid}) (alg EdDSA, key id), unprotected = {}, payload =
bstr(CBOR map with text keys), signature = Ed25519 over the Sig_structure
`["Signature1", protected, external_aad, payload]` with external_aad = the UTF-8 MQTT
topic the message is published on, so a message copied to another topic fails to verify.
kid = the first 8 bytes of SHA-256 of the raw 32-byte public key.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import FacegateError

if TYPE_CHECKING:
    from .config import Config

COSE_SIGN1_TAG = 18
ALG_EDDSA = -8
HDR_ALG, HDR_KID = 1, 4
MAX_MESSAGE_BYTES = 16_000_000


class SignatureError(FacegateError):
    """A COSE message is malformed, signed by an unknown key, or its signature is wrong."""


def kid_of(public_raw: bytes) -> bytes:
    """Key id: the first 8 bytes of SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_raw).digest()[:8]


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a public key (of a private key's public half)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_hex(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from 64 hex digits (raises SignatureError)."""
    try:
        raw = bytes.fromhex(text.strip())
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SignatureError("a public key is 64 hex digits (32 raw bytes)") from None


@dataclass(frozen=True)
class SigningKey:
    """A private key with its raw public key and kid."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return public_raw(self.private)

    @property
    def kid(self) -> bytes:
        return kid_of(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())


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


def _sig_structure(protected: bytes, topic: str, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, topic.encode("utf-8"), payload])


def sign(payload: dict, key: SigningKey, topic: str) -> bytes:
    """A tagged COSE_Sign1 message over the CBOR of `payload`, external_aad = topic."""
    protected = cbor2.dumps({HDR_ALG: ALG_EDDSA, HDR_KID: key.kid})
    body = cbor2.dumps(payload)
    signature = key.private.sign(_sig_structure(protected, topic, body))
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, body, signature]))


@dataclass(frozen=True)
class Verified:
    """A message whose signature checked out: the signer's kid and the decoded payload."""

    kid: bytes
    payload: dict


def verify(message: bytes, keys: dict[bytes, Ed25519PublicKey] | Ed25519PublicKey, topic: str) -> Verified:
    """Check a tagged COSE_Sign1 message against a key (or keys by kid) and the topic it
    arrived on; returns the payload map. Raises SignatureError with a short reason:
    not_cose, bad_header, unknown_key, bad_signature, bad_payload."""
    if not isinstance(message, (bytes, bytearray)) or len(message) > MAX_MESSAGE_BYTES:
        raise SignatureError("not_cose")
    try:
        obj = cbor2.loads(bytes(message))
    except Exception:  # cbor2 raises a variety of errors on garbage
        raise SignatureError("not_cose") from None
    if not (isinstance(obj, cbor2.CBORTag) and obj.tag == COSE_SIGN1_TAG and isinstance(obj.value, (list, tuple))
            and len(obj.value) == 4):
        raise SignatureError("not_cose")
    protected, unprotected, body, signature = obj.value
    if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping) and isinstance(body, bytes)
            and isinstance(signature, bytes)):
        raise SignatureError("not_cose")
    try:
        hdr = cbor2.loads(protected)
    except Exception:
        raise SignatureError("bad_header") from None
    if not isinstance(hdr, Mapping) or hdr.get(HDR_ALG) != ALG_EDDSA or not isinstance(hdr.get(HDR_KID), bytes):
        raise SignatureError("bad_header")
    kid = hdr[HDR_KID]
    if isinstance(keys, dict):
        pub = keys.get(kid)
        if pub is None:
            raise SignatureError("unknown_key")
    else:
        pub = keys
        if kid != kid_of(public_raw(pub)):
            raise SignatureError("unknown_key")
    try:
        pub.verify(signature, _sig_structure(protected, topic, body))
    except InvalidSignature:
        raise SignatureError("bad_signature") from None
    try:
        payload = cbor2.loads(body)
    except Exception:
        raise SignatureError("bad_payload") from None
    if not isinstance(payload, dict):
        raise SignatureError("bad_payload")
    return Verified(kid, payload)


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
