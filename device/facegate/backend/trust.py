"""Which signed messages the backend believes: results by an approved key of the device
whose topic they arrived on, attestations signed by the key they announce. Pure functions
over a `Keyring` snapshot (no I/O); the messages themselves (their form, checks and
signatures) are the contract room's: a believed result is a typed `contract.Result`."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..contract import Attest, MalformedMessage, Result, SignatureError, Topics, topic_device, verify
from ..contract.cose import unverified_field
from ..contract.topics import DEVICE_ID
from . import limits
from .store import KeyRow

__all__ = ["DEVICE_ID", "QUARANTINE_REASONS", "TRUSTED_STATES", "Attestation", "Keyring", "Verdict", "check_attest",
           "check_result", "topic_device"]
Attestation = Attest  # the backend's name for a verified R/attest
TRUSTED_STATES = ("active", "retired")  # retired: replaced by an approved rotation
# why a result is quarantined (the words stored in quarantine.reason)
QUARANTINE_REASONS = ("wrong_topic", "not_cose", "bad_header", "bad_payload", "bad_signature", "unknown_device",
                      "unknown_key", "unapproved_key", "revoked_key", "wrong_device", "conflicting_duplicate",
                      "retired_key", "too_large", "bad_health", "bad_attest", "unstorable")


@dataclass(frozen=True)
class Keyring:
    """Every known device key by kid (any state), from the store's device_keys."""

    rows: tuple[KeyRow, ...] = ()
    by_kid: dict[bytes, list[KeyRow]] = field(default_factory=dict)
    devices: frozenset[str] = frozenset()  # devices with an approved key
    all_keys: dict = field(default_factory=dict)  # kid -> Ed25519PublicKey, any state
    retired_bound: dict[str, int] = field(default_factory=dict)  # dev -> highest max_seq of its retired keys

    @classmethod
    def of(cls, rows: Iterable[KeyRow]) -> Keyring:
        rows = tuple(rows)
        by_kid: dict[bytes, list[KeyRow]] = {}
        for r in rows:
            by_kid.setdefault(bytes.fromhex(r.kid), []).append(r)
        bound: dict[str, int] = {}
        for r in rows:
            if r.state == "retired":
                bound[r.dev] = max(bound.get(r.dev, -1), limits.INT63 if r.max_seq is None else r.max_seq)
        return cls(rows, by_kid, frozenset(r.dev for r in rows if r.state in TRUSTED_STATES),
                   {kid: Ed25519PublicKey.from_public_bytes(rs[0].pub) for kid, rs in by_kid.items()}, bound)

    def public_keys(self, dev: str, states: tuple[str, ...] = ("active",)) -> dict:
        """kid -> Ed25519PublicKey of `dev`'s keys in `states`."""
        return {kid: self.all_keys[kid] for kid, rs in self.by_kid.items()
                if any(r.dev == dev and r.state in states for r in rs)}


@dataclass(frozen=True)
class Verdict:
    """accepted: the result is the device's own, stored as-is; else `reason` says why not.
    dev: from the topic (None when the topic is not a result topic)."""

    accepted: bool
    dev: str | None
    reason: str | None = None
    kid: bytes | None = None
    result: Result | None = None
    retired: bool = False  # accepted under a retired key: stored, but never the device's newest result


def _unverified_dev(message: bytes) -> str | None:
    dev = unverified_field(message, "dev")
    return dev if isinstance(dev, str) and "/" not in dev and dev else None


def check_result(message: bytes, topic: str, prefix: str, ring: Keyring) -> Verdict:
    """Is this a result of the device named by `topic`, signed by one of its approved
    (active or retired) keys for this very topic, with the contract's payload?"""
    dev = topic_device(topic, prefix, "result")
    if dev is None:
        return Verdict(False, None, "wrong_topic")
    try:
        v = verify(message, ring.all_keys, topic)
    except SignatureError as exc:
        reason = str(exc)
        if reason == "unknown_key":
            return Verdict(False, dev, "unknown_key" if dev in ring.devices else "unknown_device")
        if reason == "bad_signature":
            other = _unverified_dev(message)
            if other and other != dev:  # a result copied from another device's topic?
                try:
                    verify(message, ring.all_keys, Topics.of(prefix, other).result)
                    return Verdict(False, dev, "wrong_topic")
                except SignatureError:
                    pass
        return Verdict(False, dev, reason)
    mine = [r for r in ring.by_kid.get(v.kid, []) if r.dev == dev]
    states = {r.state for r in mine}
    if not states & set(TRUSTED_STATES):
        if "revoked" in states:
            return Verdict(False, dev, "revoked_key", v.kid)
        if "pending" in states:
            return Verdict(False, dev, "unapproved_key", v.kid)
        return Verdict(False, dev, "wrong_device", v.kid)  # another device's key signed for this topic
    try:
        result = Result.of_map(v.payload)
    except MalformedMessage as exc:
        return Verdict(False, dev, str(exc), v.kid)
    if result.dev != dev:
        return Verdict(False, dev, "wrong_device", v.kid)
    if "active" not in states:  # retired: only what it signed before the rotation (seq <= its max_seq)
        bound = min((r.max_seq for r in mine if r.state == "retired" and r.max_seq is not None), default=None)
        if bound is not None and result.seq > bound:
            return Verdict(False, dev, "retired_key", v.kid)
        return Verdict(True, dev, None, v.kid, result, retired=True)
    return Verdict(True, dev, None, v.kid, result)


def check_attest(message: bytes, topic: str, prefix: str) -> Attest | None:
    """The attestation on {prefix}/{dev}/attest, or None when it is malformed, not signed
    by the key inside it, or names another device (contract.Attest.verify)."""
    dev = topic_device(topic, prefix, "attest")
    return None if dev is None else Attest.verify(message, topic, dev)
