"""The contract room: every message that crosses MQTT, typed, with its CBOR / JSON form,
its checks and its COSE signing, built and parsed only here; the terminal, the CLI and the
backend import it alike (docs/contract.md: the wire table, and under "Where the contract
lives in the code" what a new result field touches).

| topic | type | module |
|---|---|---|
| R/cmd/verify | `Command` (backend) → `VerifyCommand` (terminal, `parse_verify`) | command |
| R/result, response topic | `Result` | result |
| R/attest | `Attest` | attest |
| R/status, state, event, guide, health; HA discovery | `Presence`, `state_json`, …, `HealthReport` | telemetry |
| every topic | `Topics` | topics |
| signed ones | COSE_Sign1 `sign` / `verify`, `SigningKey` | cose |
"""
from __future__ import annotations

from .attest import Attest
from .command import (
                      DETAIL_MAX_CHARS,
                      MAX_ID_CHARS,
                      MAX_NONCE_BYTES,
                      UNAUTHENTICATED,
                      Command,
                      CommandRejected,
                      Identified,
                      VerifyCommand,
                      authenticate,
                      check_command,
                      identify,
                      parse_verify,
)
from .cose import SignatureError, SigningKey, Verified, kid_of, public_from_hex, public_raw, sign, verify
from .result import DECISIONS, RESULT_VERSION, MalformedMessage, Result, payload_problem, policy_hash
from .telemetry import GUIDE_KEYS, HealthReport, event_json, guide_json, ha_discovery, health_json, presence, state_json
from .topics import Topics, topic_device

__all__ = ["DECISIONS", "DETAIL_MAX_CHARS", "GUIDE_KEYS", "MAX_ID_CHARS", "MAX_NONCE_BYTES", "RESULT_VERSION",
           "UNAUTHENTICATED", "Attest", "Command", "CommandRejected", "HealthReport", "Identified",
           "MalformedMessage", "Result", "SignatureError", "SigningKey", "Topics", "Verified", "VerifyCommand",
           "authenticate", "check_command", "event_json", "guide_json", "ha_discovery", "health_json", "identify",
           "kid_of", "parse_verify", "payload_problem", "policy_hash", "presence", "public_from_hex", "public_raw",
           "sign", "state_json", "topic_device", "verify"]
