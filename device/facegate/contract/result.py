"""The signed result (R/result, and the command's response topic), both ends: the
terminal makes one with `Result.of` (only decisions and public figures: never a score,
an image or an embedding) and signs it; a backend gets a `Result` back from the signed
bytes with `Result.of_map` (after the signature, whose key the caller trusts) or
`Result.verify`, every field type- and range-checked (`payload_problem`).

A new result field is a field here (with its place in `to_map`, its check in
`payload_problem` and its read in `of_map`) and a row in docs/contract.md's table; the
backend's store takes the typed `Result` whole."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..errors import FacegateError
from ..vocab import Verdict
from . import limits
from .cose import SignatureError, SigningKey, Verified, sign, verify

RESULT_VERSION = 1
DECISIONS = tuple(Verdict)  # the contract's words live in vocab.py
QUALITY_FIELDS = ("face_px", "sharpness", "brightness", "yaw_deg", "pitch_deg")
TEXT_FIELDS = ("reason", "request_id", "session", "boot", "policy")  # None or bounded text
MAP_FIELDS = ("liveness", "quality", "models")  # bounded maps ({} when absent)
MAX_DEV_CHARS = 64


class MalformedMessage(FacegateError):
    """A verified message whose payload is not the contract's (str(exc): bad_payload)."""


def policy_hash(settings: dict) -> str:
    """SHA-256 (hex, first 16 digits) of the decision settings in canonical JSON."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def public_quality(quality: Mapping) -> dict:
    """The quality figures fit to publish: frames used and the probe's image quality
    (face size, sharpness, brightness, pose) — no similarity, no scores."""
    out: dict = {}
    probe = quality.get("probe") or {}
    for k in QUALITY_FIELDS:
        if k in probe:
            out[k] = float(probe[k])
    if "frames" in quality:
        out["frames"] = int(quality["frames"])
    return out


def public_liveness(liveness: Mapping) -> dict:
    """Steps asked and passed; pass / fail of each check; no scores."""
    out: dict = {}
    if "steps" in liveness:
        out["steps"] = list(liveness["steps"])
        out["active_pass"] = bool(liveness.get("active_pass"))
    if "passive_pass" in liveness:
        out["passive_pass"] = bool(liveness["passive_pass"])
    return out


def payload_problem(p: Mapping) -> str | None:
    """None when a verified result payload has the contract's shape and every field fits
    a database column (limits: 63-bit seq >= 0, finite iat, bounded NUL-free strings,
    bounded maps), else 'bad_payload'. Unknown extra keys are allowed (a newer terminal)."""
    ok = (p.get("v") == RESULT_VERSION and limits.text(p.get("dev"), MAX_DEV_CHARS)
          and limits.int63(p.get("seq")) and p["seq"] >= 0
          and p.get("decision") in DECISIONS and limits.number(p.get("iat"))
          and all(limits.opt_text(p.get(k)) for k in TEXT_FIELDS)
          and all(isinstance(p.get(k, {}), dict) and limits.tree_problem(p.get(k, {})) is None
                  for k in MAP_FIELDS))
    return None if ok else "bad_payload"


OMIT = "omit"  # field metadata: the value for which the field is left out of the map


@dataclass(frozen=True)
class Result:
    """One decision as signed; the fields in their wire order. iat: Unix seconds (whole
    when the terminal made it); liveness: steps, active_pass, passive_pass; quality:
    face_px, sharpness, brightness, yaw_deg, pitch_deg, frames; models: task -> sha256;
    policy: the match policy's tag and settings hash; detail: a rejected command's
    what-is-wrong (left out of the map when ''). A new field is one line here (a default,
    and `metadata={OMIT: <its empty value>}` so earlier results keep their bytes), its
    check in payload_problem when the backend must rely on it, and docs/contract.md."""

    v: int = field(default=RESULT_VERSION, kw_only=True)
    dev: str
    boot: str | None
    seq: int
    iat: float
    session: str | None
    request_id: str | None
    nonce: bytes | None
    decision: Verdict
    reason: str | None
    liveness: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    policy: str | None = None
    detail: str = field(default="", metadata={OMIT: ""})

    @classmethod
    def of(cls, *, dev: str, boot: str, seq: int, iat: float, session: str | None, request_id: str | None,
           nonce: bytes | None, decision: str, reason: str | None, liveness: Mapping, quality: Mapping,
           models: Mapping, policy: str, detail: str = "") -> Result:
        """The terminal's result: iat whole seconds, liveness and quality cut to what may be
        published (public_liveness, public_quality)."""
        assert decision in DECISIONS, decision
        return cls(dev, boot, seq, int(iat), session, request_id, nonce, Verdict(decision), reason,
                   public_liveness(liveness), public_quality(quality), dict(models), policy, detail)

    def to_map(self) -> dict:
        """The CBOR map (contract v1): every field in declaration order, but those equal to
        their OMIT value."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if OMIT in f.metadata and value == f.metadata[OMIT]:
                continue
            out[f.name] = value
        return out

    def sign(self, key: SigningKey, topic: str) -> bytes:
        return sign(self.to_map(), key, topic)

    @classmethod
    def of_map(cls, p: Mapping[str, Any]) -> Result:
        """The typed result of a verified payload map, or MalformedMessage('bad_payload')
        when payload_problem finds one. A field the map lacks takes its default (None
        without one); keys the dataclass does not know are left in the signed bytes."""
        problem = payload_problem(p)
        if problem:
            raise MalformedMessage(problem)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in p:
                values[f.name] = p[f.name]
            elif f.default_factory is not MISSING:
                values[f.name] = f.default_factory()
            else:
                values[f.name] = None if f.default is MISSING else f.default
        values["decision"] = Verdict(values["decision"])
        if not isinstance(values["detail"], str):
            values["detail"] = ""
        return cls(**values)

    @classmethod
    def verify(cls, message: bytes, keys: dict | Any, topic: str) -> tuple[Result, Verified]:
        """Signature (cose.verify) then shape (of_map): (result, the verified message), or
        SignatureError(reason) with reason one of cose.verify's or bad_payload."""
        v = verify(message, keys, topic)
        try:
            return cls.of_map(v.payload), v
        except MalformedMessage as exc:
            raise SignatureError(str(exc)) from None
