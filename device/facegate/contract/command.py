"""The verify command (R/cmd/verify), both ends: `Command` is what a backend (the request
client, `facegate sign-command`, the demo) makes and signs; `parse_verify` is the
terminal's gate, an authentic, well-formed, live command in (`VerifyCommand`, its
reference decoded) or a `CommandRejected(reason)` out. Pure functions (time and
randomness come in as arguments or from os.urandom); nothing here touches the network.
Replays are the caller's (admission.py owns the persisted record)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..errors import InputError
from ..imageio import decode_image
from ..registry import STEPS as STEP_REGISTRY
from ..vocab import COMMAND_FIELDS, Step
from .cose import SignatureError, SigningKey, Verified, sign, verify

STEPS = tuple(Step)  # the shipped steps; a command may name any registered one (registry.STEPS)
MAX_ID_CHARS = 128
MAX_NONCE_BYTES = 64
MAX_STEPS = 6
OPTIONAL_FIELDS = ("challenge",)
DETAIL_MAX_CHARS = 120  # a rejected result's detail, e.g. "image is too large (5472x3648 pixels > 4000000)"
# refusals of input that is not an authentic command: counted, never answered
UNAUTHENTICATED = ("too_large", "not_cose", "bad_header", "unknown_key", "bad_signature")


@dataclass(frozen=True)
class Command:
    """A verify command as the backend sends it. reference: the ID portrait's bytes (JPEG,
    PNG, BMP, WebP); challenge: the steps the backend fixes (() = none), None = the
    terminal draws them; iat / exp: Unix seconds (whole)."""

    request_id: str
    nonce: bytes
    iat: int
    exp: int
    reference: bytes
    challenge: tuple[str, ...] | None = None

    @classmethod
    def new(cls, reference: bytes, now: float, lifetime_s: float, request_id: str | None = None,
            challenge: list[str] | tuple[str, ...] | None = None) -> Command:
        """A fresh command: a random request id unless given, a fresh 16-byte nonce,
        iat = now, exp = now + lifetime_s."""
        rid = request_id or os.urandom(8).hex()  # drawn before the nonce (the golden bytes say so)
        return cls(rid, os.urandom(16), int(now), int(now + lifetime_s), reference,
                   None if challenge is None else tuple(challenge))

    def to_map(self) -> dict:
        """The CBOR map: the fields in this order, `challenge` only when fixed."""
        out: dict[str, Any] = {"request_id": self.request_id, "nonce": self.nonce, "iat": self.iat, "exp": self.exp,
                               "reference": self.reference}
        if self.challenge is not None:
            out["challenge"] = list(self.challenge)
        return out

    def sign(self, key: SigningKey, topic: str) -> bytes:
        """COSE_Sign1 for the device's cmd/verify topic."""
        return sign(self.to_map(), key, topic)


@dataclass(frozen=True)
class VerifyCommand:
    """A verify command whose signature, lifetime and fields checked out (the terminal's
    side). reference: HxWx3 uint8 BGR portrait (decoded, bounded); challenge: None = draw one."""

    request_id: str
    nonce: bytes
    iat: float
    exp: float
    reference: np.ndarray
    challenge: list[str] | None
    kid: bytes


class CommandRejected(Exception):
    """A command that starts nothing. reason: a short word (health counter, result reason);
    request_id / nonce: the authentic command's ids when they could be read (well-typed),
    else None. Only an authentic command's refusal is ever answered (daemon.py)."""

    def __init__(self, reason: str, request_id: str | None = None, nonce: bytes | None = None, detail: str = ""):
        super().__init__(reason)
        self.reason, self.request_id, self.nonce, self.detail = reason, request_id, nonce, detail


def _ids(payload: Any) -> tuple[str | None, bytes | None]:
    if not isinstance(payload, dict):
        return None, None
    rid, nonce = payload.get("request_id"), payload.get("nonce")
    rid = rid if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS else None
    nonce = nonce if isinstance(nonce, bytes) and 0 < len(nonce) <= MAX_NONCE_BYTES else None
    return rid, nonce


def finite_number(val: Any) -> bool:
    """A real number a float can hold: an int or float, not a bool, NaN or infinity, and
    not an int beyond the float range (CBOR carries integers of any size)."""
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        return False
    try:
        return math.isfinite(float(val))
    except OverflowError:
        return False


def authenticate(message: bytes, topic: str, keys: dict, *, max_bytes: int) -> Verified:
    """The first gate, before anything is queued or stored: a COSE_Sign1 of at most
    max_bytes, signed by a trusted key for this very topic, whose payload is a map.
    Raises CommandRejected(reason) without ids, reason one of UNAUTHENTICATED or
    bad_payload (authentic, but not a map: nothing to answer)."""
    if len(message) > max_bytes:
        raise CommandRejected("too_large")
    try:
        return verify(message, keys, topic)
    except SignatureError as exc:
        raise CommandRejected(str(exc)) from None


@dataclass(frozen=True)
class Identified:
    """An authentic command whose request_id and nonce could be read: what the replay
    record keeps (until `keep_until`) and what an answer is bound to."""

    request_id: str
    nonce: bytes
    keep_until: float


def identify(v: Verified, *, skew_s: float) -> Identified:
    """The ids of an authentic command, or CommandRejected(missing_/bad_ request_id or
    nonce, no ids): a command that cannot be bound to its ids gets no answer. keep_until:
    exp + skew_s, the same for the same bytes whenever they come (so a purged record
    leaves them below the outbox's replay floor); infinite without a finite exp (such a
    command never runs; its record stays)."""
    p = v.payload
    rid, nonce = _ids(p)
    for name, ok in (("request_id", rid is not None), ("nonce", nonce is not None)):
        if not ok:
            raise CommandRejected(f"{'missing' if name not in p else 'bad'}_{name}")
    exp = p.get("exp")
    return Identified(cast(str, rid), cast(bytes, nonce), float(cast(float, exp)) + skew_s if finite_number(exp) else math.inf)


def check_command(v: Verified, now: float, *, max_bytes: int, max_age_s: float, skew_s: float,
                  max_pixels: int) -> VerifyCommand:
    """Every field of an authentic command: raises CommandRejected(reason, request_id,
    nonce) with reason one of missing_<field>, bad_<field>, bad_payload, not_yet_valid,
    expired, lifetime_too_long, bad_reference."""
    p = v.payload
    rid, nonce = _ids(p)
    for name, ok in (("request_id", rid is not None), ("nonce", nonce is not None)):
        if name not in p:
            raise CommandRejected(f"missing_{name}", rid, nonce)
        if not ok:
            raise CommandRejected(f"bad_{name}", rid, nonce)
    for name in ("iat", "exp", "reference"):
        if name not in p:
            raise CommandRejected(f"missing_{name}", rid, nonce)
    iat, exp = p["iat"], p["exp"]
    for name, val in (("iat", iat), ("exp", exp)):
        if not finite_number(val):
            raise CommandRejected(f"bad_{name}", rid, nonce)
    if iat > now + skew_s:
        raise CommandRejected("not_yet_valid", rid, nonce)
    if exp < now - skew_s:
        raise CommandRejected("expired", rid, nonce)
    if exp - iat > max_age_s or exp < iat:
        raise CommandRejected("lifetime_too_long" if exp >= iat else "bad_exp", rid, nonce)
    challenge = p.get("challenge")
    if challenge is not None:
        if not isinstance(challenge, (list, tuple)) or len(challenge) > MAX_STEPS or any(
                s not in STEP_REGISTRY.names() for s in challenge):
            raise CommandRejected("bad_challenge", rid, nonce)
    extra = set(p) - {*COMMAND_FIELDS, *OPTIONAL_FIELDS}
    if extra:
        raise CommandRejected("bad_payload", rid, nonce)
    ref = p["reference"]
    if not isinstance(ref, bytes):
        raise CommandRejected("bad_reference", rid, nonce, "not bytes")
    try:
        image = decode_image(ref, max_bytes, max_pixels, what="reference")
    except InputError as exc:  # its words name format and size only, never content
        raise CommandRejected("bad_reference", rid, nonce, str(exc)[:DETAIL_MAX_CHARS]) from None
    return VerifyCommand(cast(str, rid), cast(bytes, nonce), float(iat), float(exp), image,
                         None if challenge is None else list(challenge), v.kid)


def parse_verify(message: bytes, topic: str, keys: dict, now: float, *, max_bytes: int,
                 max_age_s: float, skew_s: float, max_pixels: int) -> VerifyCommand:
    """authenticate() then check_command(): a checked command, or CommandRejected(reason)
    (ids only when the command was authentic). Replays are checked by the caller (it owns
    the persisted record)."""
    v = authenticate(message, topic, keys, max_bytes=max_bytes)
    return check_command(v, now, max_bytes=max_bytes, max_age_s=max_age_s, skew_s=skew_s, max_pixels=max_pixels)
