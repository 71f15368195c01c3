"""COSE_Sign1 (RFC 9052) with EdDSA / Ed25519: how every signed message of the contract
(results, attestations, commands) is signed and verified.

A message is the CBOR tag 18 around `[protected, unprotected, payload, signature]`:
protected = bstr(CBOR {1: -8, 4: kid}) (alg EdDSA, key id), unprotected = {}, payload =
bstr(CBOR map with text keys), signature = Ed25519 over the Sig_structure
`["Signature1", protected, external_aad, payload]` with external_aad = the UTF-8 MQTT
topic the message is published on, so a message copied to another topic fails to verify.
kid = the first 8 bytes of SHA-256 of the raw 32-byte public key.

Key files (PEM on disk, where the terminal's key lives) are signing.py's; this module
holds only what is on the wire.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import FacegateError

COSE_SIGN1_TAG = 18
ALG_EDDSA = -8
HDR_ALG, HDR_KID = 1, 4
MAX_MESSAGE_BYTES = 16_000_000


class SignatureError(FacegateError):
    """A COSE message is malformed, signed by an unknown key, or its signature is wrong.
    str(exc) is a short reason: not_cose, bad_header, unknown_key, bad_signature,
    bad_payload (or a key-file problem, from signing.py)."""


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


def _sig_structure(protected: bytes, topic: str, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, topic.encode("utf-8"), payload])


def sign(payload: Mapping[str, Any], key: SigningKey, topic: str) -> bytes:
    """A tagged COSE_Sign1 message over the CBOR of `payload`, external_aad = topic.
    (The contract's messages call this through their own `sign`; a map is signed as is.)"""
    protected = cbor2.dumps({HDR_ALG: ALG_EDDSA, HDR_KID: key.kid})
    body = cbor2.dumps(payload)
    signature = key.private.sign(_sig_structure(protected, topic, body))
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, body, signature]))


@dataclass(frozen=True)
class Verified:
    """A message whose signature checked out: the signer's kid and the decoded payload
    (a map; the typed messages are made from it: Result.of_map, check_command, ...)."""

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


def unverified_kid(message: bytes) -> bytes | None:
    """The kid in a COSE_Sign1 message's protected header, NOT verified (to name the key
    of an answer no trusted key signed), or None for garbage."""
    try:
        kid = cbor2.loads(cbor2.loads(message).value[0]).get(HDR_KID)
        return kid if isinstance(kid, bytes) else None
    except Exception:  # garbage: no kid to name
        return None


def unverified_field(message: bytes, name: str) -> Any:
    """One field of a COSE_Sign1 message's payload map, NOT verified (which device a
    forged or copied message claims to be; the key an attestation announces), or None."""
    try:
        body = cbor2.loads(cbor2.loads(message).value[2])
        return body.get(name) if isinstance(body, dict) else None
    except Exception:  # garbage: nothing to learn from it
        return None
