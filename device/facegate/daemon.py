"""`facegate run`: verification sessions over MQTT, signed results, nothing lost.

Threads: paho's network thread authenticates inbound messages (admission.Gate: size,
COSE signature by a trusted key for the command topic) and queues only authentic ones, waiting for room rather
than dropping one; everything else is counted in health (`ignored`) and never answered.
The command thread admits the authentic commands (replay, lifetime, payload, storage,
busy: admission.Gate.admit) and answers
refusals at once, signed and bound to the command's request_id and nonce; the
delivery thread moves signed results from the outbox to the broker in seq order and drops
them only on PUBACK; the camera thread keeps the newest frame; the main thread runs one
session at a time, publishes state and health, feeds systemd's watchdog while frames flow,
and reacts to each decision (LEDs, relay) in one place. Signal handlers only set flags.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

from . import __version__, status
from . import config as config_mod
from .admission import Accepted, Authentic, Gate, Ignored, InboundQueue, Refused, Request, trusted_keys
from .config import Config
from .delivery import Delivery
from .errors import FacegateError
from .feed import FrameFeed
from .liveness.check import LivenessPlan
from .messages import (
    Topics,
    attest_payload,
    event_json,
    ha_discovery,
    policy_hash,
    result_payload,
    state_json,
)
from .outbox import Outbox, OutboxError
from .pipeline import Verifier
from .ports import Camera, Clock, Inbound, Indicators, Publisher
from .session import Session, live, replay
from .signing import load_or_create_key, sign
from .status import BrokerDoc, Health, HealthDoc, KeyDoc, LastDecision, StateDoc, StatusDoc
from .types import Decision, Frame
from .vocab import State

StateObserver = Callable[[State, "str | None", "str | None"], None]  # (state, step, session)

log = logging.getLogger("facegate.daemon")

HA_STATUS_TOPIC_SUFFIX = "/status"
DISCOVERY_MIN_INTERVAL_S = 2.0  # Home Assistant's "online" re-sends discovery at most this often
INBOUND_SLOTS = 64  # authentic commands waiting for the command thread (bounded in bytes too)


def key_source(cfg: Config) -> tuple[Path, str]:
    """Where the signing key lives and why: (path, "config" | "credential" | "state_dir")."""
    if cfg.daemon.key_file:
        return Path(cfg.daemon.key_file), "config"
    cred = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred and (Path(cred) / "signing.key").exists():
        return Path(cred) / "signing.key", "credential"
    return Path(cfg.daemon.state_dir) / "signing.key", "state_dir"


def key_path(cfg: Config) -> Path:
    """Where the signing key lives: config, else the systemd credential, else state dir."""
    return key_source(cfg)[0]


def decision_policy(cfg: Config) -> str:
    """Hash of every setting that changes a decision (published in each result)."""
    return policy_hash({"verify": cfg.verify.model_dump(), "liveness": cfg.liveness.model_dump(),
                        "mode": cfg.daemon.liveness, "session_timeout_s": cfg.daemon.session_timeout_s,
                        "precision": cfg.models.precision})


def react(indicators: Indicators, decision: str) -> None:
    """The one place a decision reaches the hardware: the relay pulses only on a match."""
    if decision == "match":
        indicators.pulse_relay()
        indicators.show("pass")
    else:
        indicators.show("fail")
    indicators.beep()


class Daemon:
    """One terminal. Every collaborator comes in from outside (build() makes the real
    ones): models, camera opener, publisher, indicators, notifier."""

    def __init__(self, cfg: Config, *, verifier: Verifier, liveness: LivenessPlan | None,
                 camera, open_camera: Callable[[], Camera], publisher: Publisher | None, indicators: Indicators,
                 notifier, models: dict[str, str], config_path: str | None = None,
                 model_selftest: dict[str, dict] | None = None, clock: Clock | None = None,
                 on_state: StateObserver | None = None):
        self.cfg = cfg
        if clock is None:
            from .adapters.clock import SystemClock
            clock = SystemClock()
        self.clock = clock  # wall time for commands, results and the outbox; clock synchronisation
        self.config_path = config_path
        self.verifier, self.liveness = verifier, liveness  # each session's check is made from the plan (None: none)
        self.on_state = on_state or (lambda state, step, session: None)  # the demo's narrator
        self.camera = camera  # never ends: reopens itself (adapters.cameras.ReopeningCamera)
        self.open_camera = open_camera  # a fresh camera: per-session replays of a file
        self.publisher, self.indicators, self.notifier = publisher, indicators, notifier
        self.models = models
        self.model_selftest = model_selftest or {}  # task -> variant chosen and why (modelstore.Choice)
        self.topics = Topics.of(cfg.mqtt.prefix, cfg.device_id)
        self.boot = uuid.uuid4().hex
        self.state_dir = Path(cfg.daemon.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.key, created = load_or_create_key(key_path(cfg))
        if created:
            log.info("created signing key %s (kid %s)", key_path(cfg), self.key.kid.hex())
        self.policy = decision_policy(cfg)
        self.outbox = Outbox(self.state_dir / "outbox.sqlite", cfg.daemon.outbox_max_age_s, cfg.daemon.outbox_max_rows,
                             clock=self.clock.time, keep_acked_s=cfg.mqtt.redeliver_s)
        self.health = Health()
        self.stop_flag = threading.Event()
        self.cancel_flag = threading.Event()  # the button was pressed during the running session
        indicators.on_button(self._button_pressed)
        self.reload_flag = threading.Event()
        self.state = ("idle", None, None)
        self.inbound = InboundQueue(INBOUND_SLOTS, 2 * cfg.daemon.max_command_bytes)
        self._ha_online = threading.Event()  # Home Assistant said "online": re-send discovery
        self._discovery_at = -DISCOVERY_MIN_INTERVAL_S
        self.requests: queue.Queue = queue.Queue(maxsize=cfg.daemon.max_pending)
        self.delivery = Delivery(self.outbox, publisher, cfg.mqtt.max_inflight)
        self.gate = Gate(cfg, self.topics, self.outbox, self.clock.time, lambda: self.delivery.held)
        self._threads: list[threading.Thread] = []
        self.feed: FrameFeed | None = None
        self.ready = False

    # -- MQTT side -----------------------------------------------------------------------
    def _on_connect(self) -> None:
        p = self.publisher
        # subscribe first: whoever sees "online" may send a command at once
        p.subscribe(self.topics.cmd_verify)
        if self.cfg.mqtt.ha_discovery:
            p.subscribe(f"{self.cfg.mqtt.ha_prefix}{HA_STATUS_TOPIC_SUFFIX}")
        p.publish(self.topics.status, b"online", qos=1, retain=True)
        self._publish_attest()
        p.publish(self.topics.state, state_json(*self.state), qos=1, retain=True)
        self._publish_health()
        if self.cfg.mqtt.ha_discovery:
            self._publish_discovery()
        self.delivery.connected()  # re-drive from the oldest undelivered result, in order

    def _on_disconnect(self) -> None:
        self.delivery.connection_lost()

    def _on_message(self, msg: Inbound) -> None:
        """paho's network thread: authenticate, queue what is authentic (waiting for room)."""
        if msg.topic == f"{self.cfg.mqtt.ha_prefix}{HA_STATUS_TOPIC_SUFFIX}":
            if msg.payload == b"online":
                self._ha_online.set()  # the command thread re-sends discovery, at most every 2 s
            return
        a = self._authenticate(msg)
        if a is not None and not self.inbound.put(a, len(msg.payload), self.stop_flag):
            log.warning("stopping: an authentic command was not queued")

    def _publish_attest(self) -> None:
        payload = attest_payload(dev=self.cfg.device_id, kid=self.key.kid, public=self.key.public,
                                 version=__version__, models=self.models, boot=self.boot, iat=self.clock.time())
        self.publisher.publish(self.topics.attest, sign(payload, self.key, self.topics.attest), qos=1, retain=True)

    def _publish_discovery(self) -> None:
        self._discovery_at = time.monotonic()
        for topic, payload in ha_discovery(self.topics, self.cfg.device_id, __version__, self.cfg.mqtt.ha_prefix):
            self.publisher.publish(topic, payload, qos=1, retain=True)

    def _publish_health(self) -> None:
        if self.publisher is not None:
            self.publisher.publish(self.topics.health, json.dumps(self.health_dict()).encode(), qos=0, retain=True)

    def _set_state(self, state: str, step: str | None = None, session: str | None = None) -> None:
        if (state, step, session) == self.state:
            return
        self.state = (state, step, session)
        if self.publisher is not None:
            self.publisher.publish(self.topics.state, state_json(state, step, session), qos=1, retain=True)
        self.notifier.status(f"{state}{' ' + step if step else ''}")
        self.on_state(state, step, session)
        self._write_status()

    # -- results -------------------------------------------------------------------------
    def emit_result(self, decision: str, reason: str | None, *, session: str | None = None,
                    request_id: str | None = None, nonce: bytes | None = None, liveness: dict | None = None,
                    quality: dict | None = None, response_topic: str | None = None,
                    correlation: bytes | None = None) -> int | None:
        """Sign the result and store it in the outbox (then it will be delivered)."""
        def make(seq: int):
            payload = result_payload(dev=self.cfg.device_id, boot=self.boot, seq=seq, iat=self.clock.time(),
                                     session=session, request_id=request_id, nonce=nonce, decision=decision,
                                     reason=reason, liveness=liveness or {}, quality=quality or {},
                                     models=self.models, policy=self.policy)
            rows = [(self.topics.result, sign(payload, self.key, self.topics.result), None)]
            if response_topic and response_topic != self.topics.result:
                rows.append((response_topic, sign(payload, self.key, response_topic), correlation))
            return rows
        seq = self.delivery.store(make)  # None: held in memory until the disk has room
        self.health.decided(decision)
        if self.publisher is not None:
            self.publisher.publish(self.topics.event, event_json(session, request_id, decision, self.clock.time()), qos=0)
        return seq

    # -- commands ------------------------------------------------------------------------
    def _command_loop(self) -> None:
        while not self.stop_flag.is_set():
            if (self._ha_online.is_set() and self.publisher is not None
                    and time.monotonic() - self._discovery_at >= DISCOVERY_MIN_INTERVAL_S):
                self._ha_online.clear()
                self._publish_discovery()
            a = self.inbound.get(timeout_s=0.5)
            if a is None:
                continue
            try:
                self.handle_authentic(a)
            except Exception:  # never let one message kill the command thread
                log.exception("handling a message on %s", a.msg.topic)

    def _authenticate(self, msg: Inbound) -> Authentic | None:
        a = self.gate.authenticate(msg)
        if isinstance(a, Ignored):
            self.health.ignore(a.reason)
            log.debug("ignored a message on %s: %s", msg.topic, a.reason)
            return None
        return a

    def handle_inbound(self, msg: Inbound) -> None:
        """One message, start to end, on the calling thread (the demo; tests)."""
        if msg.topic == f"{self.cfg.mqtt.ha_prefix}{HA_STATUS_TOPIC_SUFFIX}":
            if msg.payload == b"online" and self.publisher is not None:
                self._publish_discovery()
            return
        a = self._authenticate(msg)
        if a is not None:
            self.handle_authentic(a)

    def handle_authentic(self, a: Authentic) -> None:
        """Act on the second gate's answer (admission.Gate.admit): queue, answer or count."""
        r = self.gate.admit(a, busy=self.requests.full())  # only this thread puts: a free slot stays free
        if isinstance(r, Accepted):
            self.requests.put_nowait(r.request)
        elif isinstance(r, Refused):
            self.health.rejected += 1
            log.info("command rejected: %s (request %s)", r.reason, r.request_id)
            self.emit_result("rejected", r.reason, request_id=r.request_id, nonce=r.nonce,
                             response_topic=r.response_topic, correlation=r.correlation)
        elif isinstance(r, Ignored):
            self.health.ignore(r.reason)
            log.info("command ignored: %s", r.reason)
        else:
            self.health.dropped_commands += 1
            log.error("command dropped, outbox unusable: %s", r.error)

    # -- sessions ------------------------------------------------------------------------
    def _button_pressed(self) -> None:
        """gpiozero's thread: a press ends the running session (cancelled); idle, it does
        nothing: a session needs a command, which brings the reference."""
        if self.state[0] != State.IDLE:
            self.cancel_flag.set()

    def _session_frames(self) -> Iterator[Frame]:
        """A session's frames: a replay of the file from its start, else the live feed;
        each one feeds the watchdog."""
        cam = self.cfg.camera
        restart = cam.source == "file" and cam.restart_each_session
        with closing(replay(self.open_camera) if restart else live(self.feed, cam.frame_timeout_s)) as source:
            for frame in source:
                self._progress()
                yield frame

    def run_session(self, req: Request) -> Decision:
        cmd, session = req.command, uuid.uuid4().hex[:16]
        self.health.sessions += 1
        self.indicators.show("busy")
        self.cancel_flag.clear()  # a press before this session does not end it
        run = Session.planned(self.verifier, self.liveness, cmd.challenge, timeout_s=self.cfg.daemon.session_timeout_s,
                              on_progress=lambda state, step: self._set_state(state, step, session),
                              cancelled=self.cancel_flag.is_set, stopped=self.stop_flag.is_set)
        out = run.run_contained(cmd.reference, self._session_frames(), session)
        if out.timings_ms:
            self.health.record(out.timings_ms)
        d = out.decision
        self.emit_result(d.decision, d.reason, session=session, request_id=cmd.request_id,
                         nonce=cmd.nonce, liveness=d.liveness, quality=d.quality,
                         response_topic=req.response_topic, correlation=req.correlation)
        self.health.last_decision = LastDecision(decision=d.decision, reason=d.reason, session=session,
                                                 ts=round(self.clock.time(), 3), ms=out.ms)
        react(self.indicators, d.decision)
        self._set_state(State.IDLE)
        return d  # the caller drops it; the reference and frames die with the session

    def _progress(self) -> None:
        """Frames flow: feed the watchdog."""
        self.notifier.keepalive(True)

    # -- health / status -----------------------------------------------------------------
    def health_dict(self) -> HealthDoc:
        try:
            depth, expired = self.outbox.depth(), self.outbox.expired
        except OutboxError:
            depth, expired = -1, -1
        h = self.health
        return HealthDoc(uptime_s=h.uptime_s(), fps=round(self.feed.fps, 1) if self.feed else 0.0,
                         latency_ms=h.medians(), outbox_depth=depth, outbox_expired=expired,
                         camera_ok=bool(self.feed and self.feed.ok), models_ok=True,
                         storage_ok=self.gate.storage_ok(), clock_synchronized=self.clock.synchronized(),
                         sessions=h.sessions, rejected=h.rejected, ignored=h.ignored_counts(),
                         unstored=self.delivery.held, undeliverable=self.delivery.undeliverable,
                         dropped_commands=h.dropped_commands, publish_refused=getattr(self.publisher, "refused", 0))

    def _write_status(self) -> None:
        state, step, session = self.state
        path, source = key_source(self.cfg)
        status.write(self.state_dir, StatusDoc(
            pid=os.getpid(), device_id=self.cfg.device_id, version=__version__, boot=self.boot,
            ts=round(self.clock.time(), 3), state=StateDoc(state=state, step=step, session=session),
            health=self.health_dict(), last_decision=self.health.last_decision,
            broker=BrokerDoc(enabled=self.publisher is not None, connected=bool(self.publisher and self.publisher.connected),
                             error=getattr(self.publisher, "last_error", "")),
            camera=self.feed.health() if self.feed else {"ok": False}, models=self.models,
            model_selftest=self.model_selftest, kid=self.key.kid.hex(), last_seq=self.outbox.last_seq,
            key=KeyDoc(path=str(path), source=source)))

    # -- lifecycle ---------------------------------------------------------------------
    def request_stop(self, *_):
        self.stop_flag.set()

    def request_reload(self, *_):
        self.reload_flag.set()

    def _reload(self) -> None:
        """SIGHUP: re-read the config's trusted keys and the signing key (after
        `facegate keys rotate`), re-publish the attestation. Other changes need a restart."""
        self.reload_flag.clear()
        self.notifier.reloading()
        try:
            cfg = config_mod.load(self.config_path) if self.config_path else self.cfg
            self.gate.trusted = trusted_keys(cfg)
            self.key, _ = load_or_create_key(key_path(cfg))
        except FacegateError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.notifier.ready("reload refused: config error, running config kept")
            return
        self.notifier.ready(f"reloaded: signing kid {self.key.kid.hex()}")
        log.info("reloaded: %d trusted key(s), signing kid %s", len(self.gate.trusted), self.key.kid.hex())
        if self.publisher is not None and self.publisher.connected:
            self._publish_attest()

    def _start_thread(self, target, name) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        self.indicators.show("busy")
        try:
            self.outbox.expire()
            self.feed = FrameFeed(self.camera, max_fps=self.cfg.camera.idle_fps).start()
            self._start_thread(self._command_loop, "facegate-commands")
            self._start_thread(self.delivery.run, "facegate-delivery")
            if self.publisher is not None:
                self.publisher.start(self._on_message, self._on_connect, self._on_disconnect)
            self._main_loop()
            return 0
        finally:
            self._shutdown()

    def _main_loop(self) -> None:
        next_health = 0.0
        last_frame = None
        started = time.monotonic()
        camera_ok = True
        while not self.stop_flag.is_set():
            if self.reload_flag.is_set():
                self._reload()
            now = time.monotonic()
            if self.delivery.needs_retry:  # the disk was full: try again
                self.delivery.retry()
            frame = self.feed.next(last_frame, 0.0) if self.feed else None
            if frame is not None:  # next() returns only a frame newer than last_frame
                last_frame = frame
                self._progress()
                if not self.ready:
                    self.ready = True
                    self.indicators.show("ready")
                    self.notifier.ready(f"ready: {self.cfg.device_id}, kid {self.key.kid.hex()}")
                    self.on_state(State.IDLE, None, None)  # the first report: ready
                    log.info("ready")
            if self.ready and self.feed.ok != camera_ok:  # tell systemctl status about the camera
                camera_ok = self.feed.ok
                self.notifier.status("idle" if camera_ok else
                                     f"camera lost: {self.camera.health().last_error or 'no frames'}; reopening")
            if now >= next_health:
                next_health = now + self.cfg.daemon.health_interval_s
                self._publish_health()
                self._write_status()
                try:
                    self.outbox.expire(acked_before=self.delivery.acked_cutoff())
                except OutboxError as exc:
                    log.error("%s", exc)
            if not self.ready and now - started < self.cfg.camera.frame_timeout_s:
                time.sleep(0.05)  # commands wait (queued) while the camera starts
                continue
            try:
                req = self.requests.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.ready:
                self.feed.max_fps = None  # a session sees every frame the camera gives
                try:
                    self.run_session(req)  # pass / fail stays lit for gpio.result_show_s, then ready
                finally:
                    self.feed.max_fps = self.cfg.camera.idle_fps
            else:  # the camera never delivered: answer instead of waiting forever
                self.emit_result("error", "camera_unavailable", request_id=req.command.request_id,
                                 nonce=req.command.nonce, response_topic=req.response_topic,
                                 correlation=req.correlation)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.stop_flag.set()
        # answer what is still queued, then give delivery a moment to flush
        while True:
            try:
                req = self.requests.get_nowait()
            except queue.Empty:
                break
            self.emit_result("error", "shutting_down", request_id=req.command.request_id, nonce=req.command.nonce,
                             response_topic=req.response_topic, correlation=req.correlation)
        self.delivery.drain(3.0)
        if self.delivery.held:
            log.error("%d result(s) could not be stored before exit (disk full): lost", self.delivery.held)
        self.delivery.stop()
        for t in self._threads:
            t.join(timeout=5)
        try:
            if self.publisher is not None:
                self.publisher.stop([(self.topics.status, b"stopped"),
                                     (self.topics.state, state_json("idle"))])
        finally:
            if self.feed is not None:
                self.feed.stop()
            self.indicators.close()
            self._write_status()
            self.outbox.close()
            self.notifier.close()


def install_signal_handlers(daemon: Daemon) -> None:
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)


def build(cfg: Config, config_path: str | None = None, clock: Clock | None = None,
          publisher: Publisher | None = None, on_state: StateObserver | None = None,
          service: bool = True) -> Daemon:
    """A daemon with the real adapters named by the config (models verified on load);
    `clock`: the system clock unless given (tests step a FakeClock); `publisher`: used
    instead of the PahoPublisher that mqtt.enabled asks for (tests pass a FakePublisher);
    `on_state`: told every state change (the demo narrates them), first idle when the
    camera delivers; `service`: False tells systemd nothing (the demo is no service)."""
    from .adapters.cameras import ReopeningCamera, open_camera
    from .adapters.gpio import open_indicators
    from .adapters.litert import make_runner
    from .adapters.mqtt import PahoPublisher
    from .adapters.systemd import SystemdNotifier
    from .modelstore import ModelStore
    from .pipeline import build_liveness, loaded_models

    # a session ends by its own timeout, not by a frame count
    vcfg = cfg.model_copy(update={"verify": cfg.verify.model_copy(update={"max_frames": 10**9})})
    store = ModelStore(cfg.models.dir or None)
    verifier = Verifier.from_store(store, vcfg, make_runner)
    liveness = build_liveness(store, cfg, make_runner, cfg.daemon.liveness)
    models = loaded_models(store)  # verified, self-tested files, named by the manifest's sha256
    for task, c in store.chosen.items():
        (log.warning if c.refused else log.info)("model %s: %s (self-test %.0f ms)", task, c.why, c.kat_ms)
    topics = Topics.of(cfg.mqtt.prefix, cfg.device_id)
    if publisher is None and cfg.mqtt.enabled:
        publisher = PahoPublisher(cfg.mqtt, cfg.mqtt.client_id or f"facegate-{cfg.device_id}",
                                  will=(topics.status, b"offline"), max_payload_bytes=cfg.daemon.max_command_bytes)
    return Daemon(cfg, verifier=verifier, liveness=liveness,
                  camera=ReopeningCamera.from_config(cfg.camera),
                  open_camera=lambda: open_camera(cfg.camera),
                  publisher=publisher, indicators=open_indicators(cfg.gpio), notifier=SystemdNotifier(None if service else {}), models=models,
                  config_path=config_path, model_selftest={t: c.as_dict() for t, c in store.chosen.items()},
                  clock=clock, on_state=on_state)
