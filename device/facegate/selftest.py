"""`facegate selftest`: is this terminal fit to run? One `Check` per part, nothing printed.

Checks, in order: the signing key (present, readable, private to its owner), the state
directory (writable, free space against daemon.min_free_mb), the installed models (sha256
against the manifest) and each model the daemon would load (loaded, its known-answer
self-test run on this CPU as at the daemon's start, which variant "auto" takes and why,
timed on one run),
the camera (one frame within camera.frame_timeout_s), the broker (TCP, TLS, then CONNACK
with the configured credentials, through the daemon's own PahoPublisher) and, only when
asked, the GPIO (LEDs cycled, relay pulsed, buzzer beeped). A room beside `daemon`: it
uses the adapters the daemon uses, and only the CLI imports it.

Run it with the daemon stopped when the camera or the GPIO are checked: a Pi camera and
GPIO lines are exclusive, so a running daemon makes those checks fail as busy.
"""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import kat, modelstore
from .config import Config
from .contract import Topics
from .errors import FacegateError
from .pipeline import model_plan
from .signing import key_path
from .vocab import Indicator

GPIO_STEP_S = 0.4  # how long each LED stays lit while cycling


@dataclass(frozen=True)
class Check:
    """One line of the self-test. ok: passed (a skipped check is ok); detail: what was
    found, or why it failed, in words for a technician; ms: how long the check took."""

    name: str
    ok: bool
    detail: str
    ms: float
    skipped: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _timed(name: str, fn: Callable[[], str | tuple[bool, str]]) -> Check:
    """Run fn: a returned str is a pass with that detail, (ok, detail) says itself, a
    FacegateError / OSError is a fail with its message."""
    t0 = time.perf_counter()
    try:
        out = fn()
        ok, detail = (True, out) if isinstance(out, str) else out
    except FacegateError as exc:
        ok, detail = False, str(exc)
    except OSError as exc:
        ok, detail = False, f"{str(exc.filename) + ': ' if exc.filename else ''}{exc.strerror or exc}"
    except Exception as exc:  # a check that breaks fails its own line, never the others
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return Check(name, ok, detail, round((time.perf_counter() - t0) * 1000, 1))


def _skip(name: str, why: str) -> Check:
    return Check(name, True, why, 0.0, skipped=True)


# -- signing key, state dir ---------------------------------------------------------------
def check_key(cfg: Config, path: str | Path | None = None) -> Check:
    """The key the daemon signs with (daemon.key_path, or `path`): readable, mode 0600-ish."""
    from .signing import load_key

    p = Path(path) if path else key_path(cfg)

    def run():
        if not p.exists():
            return False, (f"no signing key at {p} (the daemon makes one there at first start; under systemd "
                           "it is the LoadCredential= copy of /etc/facegate/signing.key: check that with --key)")
        key = load_key(p)
        mode = p.stat().st_mode & 0o777
        if mode & 0o077:
            return False, f"{p} is mode {mode:04o}: readable by others (chmod 600)"
        return f"{p} kid {key.kid.hex()}"
    return _timed("signing key", run)


def check_state_dir(cfg: Config) -> Check:
    """daemon.state_dir exists, a file can be made in it, free space >= daemon.min_free_mb."""
    d = Path(cfg.daemon.state_dir)

    def run():
        if not d.is_dir():
            return False, f"{d} does not exist (install.sh / StateDirectory= make it)"
        with tempfile.NamedTemporaryFile(dir=d, prefix=".selftest-"):
            pass
        free_mb = shutil.disk_usage(d).free / 2**20
        need = cfg.daemon.min_free_mb
        text = f"{d} writable, {free_mb:.0f} MiB free (sessions need {need:g})"
        if free_mb < need:
            return False, text + ": too little, verify commands are refused as storage_full"
        return text
    return _timed("state dir", run)


# -- models ----------------------------------------------------------------------------
def check_models(cfg: Config, make_runner: Callable | None = None) -> list[Check]:
    """The model directory against the manifest, then each model in use loaded, self-tested
    (facegate.kat) and timed."""
    if make_runner is None:
        from .adapters.litert import make_runner
    store = modelstore.ModelStore(cfg.models.dir or None)

    def verify_all():
        results = modelstore.verify(store.model_dir)
        bad = [r.entry.file for r in results if r.status == "tampered"]
        missing = modelstore.missing_required(results)
        if bad:
            return False, f"changed on disk, refused: {', '.join(bad)} (reinstall: facegate models fetch)"
        if missing:
            return False, f"not installed in {store.model_dir}: {', '.join(missing)} (facegate models fetch)"
        ok = sum(r.status == "ok" for r in results)
        return f"{ok} file(s) in {store.model_dir} match the manifest"
    checks = [_timed("models", verify_all)]
    chosen: dict[str, modelstore.Choice] = {}  # task -> the variant kat.load took, and why
    for task, (precision, threads) in model_plan(cfg, cfg.daemon.liveness).items():
        def one(task=task, precision=precision, threads=threads):
            runner, c = kat.load(store, task, precision, make_runner, threads)  # ModelError: no variant passes
            chosen[task] = c
            xs = [np.zeros(s.shape, s.dtype) for s in runner.inputs]
            t0 = time.perf_counter()
            runner.run(*xs)  # warmed up by the self-test
            run_ms = (time.perf_counter() - t0) * 1000
            return f"{c.why}; self-test {c.kat_ms:.0f} ms, one run {run_ms:.1f} ms"
        checks.append(_timed(f"model {task}", one))

    def policy():
        from .policy import resolve
        from .vision.embed import Embedder

        embed = chosen.get("embed")
        if embed is None:
            return False, "no embedding model passed its self-test: no match policy"
        return resolve(cfg.verify, embed.entry.sha256, Embedder.METHOD).describe()
    checks.append(_timed("match policy", policy))
    return checks


# -- camera ----------------------------------------------------------------------------
def check_camera(cfg: Config, open_timeout_s: float = 15.0, open_fn: Callable | None = None) -> Check:
    """One frame from camera.source: opened within open_timeout_s, the first frame within
    camera.frame_timeout_s of the open."""
    from .adapters.cameras import describe_source, open_camera

    open_fn = open_fn or open_camera
    cam_cfg = cfg.camera
    src = describe_source(cam_cfg)  # the registered family's own words for where it reads
    box: dict = {}
    opened, got = threading.Event(), threading.Event()

    def worker():  # opens, reads one frame, closes: the camera is touched by this thread only
        cam = frames = None
        try:
            cam = open_fn(cam_cfg)
            box["t_open"] = time.perf_counter()
            opened.set()
            frames = cam.frames()
            box["frame"] = next(frames, None)
            box["t_frame"] = time.perf_counter()
        except Exception as exc:  # any camera failure is this check's result
            box["error"] = str(exc) if isinstance(exc, FacegateError) else f"{type(exc).__name__}: {exc}"
        finally:
            try:
                if frames is not None:
                    frames.close()  # the adapter's generator cleans up first
                if cam is not None:
                    cam.close()
            except Exception:
                pass  # the frame (or the error) above is what this check reports
            opened.set()
            got.set()  # after close: no decoder thread outlives the check

    def run():
        t0 = time.perf_counter()
        threading.Thread(target=worker, name="selftest-camera", daemon=True).start()
        if not opened.wait(open_timeout_s):
            return False, f"{src}: not open after {open_timeout_s:g} s"
        if not got.wait(cam_cfg.frame_timeout_s):
            return False, f"{src}: no frame within {cam_cfg.frame_timeout_s:g} s"
        if "error" in box:
            return False, f"{src}: {box['error']}"
        frame = box.get("frame")
        if frame is None:
            return False, f"{src}: opened, but delivered no frame"
        h, w = frame.image.shape[:2]
        lores = f", lores {frame.lores.shape[1]}x{frame.lores.shape[0]}" if frame.lores is not None else ""
        return (f"{src}: {w}x{h}{lores}, mean grey {float(frame.image.mean()):.0f}, "
                f"opened in {(box['t_open'] - t0) * 1000:.0f} ms, first frame "
                f"{(box['t_frame'] - box['t_open']) * 1000:.0f} ms later")
    return _timed("camera", run)


# -- broker -----------------------------------------------------------------------------
def check_broker(cfg: Config, timeout_s: float = 10.0) -> Check:
    """TCP to mqtt.host:port, the TLS handshake (when mqtt.tls), then an MQTT CONNECT with
    the configured credentials through PahoPublisher; CONNACK within timeout_s, then a
    clean disconnect. Uses its own client id, so a running daemon stays connected."""
    m = cfg.mqtt
    if not m.enabled:
        return _skip("broker", "mqtt.enabled = false (results stay in the outbox)")
    from .adapters.mqtt import PahoPublisher

    target = f"{m.host}:{m.port}"

    def run():
        try:
            raw = socket.create_connection((m.host, m.port), timeout=timeout_s)
        except OSError as exc:
            return False, f"cannot reach {target}: {exc.strerror or exc}"
        with raw:
            if m.tls:
                ctx = ssl.create_default_context(cafile=m.ca_file or None)
                if m.cert_file:
                    ctx.load_cert_chain(m.cert_file, m.key_file or None)
                try:
                    ctx.wrap_socket(raw, server_hostname=m.host).close()
                except ssl.SSLCertVerificationError as exc:
                    return False, (f"TLS with {target} failed: certificate verify failed: {exc.verify_message} "
                                   f"(mqtt.ca_file = {m.ca_file or 'the system store'})")
                except (ssl.SSLError, OSError) as exc:
                    return False, f"TLS with {target} failed: {getattr(exc, 'reason', None) or exc}"
        client_id = f"{m.client_id or 'facegate-' + cfg.device_id}-selftest"
        # the will is an empty retained message on a selftest topic: if this process dies
        # mid-check the broker publishes nothing retained and the daemon's status stays
        pub = PahoPublisher(m, client_id, will=None, persistent=False)
        acked, published = threading.Event(), threading.Event()
        topic = Topics.of(m.prefix, cfg.device_id).event
        try:
            pub.start(lambda msg: None, acked.set, lambda: None)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not acked.is_set() and not pub.last_error:
                acked.wait(0.05)
            if acked.is_set():
                # may it publish on its own topics? (R/event: not retained, read by dashboards only)
                pub.publish(topic, json.dumps({"selftest": "publish", "ts": round(time.time(), 3)}).encode(), qos=1,
                            on_ack=published.set)
                published.wait(max(0.5, deadline - time.monotonic()))
        finally:
            pub.stop()
        who = f" as {m.username}" if m.username else " anonymously"
        if acked.is_set() and not published.is_set():
            return False, f"connected to {target}{who}, but no PUBACK for a message to {topic} within {timeout_s:g} s"
        if acked.is_set() and pub.refused:
            return False, (f"connected to {target}{who}, but the broker refuses its messages to {topic} (its ACL "
                           f"lets a terminal write only facegate/v1/<its user name>/...: is the broker user "
                           f"'{m.username}' this terminal's device_id '{cfg.device_id}'?)")
        if acked.is_set():
            return f"connected to {target}{' with TLS' if m.tls else ''}{who}; may publish on {topic}"
        if pub.last_error:
            hint = (" (check mqtt.username and mqtt.password_file)"
                    if "refused" in pub.last_error and "(check" not in pub.last_error else "")
            return False, f"{target}{who}: {pub.last_error}{hint}"
        return False, f"{target}: no CONNACK within {timeout_s:g} s"
    return _timed("broker", run)


# -- GPIO ---------------------------------------------------------------------------------
def _pins(cfg) -> str:
    g = cfg.gpio
    parts = []
    if g.rgb_led:
        parts.append(f"RGB LED {g.rgb_led}")
    leds = [f"{n}={getattr(g, 'led_' + n)}" for n in list(Indicator)[1:] if getattr(g, "led_" + n) is not None]
    if leds and not g.rgb_led:
        parts.append("LEDs " + " ".join(leds))
    if g.relay_pin is not None:
        parts.append(f"relay {g.relay_pin} pulsed {g.relay_pulse_ms} ms")
    if g.buzzer_pin is not None:
        parts.append(f"buzzer {g.buzzer_pin}")
    return ", ".join(parts) or "no pins configured"


def check_gpio(cfg: Config, asked: bool, step_s: float = GPIO_STEP_S) -> Check:
    """Only when asked: every indicator state shown for step_s, then off; one relay pulse
    (gpio.relay_pulse_ms); one beep. Watch the terminal while it runs."""
    if not asked:
        return _skip("gpio", "not exercised (--gpio lights the LEDs and pulses the relay)")
    if not cfg.gpio.enabled:
        return _skip("gpio", "gpio.enabled = false")
    from .adapters.gpio import BEEP_S, open_indicators

    def run():
        ind = open_indicators(cfg.gpio)
        try:
            for state in list(Indicator)[1:]:  # all but off
                ind.show(state)
                time.sleep(step_s)
            ind.show(Indicator.OFF)
            ind.pulse_relay()
            time.sleep(cfg.gpio.relay_pulse_ms / 1000 + 0.05)
            ind.beep()
            time.sleep(BEEP_S + 0.05)
        finally:
            ind.close()
        factory = cfg.gpio.pin_factory or "default"
        return f"{_pins(cfg)} (pin factory {factory})"
    return _timed("gpio", run)


# -- all ------------------------------------------------------------------------------------
def run_checks(cfg: Config, *, gpio: bool = False, key: str | Path | None = None,
               broker_timeout_s: float = 10.0, make_runner: Callable | None = None) -> list[Check]:
    """Every check in order; none stops the others."""
    return [check_key(cfg, key), check_state_dir(cfg), *check_models(cfg, make_runner), check_camera(cfg),
            check_broker(cfg, broker_timeout_s), check_gpio(cfg, gpio)]


def passed(checks: list[Check]) -> bool:
    return all(c.ok for c in checks)

