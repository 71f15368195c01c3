"""Which signed messages the backend believes: results by an approved key of the device
whose topic they arrived on, attestations signed by the key they announce. Pure functions
over a `Keyring` snapshot (no I/O)."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..messages import DECISIONS, RESULT_VERSION, Topics
from ..signing import SignatureError, kid_of, verify
from . import limits
from .store import KeyRow

DEVICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a terminal's device_id (its topic level and broker user)
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
    """accepted: the payload is the device's own, stored as-is; else `reason` says why not.
    dev: from the topic (None when the topic is not a result topic)."""

    accepted: bool
    dev: str | None
    reason: str | None = None
    kid: bytes | None = None
    payload: dict | None = None
    retired: bool = False  # accepted under a retired key: stored, but never the device's newest result


def topic_device(topic: str, prefix: str, leaf: str) -> str | None:
    """`dev` of a topic {prefix}/{dev}/{leaf}, else None."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head) or not topic.endswith("/" + leaf):
        return None
    dev = topic[len(head): -len(leaf) - 1]
    return dev if DEVICE_ID.fullmatch(dev) else None


def payload_problem(p: dict) -> str | None:
    """None when a verified result payload has the contract's shape and every field fits
    its column (limits: 63-bit seq, finite iat, bounded NUL-free strings, bounded maps),
    else 'bad_payload'."""
    ok = (p.get("v") == RESULT_VERSION and limits.text(p.get("dev"), 64)
          and limits.int63(p.get("seq")) and p["seq"] >= 0
          and p.get("decision") in DECISIONS and limits.number(p.get("iat"))
          and all(limits.opt_text(p.get(k)) for k in ("reason", "request_id", "session", "boot", "policy"))
          and all(isinstance(p.get(k, {}), dict) and limits.tree_problem(p.get(k, {})) is None
                  for k in ("liveness", "quality", "models")))
    return None if ok else "bad_payload"


def _unverified_dev(message: bytes) -> str | None:
    try:
        dev = cbor2.loads(cbor2.loads(message).value[2]).get("dev")
        return dev if isinstance(dev, str) and "/" not in dev and dev else None
    except Exception:  # garbage: nothing to learn from it
        return None


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
    problem = payload_problem(v.payload)
    if problem:
        return Verdict(False, dev, problem, v.kid)
    if v.payload["dev"] != dev:
        return Verdict(False, dev, "wrong_device", v.kid)
    if "active" not in states:  # retired: only what it signed before the rotation (seq <= its max_seq)
        bound = min((r.max_seq for r in mine if r.state == "retired" and r.max_seq is not None), default=None)
        if bound is not None and v.payload["seq"] > bound:
            return Verdict(False, dev, "retired_key", v.kid)
        return Verdict(True, dev, None, v.kid, v.payload, retired=True)
    return Verdict(True, dev, None, v.kid, v.payload)


@dataclass(frozen=True)
class Attestation:
    """A terminal's R/attest, verified with the key it announces (proof of possession, not
    of trust: an approval makes the key trusted)."""

    dev: str
    pub: bytes
    kid: bytes
    sw: str | None
    boot: str | None
    models: dict
    iat: float | None


def check_attest(message: bytes, topic: str, prefix: str) -> Attestation | None:
    """The attestation on {prefix}/{dev}/attest, or None when it is malformed, not signed
    by the key inside it, or names another device."""
    dev = topic_device(topic, prefix, "attest")
    if dev is None:
        return None
    try:
        body = cbor2.loads(cbor2.loads(message).value[2])
        pub = body["pub"]
        key = Ed25519PublicKey.from_public_bytes(pub)
        v = verify(message, key, topic)
    except Exception:  # anything malformed or forged is simply not an attestation
        return None
    p = v.payload
    if p.get("dev") != dev or p.get("kid") != kid_of(pub):
        return None
    sw, boot, iat, models = p.get("sw"), p.get("boot"), p.get("iat"), p.get("models")
    if not (limits.opt_text(sw) and limits.opt_text(boot) and (iat is None or limits.number(iat))
            and (models is None or (isinstance(models, dict) and limits.tree_problem(models) is None))):
        return None  # a field that no column holds: not an attestation (the worker quarantines it)
    return Attestation(dev, pub, kid_of(pub), sw, boot, models or {}, iat)
