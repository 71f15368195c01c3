"""The terminal's unsigned topics, both ends: R/status (a `Presence` word), R/state,
R/event, R/guide and R/health (JSON), and Home Assistant's discovery configs. The words
come from vocab; a backend reads health with `HealthReport.parse`."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..vocab import Hint, Presence, State, Verdict
from . import limits
from .result import MalformedMessage
from .topics import Topics

STATES = tuple(State)
HINTS = tuple(Hint)
DECISIONS = tuple(Verdict)
PRESENCE = tuple(Presence)
GUIDE_KEYS = ("session", "state", "step", "hint", "step_progress", "progress", "seconds_left", "step_seconds_left")
HEALTH_FLAGS = ("clock_synchronized", "camera_ok", "models_ok", "storage_ok")  # False = a problem; None: cannot tell


def presence(word: Presence) -> bytes:
    """R/status's payload."""
    return Presence(word).value.encode()


def state_json(state: str, step: str | None = None, session: str | None = None) -> bytes:
    assert state in STATES, state
    return json.dumps({"state": state, "step": step, "session": session}).encode()


def event_json(session: str | None, request_id: str | None, decision: str, ts: float) -> bytes:
    return json.dumps({"session": session, "request_id": request_id, "decision": decision,
                       "ts": round(ts, 3)}).encode()


def guide_json(guidance: Mapping) -> bytes:
    """R/guide: one guidance update (guidance.Guidance.as_dict()): words from vocab and
    fractions only -- the keys of GUIDE_KEYS and nothing else (no box, score or image)."""
    assert set(guidance) == set(GUIDE_KEYS), sorted(guidance)
    assert guidance["state"] in STATES and guidance["hint"] in HINTS, guidance
    return json.dumps({k: guidance[k] for k in GUIDE_KEYS}).encode()


def health_json(doc: Mapping) -> bytes:
    """R/health: the status document's health counters (status.HealthDoc) as JSON."""
    return json.dumps(doc).encode()


@dataclass(frozen=True)
class HealthReport:
    """A terminal's R/health as a backend keeps it: the whole map (bounded, for its
    column) and what the fleet view reads from it."""

    doc: dict
    outbox_depth: int | None  # None: absent or not a 63-bit int; -1: the terminal cannot read its outbox

    @classmethod
    def parse(cls, data: bytes, max_bytes: int = limits.MAX_HEALTH_BYTES) -> HealthReport:
        """MalformedMessage(too_large | too_deep | not_json | not_an_object | a
        limits.tree_problem) for anything that is not a bounded JSON object."""
        doc, why = limits.parse_json_map(data, max_bytes)
        if doc is None:
            raise MalformedMessage(why or "not_json")
        depth = doc.get("outbox_depth")
        return cls(doc, depth if limits.int63(depth) else None)

    def flag(self, name: str) -> bool | None:
        """One of HEALTH_FLAGS: False only when the terminal said false."""
        value = self.doc.get(name)
        return value if isinstance(value, bool) else None


def ha_discovery(topics: Topics, dev: str, version: str, ha_prefix: str) -> list[tuple[str, bytes]]:
    """Home Assistant MQTT discovery configs (retained): connectivity, state, last
    decision (event entity), and health figures."""
    device = {"identifiers": [f"facegate_{dev}"], "name": f"facegate {dev}", "manufacturer": "facegate",
              "model": "face verification terminal", "sw_version": version}
    avail = {"availability_topic": topics.status, "payload_available": Presence.ONLINE.value,
             "payload_not_available": Presence.OFFLINE.value}
    uid = f"facegate_{dev}"
    out = []

    def add(component: str, key: str, cfg: dict) -> None:
        cfg = {"unique_id": f"{uid}_{key}", "object_id": f"{uid}_{key}", "device": device, **cfg}
        out.append((f"{ha_prefix}/{component}/{uid}/{key}/config", json.dumps(cfg).encode()))

    add("binary_sensor", "online", {"name": "Online", "state_topic": topics.status, "payload_on": Presence.ONLINE.value,
                                    "payload_off": Presence.OFFLINE.value, "device_class": "connectivity"})
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
