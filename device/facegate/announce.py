"""What the terminal tells the broker besides its results: online / stopped (retained
R/status, the will says offline), the signed attestation (R/attest), its state (R/state),
guidance for the person at the terminal (R/guide), health (R/health), one event per decision (R/event) and Home Assistant discovery (sent
again when Home Assistant says `online`, at most every DISCOVERY_MIN_INTERVAL_S)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from . import __version__
from .config import Config
from .contract import (
    Attest,
    SigningKey,
    Topics,
    event_json,
    guide_json,
    ha_discovery,
    health_json,
    presence,
    state_json,
)
from .guidance import Guidance
from .ports import Publisher
from .status import HealthDoc
from .vocab import Presence, State

HA_STATUS_TOPIC_SUFFIX = "/status"
DISCOVERY_MIN_INTERVAL_S = 2.0  # Home Assistant's "online" re-sends discovery at most this often


class Announcer:
    """Publishes through `publisher` (a NullPublisher when MQTT is off: nothing goes out).
    key(): the signing key now (SIGHUP replaces it); models: task -> sha256 of the loaded files."""

    def __init__(self, publisher: Publisher, cfg: Config, topics: Topics, key: Callable[[], SigningKey], boot: str,
                 models: dict[str, str], clock: Callable[[], float]):
        self.publisher, self.cfg, self.topics, self.key = publisher, cfg, topics, key
        self.boot, self.models, self.clock = boot, models, clock
        self.ha_status_topic = f"{cfg.mqtt.ha_prefix}{HA_STATUS_TOPIC_SUFFIX}"
        self._ha_online = threading.Event()  # Home Assistant said "online": re-send discovery
        self._discovery_at = -DISCOVERY_MIN_INTERVAL_S

    def connected(self, state: tuple[str, str | None, str | None], health: HealthDoc) -> None:
        """On (re)connect: subscribe first (whoever sees "online" may send a command at
        once), then online, the attestation, state, health and discovery."""
        p, ha = self.publisher, self.cfg.mqtt.ha_discovery
        p.subscribe(self.topics.cmd_verify)
        if ha:
            p.subscribe(self.ha_status_topic)
        p.publish(self.topics.status, presence(Presence.ONLINE), qos=1, retain=True)
        self.attest()
        self.state(*state)
        self.health(health)
        if ha:
            self.discovery()

    def attest(self) -> None:
        key = self.key()
        attest = Attest.of(key, dev=self.cfg.device_id, version=__version__, models=self.models, boot=self.boot,
                           iat=self.clock())
        self.publisher.publish(self.topics.attest, attest.sign(key, self.topics.attest), qos=1, retain=True)

    def discovery(self) -> None:
        self._discovery_at = time.monotonic()
        for topic, payload in ha_discovery(self.topics, self.cfg.device_id, __version__, self.cfg.mqtt.ha_prefix):
            self.publisher.publish(topic, payload, qos=1, retain=True)

    def ha_message(self, payload: bytes) -> None:
        """Home Assistant's status (paho's thread): "online" asks for discovery again."""
        if payload == presence(Presence.ONLINE):
            self._ha_online.set()

    def discovery_if_asked(self) -> None:
        """The command thread: re-send discovery when asked, at most every 2 s."""
        if self._ha_online.is_set() and time.monotonic() - self._discovery_at >= DISCOVERY_MIN_INTERVAL_S:
            self._ha_online.clear()
            self.discovery()

    def state(self, state: str, step: str | None = None, session: str | None = None) -> None:
        self.publisher.publish(self.topics.state, state_json(state, step, session), qos=1, retain=True)

    def guide(self, guidance: Guidance) -> None:
        """QoS 0, not retained: a guidance update is stale within a second."""
        self.publisher.publish(self.topics.guide, guide_json(guidance.as_dict()), qos=0)

    def health(self, doc: HealthDoc) -> None:
        self.publisher.publish(self.topics.health, health_json(doc), qos=0, retain=True)

    def event(self, session: str | None, request_id: str | None, decision: str) -> None:
        self.publisher.publish(self.topics.event, event_json(session, request_id, decision, self.clock()), qos=0)

    def stopped(self) -> None:
        """Last words on a clean stop: stopped and idle (retained), then disconnect."""
        self.publisher.stop([(self.topics.status, presence(Presence.STOPPED)), (self.topics.state, state_json(State.IDLE))])
