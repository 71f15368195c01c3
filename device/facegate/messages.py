"""The contract's old address: everything that was here lives in the contract room
(device/facegate/contract/); these names stay for the tests and scripts that import them.
New code imports facegate.contract."""
from __future__ import annotations

from .contract import (
    DECISIONS,
    DETAIL_MAX_CHARS,
    GUIDE_KEYS,
    MAX_ID_CHARS,
    MAX_NONCE_BYTES,
    RESULT_VERSION,
    UNAUTHENTICATED,
    Attest,
    Command,
    CommandRejected,
    Identified,
    Result,
    Topics,
    VerifyCommand,
    authenticate,
    check_command,
    event_json,
    guide_json,
    ha_discovery,
    identify,
    parse_verify,
    policy_hash,
    state_json,
)
from .contract.command import STEPS
from .contract.result import public_liveness, public_quality
from .contract.telemetry import HINTS, STATES


def verify_command(reference: bytes, now: float, lifetime_s: float, request_id: str | None = None,
                   challenge: list[str] | None = None) -> dict:
    """Command.new(...).to_map()."""
    return Command.new(reference, now, lifetime_s, request_id, challenge).to_map()


def result_payload(**fields) -> dict:
    """Result.of(**fields).to_map()."""
    return Result.of(**fields).to_map()


def attest_payload(*, dev: str, kid: bytes, public: bytes, version: str, models: dict, boot: str,
                   iat: float) -> dict:
    """Attest(...).to_map()."""
    return Attest(dev, public, kid, version, boot, dict(models), int(iat)).to_map()


__all__ = ["DECISIONS", "DETAIL_MAX_CHARS", "GUIDE_KEYS", "HINTS", "MAX_ID_CHARS", "MAX_NONCE_BYTES",
           "RESULT_VERSION", "STATES", "STEPS", "UNAUTHENTICATED", "CommandRejected", "Identified", "Topics",
           "VerifyCommand", "attest_payload", "authenticate", "check_command", "event_json", "guide_json",
           "ha_discovery", "identify", "parse_verify", "policy_hash", "public_liveness", "public_quality",
           "result_payload", "state_json", "verify_command"]
