"""The backend's MQTT 5 client (paho-mqtt 2): TLS, user and password file, persistent
sessions, subscriptions renewed on every connect, blocking publish / subscribe that wait
for the broker's answer, and manual acknowledgement of received QoS 1 messages. The only
importer of paho in the backend."""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import FacegateError
from .config import BrokerConfig

log = logging.getLogger(__name__)
SHORT_LIVED_S = 5.0  # a connection the broker drops sooner, again and again: another client with our id


class BrokerError(FacegateError):
    """The broker cannot be reached, refuses us, or did not answer in time."""


class PublishRefused(BrokerError):
    """The broker answered a publish with a failure reason code (an ACL that denies it)."""


@dataclass(frozen=True)
class Message:
    """A received message; `generation` names the connection it came on (an ack is only
    sent on that same connection)."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    dup: bool
    correlation: bytes | None
    generation: int
    via_journal: bool = False
    t_received: float = field(default_factory=time.time)


class BrokerClient:
    def __init__(self, cfg: BrokerConfig, client_id: str, *, on_message: Callable[[Message], None],
                 subscriptions: tuple[tuple[str, int], ...] = (), session_expiry_s: int = 0,
                 manual_ack: bool = False, receive_max: int | None = None, journal: bool = False):
        """session_expiry_s > 0: a persistent session (clean_start false) the broker keeps
        that long; manual_ack: a QoS 1 message is acknowledged only by ack(); journal: its
        messages are marked via_journal."""
        self.cfg, self.client_id = cfg, client_id
        self.subscriptions = list(subscriptions)
        self._on_message, self._session_expiry_s, self._receive_max = on_message, session_expiry_s, receive_max
        self._journal = journal
        self._lock = threading.Lock()
        self._sub_lock = threading.Lock()
        self._subacks: dict[int, tuple[threading.Event, list]] = {}
        self._connected = threading.Event()
        self.generation = 0
        self.last_error: str | None = None
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        manual_ack=manual_ack)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.read_password())
        c.on_pre_connect = self._handle_pre_connect
        if cfg.tls:
            try:
                c.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None, keyfile=cfg.key_file or None,
                          cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as exc:
                raise BrokerError(f"TLS set-up failed: {exc}") from None
        c.reconnect_delay_set(1, 10)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_subscribe = self._handle_subscribe
        c.on_publish = self._handle_publish
        self._puback: dict[int, object] = {}  # mid -> the failure reason code the broker answered with
        self._refused_connect = False
        self.taken_over: str | None = None  # set when another client took this session over (same client id)
        self._connected_at = 0.0
        self._short_lived = 0  # connections in a row the broker dropped within SHORT_LIVED_S
        c.on_socket_open = self._handle_socket_open
        self._client = c

    # -- paho callbacks (its network thread) ----------------------------------------------
    @staticmethod
    def _handle_socket_open(client, userdata, sock) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _handle_pre_connect(self, client, userdata) -> None:
        """The password file is read again before every attempt: a corrected password is
        used at the next reconnect, no restart needed."""
        if self.cfg.username:
            try:
                client.username_pw_set(self.cfg.username, self.cfg.read_password())
            except FacegateError as exc:
                log.warning("%s (keeping the password read before)", exc)

    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"connection refused: {reason_code}"
            if reason_code.value in (134, 135):  # bad user name or password / not authorized
                self.last_error += (f" (the broker does not take user '{self.cfg.username}' with the password in "
                                    f"mqtt.password_file {self.cfg.password_file or '(none)'}: check both; the "
                                    "file is read again at every attempt)")
            if not self._refused_connect:
                log.warning("broker %s:%d: %s", self.cfg.host, self.cfg.port, self.last_error)
            self._refused_connect = True  # paho's disconnect that follows says only "Protocol error"
            return
        self._refused_connect = False
        self._connected_at = time.monotonic()
        with self._lock:
            self.generation += 1
        for topic, qos in self.subscriptions:
            client.subscribe(topic, qos=qos)
        self.last_error = None
        self._connected.set()

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self.generation += 1  # nothing received before may be acknowledged now
        self._connected.clear()
        if reason_code.value == 142:  # Session taken over: another client connected with our client id
            self.taken_over = (f"another client connected with client id {self.client_id} and took this session "
                               "over: two serve workers with one --worker name (or two backends with one "
                               "mqtt.client_id) push each other off the broker; give each its own name")
            log.error("%s", self.taken_over)
        if reason_code.is_failure and not self._refused_connect and self._connected_at:
            lived = time.monotonic() - self._connected_at
            self._short_lived = self._short_lived + 1 if lived < SHORT_LIVED_S else 0
            if self._short_lived == 3:  # once per run of them
                log.error("the broker dropped this connection 3 times within seconds of making it: is another "
                          "client using client id %s? (two serve workers with one --worker name, or two backends "
                          "with one mqtt.client_id, push each other off)", self.client_id)
        if reason_code.is_failure and not self._refused_connect:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("disconnected from the broker %s:%d: %s", self.cfg.host, self.cfg.port, reason_code)

    def _handle_message(self, client, userdata, msg) -> None:
        props = msg.properties
        corr = getattr(props, "CorrelationData", None) if props else None
        self._on_message(Message(msg.topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.retain), bool(msg.dup),
                                 corr, self.generation, self._journal))

    # -- the backend's side ------------------------------------------------------------
    def start(self, wait: bool = True) -> BrokerClient:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        if self._receive_max:
            props.ReceiveMaximum = self._receive_max
        props.MaximumPacketSize = self.cfg.max_packet_bytes  # the broker drops what is bigger, never sends it
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                                   clean_start=self._session_expiry_s == 0, properties=props)
        self._client.loop_start()
        if wait:
            self.wait_connected(self.cfg.connect_timeout_s)
        return self

    def wait_connected(self, timeout_s: float) -> None:
        if not self._connected.wait(timeout_s):
            raise BrokerError(f"no connection to {self.cfg.host}:{self.cfg.port} within {timeout_s:g} s"
                              + (f" ({self.last_error})" if self.last_error else ""))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic: str, qos: int = 1, timeout_s: float = 10.0) -> None:
        """Subscribe now (waiting for the SUBACK) and again after every reconnect."""
        done, granted = threading.Event(), []  # type: tuple[threading.Event, list]
        with self._lock:
            self.subscriptions.append((topic, qos))
            generation = self.generation
        with self._sub_lock:  # the SUBACK's handler waits until `mid` is registered
            rc, mid = self._client.subscribe(topic, qos=qos)
            if mid is not None:
                self._subacks[mid] = (done, granted)
        if rc != mqtt.MQTT_ERR_SUCCESS or not done.wait(timeout_s):
            if mid is not None:
                with self._sub_lock:
                    self._subacks.pop(mid, None)
            if not self.connected or self.generation != generation:
                # the connection was lost meanwhile (and perhaps already made again):
                # _handle_connect subscribes on every connect, so it is (or will be) renewed
                log.warning("no SUBACK for %s: the connection was lost; subscribed again on reconnect", topic)
                return
            raise BrokerError(f"subscribing to {topic} failed (no SUBACK within {timeout_s:g} s)")
        if any(code.is_failure for code in granted):
            raise BrokerError(f"the broker refused the subscription to {topic}: {granted[0]}")

    def _handle_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._sub_lock:
            entry = self._subacks.pop(mid, None)
        if entry:
            entry[1].extend(reason_codes)
            entry[0].set()

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code is not None and reason_code.is_failure:
            with self._lock:
                self._puback[mid] = reason_code

    def publish(self, topic: str, payload: bytes, qos: int = 1, response_topic: str | None = None,
                correlation: bytes | None = None, timeout_s: float = 10.0, wait: bool = True) -> None:
        """Publish and, for QoS 1 (unless wait=False), wait for the PUBACK (raises BrokerError)."""
        props = None
        if response_topic or correlation:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=qos, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos and wait:
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:
                raise BrokerError(f"publish to {topic} failed: {exc}") from None
            if not info.is_published():
                raise BrokerError(f"the broker did not acknowledge the message to {topic} within {timeout_s:g} s")
            with self._lock:
                refused = self._puback.pop(info.mid, None)
            if refused is not None:
                raise PublishRefused(f"the broker refused the message to {topic}: {refused} (its ACL does not let "
                                     f"user '{self.cfg.username}' write there; make the backend's user with "
                                     f"'broker-setup.sh add-user DIR NAME --role backend')")

    def ack(self, msg: Message) -> bool:
        """Acknowledge a QoS 1 message on the connection it came on; False when that
        connection is gone (the broker sends it again on the next)."""
        if msg.qos == 0:
            return True
        with self._lock:
            if msg.generation != self.generation or not self._connected.is_set():
                return False
            return self._client.ack(msg.mid, msg.qos) == mqtt.MQTT_ERR_SUCCESS

    def reconnect(self) -> None:
        """Drop the connection and make it again (the session, if persistent, is kept)."""
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        try:
            self._client.reconnect()
        except OSError as exc:  # the loop keeps trying with back-off
            self.last_error = f"reconnect failed: {exc}"
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
