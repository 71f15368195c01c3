"""The attestation (R/attest, retained), both ends: the terminal announces its key, its
software and the models it loaded, signed by that very key (proof of possession, not of
trust: an operator's approval makes the key trusted); a backend checks it with
`Attest.verify`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import limits
from .cose import SignatureError, SigningKey, kid_of, sign, unverified_field, verify
from .result import RESULT_VERSION


@dataclass(frozen=True)
class Attest:
    """dev: the device id; pub: its raw 32-byte Ed25519 public key, kid = kid_of(pub);
    sw: software version; models: task -> sha256; boot: this run's id; iat: Unix seconds
    (None / sw None / boot None only in one a backend received)."""

    dev: str
    pub: bytes
    kid: bytes
    sw: str | None
    boot: str | None
    models: dict = field(default_factory=dict)
    iat: float | None = None
    v: int = RESULT_VERSION

    @classmethod
    def of(cls, key: SigningKey, *, dev: str, version: str, models: Mapping, boot: str, iat: float) -> Attest:
        """The terminal's attestation of `key` (iat in whole seconds)."""
        return cls(dev, key.public, key.kid, version, boot, dict(models), int(iat))

    def to_map(self) -> dict:
        return {"v": self.v, "dev": self.dev, "kid": self.kid, "pub": self.pub, "sw": self.sw,
                "models": self.models, "boot": self.boot, "iat": self.iat}

    def sign(self, key: SigningKey, topic: str) -> bytes:
        return sign(self.to_map(), key, topic)

    @classmethod
    def verify(cls, message: bytes, topic: str, dev: str) -> Attest | None:
        """The attestation of `dev` on `topic`, or None when it is malformed, not signed by
        the key inside it for this topic, names another device or key, or has a field no
        database column holds."""
        pub = unverified_field(message, "pub")
        try:
            key = Ed25519PublicKey.from_public_bytes(pub)  # not bytes / not 32 bytes: TypeError / ValueError
            v = verify(message, key, topic)
        except (SignatureError, ValueError, TypeError):  # anything malformed or forged is not an attestation
            return None
        p = v.payload
        if p.get("dev") != dev or p.get("kid") != kid_of(pub):
            return None
        sw, boot, iat, models = p.get("sw"), p.get("boot"), p.get("iat"), p.get("models")
        if not (limits.opt_text(sw) and limits.opt_text(boot) and (iat is None or limits.number(iat))
                and (models is None or (isinstance(models, dict) and limits.tree_problem(models) is None))):
            return None
        return cls(dev, pub, kid_of(pub), sw, boot, models or {}, iat)
