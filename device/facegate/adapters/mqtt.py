"""The MQTT communicator (paho-mqtt 2.x, MQTT 5): the only module that imports paho.

Connects asynchronously (paho's own thread reconnects with back-off), sets the retained
last will, honours TLS / client certificates / user name and password from the config,
and reports PUBACKs per message so the outbox forgets a result only once the broker has
it. Topic prefixes are added by the daemon, not here.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import Config, MqttConfig
from ..errors import ConfigError
from ..ports import Inbound
from ..registry import PUBLISHERS
from ..vocab import PublisherKind

log = logging.getLogger("facegate.mqtt")
_paho_log = logging.getLogger("facegate.mqtt.paho")
# paho logs "Client is not connected. Socket: None) ..." at error level on every loop while
# the broker is away; the adapter says that once, in its own words (_handle_connect_fail)
_paho_log.addFilter(lambda r: not str(r.msg).startswith("Client is not connected"))
SESSION_EXPIRY_S = 3600
PACKET_HEADROOM_BYTES = 64 * 1024  # fixed and variable header, topic, properties, beyond the payload


@PUBLISHERS.register(PublisherKind.MQTT)
class PahoPublisher:
    """ports.Publisher over paho-mqtt. will: (topic, payload) published retained, QoS 1,
    by the broker when this client vanishes."""

    @classmethod
    def from_config(cls, cfg: Config, will: tuple[str, bytes] | None = None) -> PahoPublisher:
        """The daemon's: mqtt.* of cfg, client id mqtt.client_id or facegate-<device_id>, `will`
        (topic, payload) retained, payloads up to daemon.max_command_bytes."""
        return cls(cfg.mqtt, cfg.mqtt.client_id or f"facegate-{cfg.device_id}", will=will,
                   max_payload_bytes=cfg.daemon.max_command_bytes)

    def __init__(self, cfg: MqttConfig, client_id: str, will: tuple[str, bytes] | None,
                 persistent: bool = True, max_payload_bytes: int | None = None):
        """persistent: ask the broker to keep this client's session (and queue its
        commands) for SESSION_EXPIRY_S across disconnects; a one-off check says False.
        max_payload_bytes: the largest message payload this client takes; CONNECT tells
        the broker (MQTT 5 Maximum Packet Size = this + PACKET_HEADROOM_BYTES), which then
        never sends a larger packet (MQTT 5 section 3.1.2.11.4: it drops it), so an
        oversized message never reaches this process's memory. None: no limit."""
        self.cfg = cfg
        self.persistent = persistent
        self.max_packet_bytes = None if max_payload_bytes is None else max_payload_bytes + PACKET_HEADROOM_BYTES
        self.connected = False
        self.refused = 0  # QoS 1 publishes the broker answered with a failure reason code
        self.last_error = ""
        self._refused_logged = self._unreachable_logged = False  # said once per outage
        self._acks: dict[int, Callable[[], None] | None] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()  # never held while calling into paho
        # held by publish() and by _handle_connect() with its on_connect callback (re-entered
        # by what that callback publishes); never by a callback that paho may run under its
        # own message lock (on_publish, on_disconnect), so the order is always gate -> paho
        self._gate = threading.RLock()
        self._on_message = self._on_connect = self._on_disconnect = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.enable_logger(_paho_log)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.read_password())
        c.on_pre_connect = self._handle_pre_connect
        if cfg.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                value = getattr(cfg, name)
                if value and not Path(value).is_file():
                    raise ConfigError(f"mqtt.{name}: {value} does not exist")
            c.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                      keyfile=cfg.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.reconnect_delay_set(min_delay=max(1, int(cfg.reconnect_min_s)), max_delay=max(1, int(cfg.reconnect_max_s)))
        c.max_inflight_messages_set(cfg.max_inflight)
        c.max_queued_messages_set(0)
        c.on_connect = self._handle_connect
        c.on_connect_fail = self._handle_connect_fail
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_publish = self._handle_publish
        c.on_socket_open = self._handle_socket_open
        self._client = c

    # -- paho callbacks (network thread) -------------------------------------------------
    def _handle_pre_connect(self, client, userdata) -> None:
        """The password file is read again before every attempt: a corrected file is used
        at the next reconnect, without a restart."""
        if self.cfg.username:
            try:
                client.username_pw_set(self.cfg.username, self.cfg.read_password())
            except ConfigError as exc:
                log.warning("%s (keeping the password read before)", exc)

    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"connection refused: {reason_code}"
            why = ""
            if reason_code.value in (134, 135):  # bad user name or password / not authorized
                self.last_error += " (check mqtt.username and mqtt.password_file)"
                why = (f" (check mqtt.username '{self.cfg.username}' and mqtt.password_file: the broker's password"
                       " file must hold this user with that password; the file is read again at every attempt)")
            if not self._refused_logged:
                log.warning("broker %s:%d refused the connection: %s%s", self.cfg.host, self.cfg.port, reason_code,
                            why)
                self._refused_logged = True
            return
        self._refused_logged = self._unreachable_logged = False
        # paho would now re-send what it still holds, ahead of anything newer; the outbox
        # re-sends all of it in seq order instead (and the daemon re-publishes its state).
        # The gate: no other thread's publish goes out on this connection before the
        # daemon's on_connect has put the outbox back in line (see ports.Publisher)
        with self._gate:
            dropped = self._client.drop_out_messages()
            with self._lock:
                for m in dropped:
                    self._acks.pop(m.mid, None)
                self._early.clear()
            self.connected = True
            self.last_error = ""
            log.info("connected to %s:%d", self.cfg.host, self.cfg.port)
            if self._on_connect:
                self._on_connect()

    @staticmethod
    def _handle_socket_open(client, userdata, sock) -> None:
        """No Nagle delay: a result is one small packet that should leave at once
        (measured by scripts/soak.py: p50 87 -> 30 ms with the broker doing the same)."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not a TCP socket (unix socket, websocket wrapper)

    def _handle_connect_fail(self, client, userdata) -> None:
        self.last_error = f"cannot reach {self.cfg.host}:{self.cfg.port} (connection or TLS handshake failed)"
        if not self._unreachable_logged:
            log.warning("%s; trying again every %g s at most (mqtt.reconnect_max_s)", self.last_error,
                        max(1, int(self.cfg.reconnect_max_s)))
            self._unreachable_logged = True

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        if was:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("disconnected from the broker %s:%d: %s; reconnecting", self.cfg.host, self.cfg.port,
                        reason_code)
            if self._on_disconnect:
                self._on_disconnect()

    def _handle_message(self, client, userdata, msg) -> None:
        props = getattr(msg, "properties", None)
        rt = getattr(props, "ResponseTopic", None) if props else None
        corr = getattr(props, "CorrelationData", None) if props else None
        if self._on_message:
            self._on_message(Inbound(msg.topic, bytes(msg.payload), rt or None, corr, bool(msg.dup)))

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code is not None and reason_code.is_failure:
            self.refused += 1
            log.error("broker refused message %d: %s", mid, reason_code)
        with self._lock:
            if mid in self._acks:
                cb = self._acks.pop(mid)
            else:
                self._early.add(mid)
                return
        if cb:
            cb()

    # -- ports.Publisher -------------------------------------------------------------
    def start(self, on_message, on_connect, on_disconnect) -> None:
        self._on_message, self._on_connect, self._on_disconnect = on_message, on_connect, on_disconnect
        # a persistent session: commands sent while this client is briefly away are queued
        # by the broker (they still expire by their own `exp`)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S if self.persistent else 0
        if self.max_packet_bytes is not None:
            props.MaximumPacketSize = self.max_packet_bytes
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                                   clean_start=not self.persistent, properties=props)
        self._client.loop_start()

    def subscribe(self, topic: str) -> None:
        self._client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                correlation: bytes | None = None, on_ack: Callable[[], None] | None = None,
                only_if: Callable[[], bool] | None = None) -> bool:
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        with self._gate:
            if not self.connected or (only_if is not None and not only_if()):
                return False
            try:
                info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
            except OSError as exc:
                log.error("publish to %s failed: %s", topic, exc)
                return False
            # ValueError (a topic or payload no broker takes) propagates: retrying cannot help
            with self._lock:  # every mid is registered, so an early PUBACK is never mistaken
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    fire = True
                else:
                    self._acks[info.mid] = on_ack
                    fire = False
        if fire and on_ack:
            on_ack()
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def stop(self, last: Sequence[tuple[str, bytes]] = (), timeout_s: float = 3.0) -> None:
        """Publish `last` (retained, QoS 1), wait for them up to timeout_s, disconnect."""
        infos = []
        if self.connected:
            for topic, payload in last:
                try:
                    infos.append(self._client.publish(topic, payload, qos=1, retain=True))
                except (ValueError, OSError):
                    pass
        for info in infos:
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self.connected = False
