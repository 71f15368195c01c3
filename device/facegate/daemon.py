"""`facegate run`: verification sessions over MQTT, signed results, nothing lost.

Threads: paho's network thread authenticates inbound messages and queues only authentic
ones (admission.Intake.receive); the command thread admits them and answers refusals at
once, signed and bound to the command's ids (Intake.run); the delivery thread moves signed
results from the outbox to the broker in seq order and drops them only on PUBACK; the
camera thread keeps the newest frame; the main thread runs one session at a time
(session.Session), tells its events (state, guidance, answers) to the sinks (MQTT,
status file, systemd, indicators, the kiosk screen: events.py), publishes health, and feeds
systemd's watchdog while frames flow. The kiosk screen's server has its own threads.
Signal handlers only set flags. With MQTT off the publisher is a NullPublisher.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from . import __version__, status
from . import config as config_mod
from .admission import Gate, Intake, Request, trusted_keys
from .announce import Announcer
from .config import Config
from .contract import Topics, presence
from .delivery import Delivery
from .errors import FacegateError
from .events import Ready, Sink
from .feed import FrameFeed
from .kiosk import Kiosk
from .liveness.check import LivenessPlan
from .outbox import Outbox, OutboxError, lock_state_dir, private_dir
from .pipeline import Verifier
from .ports import Camera, Clock, Inbound, Indicators, Publisher
from .registry import PUBLISHERS
from .results import Results
from .screen import KioskScreen
from .signing import key_path, key_source, load_or_create_key
from .sinks.indicators import IndicatorSink
from .sinks.mqtt import MqttSink
from .sinks.statusfile import StatusFileSink
from .sinks.systemd import SystemdSink
from .status import BrokerDoc, Health, HealthDoc, KeyDoc, StateDoc, StatusDoc
from .types import Frame
from .vocab import Failure, Indicator, Presence, PublisherKind

log = logging.getLogger("facegate.daemon")


class Daemon:
    """One terminal; every collaborator comes in from outside (build() makes the real ones).
    sinks: audiences told every event besides the standard ones (the screen, the demo's
    narrator); services: objects started with the daemon and stopped after it (start(),
    stop(): the screen's server)."""

    def __init__(self, cfg: Config, *, verifier: Verifier, liveness: LivenessPlan | None, camera,
                 open_camera: Callable[[], Camera], publisher: Publisher, indicators: Indicators, notifier,
                 models: dict[str, str], clock: Clock, config_path: str | None = None,
                 model_selftest: dict[str, dict] | None = None, sinks: list[Sink] | None = None,
                 services: list | None = None):
        self.cfg, self.config_path, self.clock, self.models = cfg, config_path, clock, models
        self.publisher, self.indicators, self.notifier = publisher, indicators, notifier
        self.model_selftest = model_selftest or {}  # task -> variant chosen and why (modelstore.Choice)
        self.topics, self.boot = Topics.of(cfg.mqtt.prefix, cfg.device_id), uuid.uuid4().hex
        self.state_dir = Path(cfg.daemon.state_dir)
        private_dir(self.state_dir)  # 0700 when made here, whatever the umask
        self.key, created = load_or_create_key(key_path(cfg))
        (log.info if created else log.debug)("signing key %s (kid %s)%s", key_path(cfg), self.key.kid.hex(),
                                             " created" if created else "")
        self.outbox = Outbox(self.state_dir / "outbox.sqlite", cfg.daemon.outbox_max_age_s, cfg.daemon.outbox_max_rows,
                             clock=clock.time, keep_acked_s=cfg.mqtt.redeliver_s)
        self.delivery = Delivery(self.outbox, publisher, cfg.mqtt.max_inflight)
        self.results = Results(cfg, self.topics, lambda: self.key, self.boot, models, self.delivery, clock.time,
                               verifier.policy)
        self.announce = Announcer(publisher, cfg, self.topics, lambda: self.key, self.boot, models, clock.time)
        self.health, self.stop_flag, self.reload_flag = Health(), threading.Event(), threading.Event()
        self.feed = FrameFeed(camera, max_fps=cfg.camera.idle_fps)  # camera: reopens itself (ReopeningCamera)
        self.services = services or []
        self.sinks: list[Sink] = [MqttSink(self.announce), SystemdSink(notifier), StatusFileSink(self._write_status),
                                  IndicatorSink(indicators), *(sinks or [])]
        self.screen = KioskScreen(cfg.screen, self.boot) if cfg.screen.enabled else None
        if self.screen is not None:
            self.sinks.append(self.screen)
            self.services.append(self.screen)
        self.kiosk = Kiosk(cfg, verifier, liveness, self.feed, open_camera, indicators, notifier, self.results,
                           self.health, clock, self.stop_flag, self.sinks)
        if self.screen is not None:
            self.kiosk.preview = self.screen.offer
        self.requests: queue.Queue = queue.Queue(maxsize=cfg.daemon.max_pending)
        self.gate = Gate(cfg, self.topics, self.outbox, clock.time, lambda: self.delivery.held)
        self.intake = Intake(self.gate, self.health, self.requests, self.kiosk.refuse, self.stop_flag)
        self._threads: list[threading.Thread] = []
        self.ready, self._camera_ok = False, True
        self._last_frame: Frame | None = None

    def _on_connect(self) -> None:
        self.announce.connected(self.state, self.health_dict())
        self.delivery.connected()  # re-drive from the oldest undelivered result, in order

    def _on_message(self, msg: Inbound) -> None:
        if msg.topic == self.announce.ha_status_topic:
            self.announce.ha_message(msg.payload)
        else:
            self.intake.receive(msg)

    def handle_inbound(self, msg: Inbound) -> None:
        """One message, start to end, on the calling thread (the demo; tests)."""
        if msg.topic == self.announce.ha_status_topic:
            if msg.payload == presence(Presence.ONLINE):
                self.announce.discovery()
        else:
            self.intake.handle(msg)

    @property
    def state(self) -> tuple[str, str | None, str | None]:  # (state, challenge step, session) now
        return self.kiosk.state

    def health_dict(self) -> HealthDoc:
        try:
            depth, expired = self.outbox.depth(), self.outbox.expired
        except OutboxError:
            depth, expired = -1, -1
        h, p = self.health, self.publisher
        return HealthDoc(uptime_s=h.uptime_s(), fps=round(self.feed.fps, 1), latency_ms=h.medians(),
                         outbox_depth=depth, outbox_expired=expired, camera_ok=self.feed.ok, models_ok=True,
                         storage_ok=self.gate.storage_ok(), clock_synchronized=self.clock.synchronized(),
                         sessions=h.sessions, rejected=h.rejected, ignored=h.ignored_counts(),
                         unstored=self.delivery.held, undeliverable=self.delivery.undeliverable,
                         dropped_commands=h.dropped_commands, publish_refused=getattr(p, "refused", 0))

    def _write_status(self) -> None:
        (state, step, session), p = self.state, self.publisher
        path, source = key_source(self.cfg)
        status.write(self.state_dir, StatusDoc(
            pid=os.getpid(), device_id=self.cfg.device_id, version=__version__, boot=self.boot,
            ts=round(self.clock.time(), 3), state=StateDoc(state=state, step=step, session=session),
            health=self.health_dict(), last_decision=self.health.last_decision,
            broker=BrokerDoc(enabled=getattr(p, "enabled", True), connected=bool(p.connected),
                             error=getattr(p, "last_error", "")),
            camera=self.feed.health(), models=self.models, model_selftest=self.model_selftest,
            match_policy=self.kiosk.verifier.policy.as_dict(),
            kid=self.key.kid.hex(), last_seq=self.outbox.last_seq, key=KeyDoc(path=str(path), source=source)))

    def request_stop(self, *_) -> None:  # SIGTERM, SIGINT
        self.stop_flag.set()

    def request_reload(self, *_) -> None:  # SIGHUP
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
        if self.publisher.connected:
            self.announce.attest()

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        self._state_lock = lock_state_dir(self.state_dir)  # raises StateDirBusy naming the running pid
        self.indicators.show(Indicator.BUSY)
        try:
            self._write_status()  # `facegate status` sees a running daemon from its first second
            self.outbox.expire()
            self.feed.start()
            for service in self.services:
                service.start()
            self._threads = [threading.Thread(target=lambda: self.intake.run(self.announce.discovery_if_asked),
                                              name="facegate-commands", daemon=True),
                             threading.Thread(target=self.delivery.run, name="facegate-delivery", daemon=True)]
            for t in self._threads:
                t.start()
            self.publisher.start(self._on_message, self._on_connect, self.delivery.connection_lost)
            self._main_loop()
            return 0
        finally:
            self._shutdown()

    def _main_loop(self) -> None:
        started, next_health = time.monotonic(), 0.0
        seen = self._status_key()
        while not self.stop_flag.is_set():
            if (now_key := self._status_key()) != seen:  # broker, camera or readiness changed
                seen = now_key
                self._write_status()
            if self.reload_flag.is_set():
                self._reload()
            now = time.monotonic()
            if self.delivery.needs_retry:  # the disk was full: try again
                self.delivery.retry()
            self._watch_camera()
            if now >= next_health:
                next_health = now + self.cfg.daemon.health_interval_s
                self._housekeeping()
            if not self.ready and now - started < self.cfg.camera.frame_timeout_s:
                time.sleep(0.05)  # commands wait (queued) while the camera starts
                continue
            try:
                req = self.requests.get(timeout=0.2)
            except queue.Empty:
                continue
            self._serve(req)

    def _watch_camera(self) -> None:
        """Frames flow: feed the watchdog; the first frame makes the terminal ready; a lost
        or regained camera is told to systemctl status."""
        frame = self.feed.next(self._last_frame, 0.0)
        if frame is not None:  # next() returns only a frame newer than the last one
            self._last_frame = frame
            self.notifier.keepalive(True)
            self.kiosk.preview(frame)  # between sessions: the idle feed
            if not self.ready:
                self.ready = True
                self.indicators.show(Indicator.READY)
                self.notifier.ready(f"ready: {self.cfg.device_id}, kid {self.key.kid.hex()}")
                self.kiosk.tell(Ready())  # the first report
                log.info("ready")
        if self.ready and self.feed.ok != self._camera_ok:
            self._camera_ok = self.feed.ok
            self.notifier.status("idle" if self._camera_ok else
                                 f"camera lost: {self.feed.camera.health().last_error or 'no frames'}; reopening")

    def _housekeeping(self) -> None:
        """Every health_interval_s: R/health, the status file, the outbox's expiry."""
        self.announce.health(self.health_dict())
        self._write_status()
        try:
            self.outbox.expire(acked_before=self.delivery.acked_cutoff())
        except OutboxError as exc:
            log.error("%s", exc)

    def _serve(self, req: Request) -> None:
        if not self.ready:  # the camera never delivered: answer instead of waiting forever
            self.kiosk.fail(req, Failure.CAMERA_UNAVAILABLE)
            return
        if not self.kiosk.replays:  # a replay reads the file itself: the idle feed need not race it
            self.feed.max_fps = None  # a session sees every frame the camera gives
        try:
            self.kiosk.run_session(req)  # pass / fail stays lit for gpio.result_show_s, then ready
        finally:
            self.feed.max_fps = self.cfg.camera.idle_fps

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.stop_flag.set()
        while True:  # answer what is still queued, then give delivery a moment to flush
            try:
                self.kiosk.fail(self.requests.get_nowait(), Failure.SHUTTING_DOWN)
            except queue.Empty:
                break
        self.delivery.drain(3.0)
        if self.delivery.held:
            log.error("%d result(s) could not be stored before exit (disk full): lost", self.delivery.held)
        self.delivery.stop()
        for t in self._threads:
            t.join(timeout=5)
        try:
            self.announce.stopped()
        finally:
            for service in self.services:
                service.stop()
            self.feed.stop()
            self.indicators.close()
            self._write_status()
            self.outbox.close()
            self.notifier.close()
            os.close(self._state_lock)

    def _status_key(self) -> tuple:
        """What `status` shows that may change between two health intervals."""
        return (bool(self.publisher.connected), getattr(self.publisher, "last_error", ""), self.feed.ok, self.ready,
                getattr(self.publisher, "refused", 0))


def install_signal_handlers(daemon: Daemon) -> None:
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)
def build(cfg: Config, config_path: str | None = None, clock: Clock | None = None,
          publisher: Publisher | None = None, sinks: list[Sink] | None = None,
          service: bool = True) -> Daemon:
    """A daemon with the real adapters named by the config (models verified on load);
    `clock`: the system clock unless given (tests step a FakeClock); `publisher`: used
    instead of the one mqtt.enabled asks for (PahoPublisher, or NullPublisher when off;
    tests pass a FakePublisher); `sinks`: told every event besides the standard audiences
    (the demo's narrator), first Ready when the camera delivers; the kiosk screen
    (screen.enabled) is one more; `service`: False tells systemd nothing."""
    from .adapters.cameras import ReopeningCamera, open_camera
    from .adapters.clock import SystemClock
    from .adapters.gpio import open_indicators
    from .adapters.litert import make_runner
    from .adapters.systemd import SystemdNotifier
    from .modelstore import ModelStore
    from .pipeline import build_liveness, loaded_models

    # a session ends by its own timeout, not by a frame count
    vcfg = cfg.model_copy(update={"verify": cfg.verify.model_copy(update={"max_frames": 10**9})})
    store = ModelStore(cfg.models.dir or None)
    verifier = Verifier.from_store(store, vcfg, make_runner)
    liveness = build_liveness(store, cfg, make_runner, cfg.daemon.liveness)
    chosen = {**verifier.chosen, **(liveness.chosen if liveness is not None else {})}
    models = loaded_models(chosen)  # verified, self-tested files, named by the manifest's sha256
    for task, c in chosen.items():
        (log.warning if c.refused else log.info)("model %s: %s (self-test %.0f ms)", task, c.why, c.kat_ms)
    if publisher is None:
        kind = PublisherKind.MQTT if cfg.mqtt.enabled else PublisherKind.NULL
        publisher = PUBLISHERS.get(kind).from_config(
            cfg, will=(Topics.of(cfg.mqtt.prefix, cfg.device_id).status, presence(Presence.OFFLINE)))
    return Daemon(cfg, verifier=verifier, liveness=liveness, camera=ReopeningCamera.from_config(cfg.camera),
                  open_camera=lambda: open_camera(cfg.camera), publisher=publisher,
                  indicators=open_indicators(cfg.gpio), notifier=SystemdNotifier(None if service else {}),
                  models=models, clock=clock or SystemClock(), config_path=config_path,
                  model_selftest={t: c.as_dict() for t, c in chosen.items()}, sinks=sinks)
