"""The MQTT contract: topic names, verify-command parsing and every payload the daemon
publishes. Pure functions (time and randomness come in as arguments); nothing here
touches the network.

Topics under R = {prefix}/{device_id}: status, attest, state, guide, health, event,
result, cmd/verify. Results and attestations are COSE_Sign1 (see signing.py); the rest is JSON.
Published payloads carry decisions, never similarity or liveness scores, images or
embeddings.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from .errors import InputError
from .imageio import decode_image
from .signing import SignatureError, Verified, verify
from .vocab import Hint, State, Step, Verdict

RESULT_VERSION = 1
DECISIONS = tuple(Verdict)  # the contract's words live in vocab.py
STATES = tuple(State)
STEPS = tuple(Step)
HINTS = tuple(Hint)
MAX_ID_CHARS = 128
MAX_NONCE_BYTES = 64


@dataclass(frozen=True)
class Topics:
    """Every topic of one device; `root` = {prefix}/{device_id}."""

    root: str

    @classmethod
    def of(cls, prefix: str, device_id: str) -> Topics:
        return cls(f"{prefix.rstrip('/')}/{device_id}")

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def attest(self) -> str:
        return f"{self.root}/attest"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def guide(self) -> str:
        return f"{self.root}/guide"

    @property
    def health(self) -> str:
        return f"{self.root}/health"

    @property
    def event(self) -> str:
        return f"{self.root}/event"

    @property
    def result(self) -> str:
        return f"{self.root}/result"

    @property
    def cmd_verify(self) -> str:
        return f"{self.root}/cmd/verify"


# -- verify commands ----------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyCommand:
    """A verify command whose signature, lifetime and fields checked out.
    reference: HxWx3 uint8 BGR portrait (decoded, bounded); challenge: None = draw one."""

    request_id: str
    nonce: bytes
    iat: float
    exp: float
    reference: np.ndarray
    challenge: list[str] | None
    kid: bytes


DETAIL_MAX_CHARS = 120  # a rejected result's detail, e.g. "image is too large (5472x3648 pixels > 4000000)"


class CommandRejected(Exception):
    """A command that starts nothing. reason: a short word (health counter, result reason);
    request_id / nonce: the authentic command's ids when they could be read (well-typed),
    else None. Only an authentic command's refusal is ever answered (daemon.py)."""

    def __init__(self, reason: str, request_id: str | None = None, nonce: bytes | None = None, detail: str = ""):
        super().__init__(reason)
        self.reason, self.request_id, self.nonce, self.detail = reason, request_id, nonce, detail


# refusals of input that is not an authentic command: counted, never answered
UNAUTHENTICATED = ("too_large", "not_cose", "bad_header", "unknown_key", "bad_signature")


def _ids(payload: Any) -> tuple[str | None, bytes | None]:
    if not isinstance(payload, dict):
        return None, None
    rid, nonce = payload.get("request_id"), payload.get("nonce")
    rid = rid if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS else None
    nonce = nonce if isinstance(nonce, bytes) and 0 < len(nonce) <= MAX_NONCE_BYTES else None
    return rid, nonce


def _finite_number(val: Any) -> bool:
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
    return Identified(cast(str, rid), cast(bytes, nonce), float(cast(float, exp)) + skew_s if _finite_number(exp) else math.inf)


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
        if not _finite_number(val):
            raise CommandRejected(f"bad_{name}", rid, nonce)
    if iat > now + skew_s:
        raise CommandRejected("not_yet_valid", rid, nonce)
    if exp < now - skew_s:
        raise CommandRejected("expired", rid, nonce)
    if exp - iat > max_age_s or exp < iat:
        raise CommandRejected("lifetime_too_long" if exp >= iat else "bad_exp", rid, nonce)
    challenge = p.get("challenge")
    if challenge is not None:
        if not isinstance(challenge, (list, tuple)) or len(challenge) > 6 or any(s not in STEPS for s in challenge):
            raise CommandRejected("bad_challenge", rid, nonce)
    extra = set(p) - {"request_id", "nonce", "iat", "exp", "reference", "challenge"}
    if extra:
        raise CommandRejected("bad_payload", rid, nonce)
    ref = p["reference"]
    if not isinstance(ref, bytes):
        raise CommandRejected("bad_reference", rid, nonce, "not bytes")
    try:
        image = decode_image(ref, max_bytes, max_pixels, what="reference")
    except InputError as exc:  # its words name format and size only, never content
        raise CommandRejected("bad_reference", rid, nonce, str(exc)[:DETAIL_MAX_CHARS]) from None
    return VerifyCommand(cast(str, rid), cast(bytes, nonce), float(iat), float(exp), image, None if challenge is None else list(challenge), v.kid)


def parse_verify(message: bytes, topic: str, keys: dict, now: float, *, max_bytes: int,
                 max_age_s: float, skew_s: float, max_pixels: int) -> VerifyCommand:
    """authenticate() then check_command(): a checked command, or CommandRejected(reason)
    (ids only when the command was authentic). Replays are checked by the caller (it owns
    the persisted record)."""
    v = authenticate(message, topic, keys, max_bytes=max_bytes)
    return check_command(v, now, max_bytes=max_bytes, max_age_s=max_age_s, skew_s=skew_s, max_pixels=max_pixels)


def verify_command(reference: bytes, now: float, lifetime_s: float, request_id: str | None = None,
                   challenge: list[str] | None = None) -> dict:
    """A backend's cmd/verify payload (to be signed for the device's cmd/verify topic):
    a fresh 16-byte nonce, iat = now, exp = now + lifetime_s, a random request id unless
    given, and `challenge` only when the backend fixes the steps."""
    payload = {"request_id": request_id or os.urandom(8).hex(), "nonce": os.urandom(16), "iat": int(now),
               "exp": int(now + lifetime_s), "reference": reference}
    if challenge is not None:
        payload["challenge"] = list(challenge)
    return payload


# -- payloads ------------------------------------------------------------------------------
def policy_hash(settings: dict) -> str:
    """SHA-256 (hex, first 16 digits) of the decision settings in canonical JSON."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def public_quality(quality: dict) -> dict:
    """The quality figures fit to publish: frames used and the probe's image quality
    (face size, sharpness, brightness, pose) — no similarity, no scores."""
    out: dict = {}
    probe = quality.get("probe") or {}
    for k in ("face_px", "sharpness", "brightness", "yaw_deg", "pitch_deg"):
        if k in probe:
            out[k] = float(probe[k])
    if "frames" in quality:
        out["frames"] = int(quality["frames"])
    return out


def public_liveness(liveness: dict) -> dict:
    """Steps asked and passed; pass / fail of each check; no scores."""
    out: dict = {}
    if "steps" in liveness:
        out["steps"] = list(liveness["steps"])
        out["active_pass"] = bool(liveness.get("active_pass"))
    if "passive_pass" in liveness:
        out["passive_pass"] = bool(liveness["passive_pass"])
    return out


def result_payload(*, dev: str, boot: str, seq: int, iat: float, session: str | None,
                   request_id: str | None, nonce: bytes | None, decision: str, reason: str | None,
                   liveness: dict, quality: dict, models: dict, policy: str, detail: str = "") -> dict:
    """The CBOR map signed into R/result (contract v1); `detail` (a rejected command's
    what-is-wrong, e.g. a bad_reference's size) only when there is one."""
    assert decision in DECISIONS, decision
    return {"v": RESULT_VERSION, "dev": dev, "boot": boot, "seq": seq, "iat": int(iat),
            "session": session, "request_id": request_id, "nonce": nonce, "decision": decision,
            "reason": reason, "liveness": public_liveness(liveness), "quality": public_quality(quality),
            "models": dict(models), "policy": policy, **({"detail": detail} if detail else {})}


def attest_payload(*, dev: str, kid: bytes, public: bytes, version: str, models: dict,
                   boot: str, iat: float) -> dict:
    return {"v": RESULT_VERSION, "dev": dev, "kid": kid, "pub": public, "sw": version,
            "models": dict(models), "boot": boot, "iat": int(iat)}


def event_json(session: str | None, request_id: str | None, decision: str, ts: float) -> bytes:
    return json.dumps({"session": session, "request_id": request_id, "decision": decision,
                       "ts": round(ts, 3)}).encode()


def state_json(state: str, step: str | None = None, session: str | None = None) -> bytes:
    assert state in STATES, state
    return json.dumps({"state": state, "step": step, "session": session}).encode()


GUIDE_KEYS = ("session", "state", "step", "hint", "step_progress", "progress", "seconds_left", "step_seconds_left")


def guide_json(guidance: dict) -> bytes:
    """R/guide: one guidance update (guidance.Guidance.as_dict()): words from vocab and
    fractions only -- the keys of GUIDE_KEYS and nothing else (no box, score or image)."""
    assert set(guidance) == set(GUIDE_KEYS), sorted(guidance)
    assert guidance["state"] in STATES and guidance["hint"] in HINTS, guidance
    return json.dumps({k: guidance[k] for k in GUIDE_KEYS}).encode()


def ha_discovery(topics: Topics, dev: str, version: str, ha_prefix: str) -> list[tuple[str, bytes]]:
    """Home Assistant MQTT discovery configs (retained): connectivity, state, last
    decision (event entity), and health figures."""
    device = {"identifiers": [f"facegate_{dev}"], "name": f"facegate {dev}", "manufacturer": "facegate",
              "model": "face verification terminal", "sw_version": version}
    avail = {"availability_topic": topics.status, "payload_available": "online", "payload_not_available": "offline"}
    uid = f"facegate_{dev}"
    out = []

    def add(component: str, key: str, cfg: dict) -> None:
        cfg = {"unique_id": f"{uid}_{key}", "object_id": f"{uid}_{key}", "device": device, **cfg}
        out.append((f"{ha_prefix}/{component}/{uid}/{key}/config", json.dumps(cfg).encode()))

    add("binary_sensor", "online", {"name": "Online", "state_topic": topics.status, "payload_on": "online",
                                    "payload_off": "offline", "device_class": "connectivity"})
    add("sensor", "state", {**avail, "name": "State", "state_topic": topics.state,
                            "value_template": "{{ value_json.state }}", "json_attributes_topic": topics.state})
    add("event", "decision", {**avail, "name": "Decision", "state_topic": topics.event,
                              "event_types": list(DECISIONS),
                              "value_template": '{ "event_type": "{{ value_json.decision }}" }'})
    for key, name, unit in (("outbox_depth", "Outbox depth", None), ("fps", "Frames per second", "fps"),
                            ("uptime_s", "Uptime", "s"), ("sessions", "Sessions", None)):
        cfg = {**avail, "name": name, "state_topic": topics.health,
               "value_template": f"{{{{ value_json.{key} }}}}", "entity_category": "diagnostic"}
        if unit:
            cfg["unit_of_measurement"] = unit
        add("sensor", key, cfg)
    add("binary_sensor", "camera", {**avail, "name": "Camera", "state_topic": topics.health,
                                    "value_template": "{{ 'ON' if value_json.camera_ok else 'OFF' }}",
                                    "device_class": "running", "entity_category": "diagnostic"})
    return out
