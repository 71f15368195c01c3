"""The TOML configuration, validated by pydantic (unknown keys are errors).

`facegate config check FILE` reports every error with its key and line;
`facegate config example` prints a commented full config.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from . import DECODER_MAX_PIXELS
from .errors import ConfigError
from .registry import CAMERAS, STEPS
from .vocab import CameraSource, LivenessMode, Step

# a name of a registered family member (registry.py): unknown -> "unknown camera.source 'x' (one of: ...)"
RegisteredSource = Annotated[CameraSource, PlainValidator(CAMERAS.key)]
RegisteredStep = Annotated[Step, PlainValidator(STEPS.key)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(_Section):
    dir: str = Field("", description="Model directory; empty = $FACEGATE_MODEL_DIR or ~/.local/share/facegate/models")
    precision: Literal["auto", "fp32", "dynint8", "int8"] = Field(
        "auto", description="Embedding / liveness model precision; auto = the measured default for this CPU architecture")
    num_threads: int = Field(1, ge=1, le=8, description="CPU threads facegate may use for inference (XNNPACK)")
    lanes: int = Field(0, ge=0, le=2, description="Parallel model sets: 2 analyses the reference and the probe at once, each with num_threads/2 threads; 0 = 2 when num_threads >= 2")


class VerifyConfig(_Section):
    # The threshold comes from the calibration table shipped with the models
    # (models/calibration.toml, scripts/calibrate.py: every cross-identity pair of LFW
    # folds 1-5 with ID-chip-like references), per embedding model file; facegate.policy.
    target_fmr: float = Field(1e-4, gt=0, le=1e-3, description="False-match rate the match threshold is chosen for, from the calibration table of the embedding model loaded (1e-3 down to the lowest rate the table supports)")
    match_threshold: float | None = Field(None, ge=-1, le=1, description="Cosine similarity at or above which two faces match; set only to override the calibrated policy (status, selftest and every result then say so)")
    min_eye_distance_px: float = Field(16.0, ge=0, description="Smallest inter-ocular distance, in frame pixels")
    min_sharpness: float = Field(8.0, ge=0, description="Smallest Laplacian variance of the aligned crop")
    min_brightness: float = Field(35.0, ge=0, le=255, description="Darkest mean grey level of the face (0-255)")
    max_brightness: float = Field(225.0, ge=0, le=255, description="Brightest mean grey level of the face (0-255)")
    max_yaw_deg: float = Field(40.0, ge=0, le=90, description="Largest head yaw accepted for comparison, degrees")
    max_pitch_deg: float = Field(35.0, ge=0, le=90, description="Largest head pitch accepted for comparison, degrees")
    min_face_presence: float = Field(0.5, ge=0, le=1, description="Smallest face-mesh presence probability")
    dominant_face_ratio: float = Field(2.0, ge=1, description="With several faces, the most prominent (visible area weighted by closeness to the frame centre) wins only if it is this many times the next")
    fusion_frames: int = Field(5, ge=1, le=30, description="Best-quality video frames of one tracked face whose embeddings are fused")
    max_frames: int = Field(300, ge=1, description="Most video frames examined per verification")
    reference_pad_ratio: float = Field(0.5, ge=0, le=2, description="Padding added around a tightly cropped ID portrait before detection, as a fraction of its size")
    max_image_bytes: int = Field(20_000_000, ge=1000, description="Largest accepted image / video file, bytes")
    max_image_pixels: int = Field(DECODER_MAX_PIXELS, ge=10_000, le=DECODER_MAX_PIXELS,
                                  description="Largest accepted decoded image, pixels (at most the decoders' own cap)")


class LivenessConfig(_Section):
    # Chosen by scripts/eval_liveness.py on ../shared/data/nuaa (240 live / 240 printed
    # photo frames): the threshold minimising max(APCER, BPCER) was 0.49 with the int8
    # models and 0.51 with fp32; at 0.5 both give APCER 0 %, BPCER 0.42 % (one live frame
    # without a detectable face), and reject the replay video and both silent_face attacks.
    passive_threshold: float = Field(0.5, ge=0, le=1, description="Median over frames of the mean MiniFASNet p(real) at or above which a face counts as live")
    passive_min_frames: int = Field(1, ge=1, description="Fewest scored frames for a passive verdict")
    challenge_length: int = Field(2, ge=0, le=6, description="Steps in a random active challenge")
    challenge_steps: list[RegisteredStep] = Field(
        list(Step), min_length=1, description="Steps a random challenge may draw from")
    step_timeout_s: float = Field(6.0, gt=0, description="Time allowed for each challenge step, seconds of frame time")
    turn_min_deg: float = Field(25.0, gt=0, le=80, description="Smallest head turn away from the person's frontal pose, degrees")


class CameraConfig(_Section):
    source: RegisteredSource = Field(CameraSource.FILE, description="Frame source: a file (image, folder or video), a V4L2/USB webcam via OpenCV, or a Pi camera via picamera2")
    path: str = Field("", description="file: image, folder of images or video to play as the camera")
    device: str = Field("0", description="v4l2: device path (/dev/video0) or index (0)")
    width: int = Field(1280, ge=64, le=8192, description="Capture width in pixels (v4l2 / picamera2 main stream)")
    height: int = Field(720, ge=64, le=8192, description="Capture height in pixels (v4l2 / picamera2 main stream)")
    fps: float = Field(15.0, gt=0, le=120, description="Frames per second asked of the camera (file: for images and folders)")
    lores_width: int = Field(640, ge=64, le=4096, description="picamera2: width of the small stream used for detection, pixels")
    lores_height: int = Field(360, ge=64, le=4096, description="picamera2: height of the small stream used for detection, pixels")
    realtime: bool = Field(True, description="file: play frames at their own timestamps (false = as fast as possible)")
    loop: bool = Field(True, description="file: start over at the end")
    restart_each_session: bool = Field(True, description="file: every verification session replays the file from its start")
    idle_fps: float = Field(5.0, gt=0, le=120, description="Frames per second read while no session runs, and during a file replay session, which reads the file itself (keeps the camera and watchdog alive)")
    reopen_min_s: float = Field(0.5, gt=0, description="First wait before reopening a failed camera, seconds (doubles up to reopen_max_s)")
    reopen_max_s: float = Field(30.0, gt=0, description="Longest wait between camera reopen attempts, seconds")
    frame_timeout_s: float = Field(5.0, gt=0, description="A camera that delivers no frame for this long counts as failed, seconds")


class GpioConfig(_Section):
    # BCM pin numbers; None = not fitted. GPIO is off unless enabled; on a machine that is
    # not a Pi choose pin_factory = "mock" explicitly (nothing falls back silently).
    enabled: bool = Field(False, description="Drive LEDs, relay, button and buzzer")
    pin_factory: Literal["", "lgpio", "rpigpio", "native", "mock"] = Field("", description="gpiozero pin factory; empty = gpiozero's default on a Pi (lgpio on a Pi 5)")
    led_ready: int | None = Field(None, ge=0, le=53, description="Green 'ready' LED pin")
    led_busy: int | None = Field(None, ge=0, le=53, description="Amber 'busy' LED pin (a session runs)")
    led_pass: int | None = Field(None, ge=0, le=53, description="'pass' LED pin (lit after a match)")
    led_fail: int | None = Field(None, ge=0, le=53, description="'fail' LED pin (lit after any other decision)")
    rgb_led: list[int] | None = Field(None, min_length=3, max_length=3, description="One RGB LED instead of the four LEDs: [red, green, blue] pins")
    relay_pin: int | None = Field(None, ge=0, le=53, description="Relay pulsed once on every match (turnstile, card dispenser)")
    relay_active_high: bool = Field(True, description="Relay energised by a high level (false = active low)")
    relay_pulse_ms: int = Field(1000, ge=10, le=60_000, description="Length of the relay pulse, milliseconds")
    button_pin: int | None = Field(None, ge=0, le=53, description="Cancel button (pulled up, pressed = low): a press ends the running session, decided error / cancelled; ignored while idle")
    buzzer_pin: int | None = Field(None, ge=0, le=53, description="Optional buzzer, beeps on each decision")
    result_show_s: float = Field(3.0, ge=0, description="How long the pass / fail LED stays lit, seconds")

    @model_validator(mode="after")
    def _pins_distinct(self):
        pins = [p for p in (self.led_ready, self.led_busy, self.led_pass, self.led_fail, self.relay_pin,
                            self.button_pin, self.buzzer_pin, *(self.rgb_led or [])) if p is not None]
        dup = sorted({p for p in pins if pins.count(p) > 1})
        if dup:
            raise ValueError(f"pin(s) {dup} used twice")
        return self


class BrokerConnection(_Section):
    """How to reach and log in to the broker: shared by the daemon's [mqtt] and the
    backend's (backend/config.py)."""

    host: str = Field("localhost", description="Broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS)")
    username: str = Field("", description="User name (empty = anonymous)")
    password_file: str = Field("", description="File holding the password (first line); keeps secrets out of the config")
    tls: bool = Field(False, description="Connect with TLS")
    ca_file: str = Field("", description="CA certificate(s) for the broker, PEM (empty = the system store)")
    cert_file: str = Field("", description="Client certificate, PEM (optional)")
    key_file: str = Field("", description="Client certificate's private key, PEM (optional)")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, seconds")

    def read_password(self) -> str | None:
        """The password from password_file (first line), or None without a file."""
        if not self.password_file:
            return None
        p = Path(self.password_file)
        try:
            return p.read_text().splitlines()[0] if p.stat().st_size else ""
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file {p}: {exc.strerror}") from None


class MqttConfig(BrokerConnection):
    enabled: bool = Field(True, description="Connect to the broker (false = results stay in the outbox)")
    prefix: str = Field("facegate/v1", pattern=r"^[^#+]+$", description="Topic prefix; topics are {prefix}/{device_id}/...")
    client_id: str = Field("", description="MQTT client id; empty = facegate-{device_id}")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect back-off, seconds")
    reconnect_max_s: float = Field(5.0, gt=0, le=300, description="Largest reconnect back-off, seconds: a terminal is back at most this long after its broker (60 made the first verify after a broker restart wait 38 s)")
    max_inflight: int = Field(20, ge=1, le=1000, description="Results published and not yet acknowledged at once")
    redeliver_s: float = Field(60.0, ge=0, le=86400, description="Results the broker acknowledged this long before a lost connection are published again after the reconnect: a crashed broker forgets what it took since its last save (set it to the broker's autosave_interval; 0 = off)")
    response_prefix: str = Field("facegate/v1/replies/", pattern=r"^([^#+$\x00][^#+\x00]*)?$", description="MQTT 5 response topics are honoured only for authenticated commands and only under this prefix (never under the device's own topics or ha_prefix; empty = never); R/result always gets the answer")
    ha_discovery: bool = Field(True, description="Publish Home Assistant MQTT discovery")
    ha_prefix: str = Field("homeassistant", pattern=r"^[^#+]+$", description="Home Assistant discovery prefix")
    trusted_keys: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]] = Field(default_factory=list, description="Ed25519 public keys (64 hex digits each) whose signed verify commands are accepted")


class ScreenConfig(_Section):
    """The kiosk screen: a page served to a browser on this machine only (facegate.screen)."""

    enabled: bool = Field(True, description="Serve the kiosk page (live preview, face oval, hints, result) on `listen`")
    listen: str = Field("127.0.0.1:8080", pattern=r"^(127\.0\.0\.1|localhost|\[::1\]):[0-9]{1,5}$", description="Loopback address and port of the page (127.0.0.1, localhost or [::1] only: frames never leave this machine; port 0 = any free one)")
    language: Literal["en", "zh"] = Field("en", description="Language of the page (en: English, zh: Simplified Chinese); ?lang= in the URL overrides it")
    preview_fps: float = Field(10.0, gt=0, le=30, description="Most preview frames per second sent to the page")
    preview_width: int = Field(640, ge=160, le=1920, description="Preview frames are scaled down to at most this width, pixels")
    result_show_s: float = Field(6.0, ge=1, le=60, description="How long the result screen stays before the idle screen, seconds")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class DaemonConfig(_Section):
    state_dir: str = Field("/var/lib/facegate", description="Outbox, sequence counter, status file and (by default) the signing key")
    key_file: str = Field("", description="Ed25519 signing key (PEM, mode 0600); empty = the systemd credential 'signing.key' if present, else {state_dir}/signing.key; created on first start")
    liveness: LivenessMode = Field(LivenessMode.BOTH, description="Liveness every session must pass")
    session_timeout_s: float = Field(30.0, gt=0, description="Longest verification session, seconds of frame time")
    health_interval_s: float = Field(30.0, gt=0, description="Period of the retained health message, seconds")
    command_max_age_s: float = Field(300.0, gt=0, description="Largest accepted exp - iat of a verify command, seconds")
    clock_skew_s: float = Field(30.0, ge=0, description="Tolerated clock difference to the backend, seconds")
    max_command_bytes: int = Field(2_000_000, ge=1000, description="Largest accepted verify command, bytes")
    max_reference_pixels: int = Field(4_000_000, ge=10_000, le=DECODER_MAX_PIXELS,
                                      description="Largest accepted decoded reference portrait, pixels")
    max_pending: int = Field(4, ge=1, le=100, description="Verify commands waiting behind the running session; more are rejected as busy")
    outbox_max_age_s: float = Field(7 * 86400.0, gt=0, description="Undelivered results older than this expire (counted in health), seconds")
    outbox_max_rows: int = Field(100_000, ge=10, description="Most undelivered results kept; the oldest expire first")
    min_free_mb: float = Field(20.0, ge=0, description="Free space the state dir needs before a session starts, MiB")


class Config(_Section):
    device_id: str = Field("facegate-dev", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Device name used in topics and results")
    models: ModelsConfig = ModelsConfig()
    verify: VerifyConfig = VerifyConfig()
    liveness: LivenessConfig = LivenessConfig()
    camera: CameraConfig = CameraConfig()
    gpio: GpioConfig = GpioConfig()
    mqtt: MqttConfig = MqttConfig()
    daemon: DaemonConfig = DaemonConfig()
    screen: ScreenConfig = ScreenConfig()


def _line_of(text: str, loc: tuple) -> int | None:
    """Best-effort line number of the key at `loc` (section path + key) in TOML text."""
    keys = [str(k) for k in loc if not isinstance(k, int)]
    if not keys:
        return None
    section, key = keys[:-1], keys[-1]
    in_section = not section
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    for n, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            in_section = m.group(1).strip() == ".".join(section)
            continue
        if in_section and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return n
    return None


def parse(text: str, source: str = "<config>", model: type[BaseModel] = Config):
    """Parse and validate TOML text as `model` (the daemon's Config unless given); raises
    ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: TOML syntax error: {exc}") from None
    if model is Config and BACKEND_ONLY_KEYS & data.keys():
        raise ConfigError(f"{source}: a backend config ({', '.join(sorted(BACKEND_ONLY_KEYS & data.keys()))} are "
                          f"backend keys): check it with 'facegate backend config check {source}'")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        found = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            ln = _line_of(text, err["loc"])
            where = f"{source}:{ln}" if ln else source
            found.append((ln or 0, f"{where}: {key}: {_words(err, model)}"))
        raise ConfigError("\n".join(line for _, line in sorted(found, key=lambda f: f[0]))) from None


BACKEND_ONLY_KEYS = frozenset({"key_file", "store", "serve", "command_lifetime_s"})


def _words(err, model: type[BaseModel]) -> str:
    """pydantic's message in words a technician acts on."""
    example = "facegate config example" if model is Config else "docs/backend.md"
    if err["type"] == "extra_forbidden":
        return f"unknown key (a misspelling, or in the wrong [section]? every key: {example})"
    if err["type"] == "string_pattern_mismatch":
        return f"{err['input']!r} is not allowed here (it must match {err['ctx']['pattern']})"
    return str(err["msg"])


def unusable(cfg: Config, text: str, source: str) -> list[str]:
    """What validates but cannot run, as `config check` reports it (the daemon's own start
    says the same later, at the worst time)."""
    out = []
    if cfg.camera.source == CameraSource.FILE and not cfg.camera.path:
        ln = _line_of(text, ("camera", "path")) or _line_of(text, ("camera", "source"))
        out.append(f"{source}{':' + str(ln) if ln else ''}: camera.path: empty, and camera.source = \"file\" needs "
                   "one (a video, image or folder of frames), or set source = "
                   + " / ".join(f'"{n}"' for n in CAMERAS.names() if n != CameraSource.FILE))
    return out


def advice(cfg: Config) -> list[str]:
    """What runs but will surprise on the first day (`config check` prints it as notes)."""
    m, out = cfg.mqtt, []
    if m.enabled and m.username and m.username != cfg.device_id:
        out.append(f"mqtt.username '{m.username}' is not device_id '{cfg.device_id}': with the broker's per-device ACL "
                   "(scripts/broker-setup.sh) every publish of this terminal is refused")
    if m.enabled and not m.trusted_keys:
        out.append("mqtt.trusted_keys is empty: no verify command will be accepted (add the backend's public key, "
                   "'facegate keys show --path backend.pem' on the backend)")
    return out


def load(path: str | Path | None, model: type[BaseModel] = Config):
    """The config at `path` as `model`, or all defaults when path is None."""
    if path is None:
        return model()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    return parse(text, str(p), model)


def example() -> str:
    """A full config in TOML with every field's description as a comment."""
    out = ["# facegate configuration (every key optional; shown with its default)",
           f'device_id = "{Config().device_id}"', ""]
    for name in Config.model_fields:
        sub = getattr(Config(), name)
        if not isinstance(sub, BaseModel):
            continue
        out.append(f"[{name}]")
        for key, f in type(sub).model_fields.items():
            out.append(f"# {f.description}")
            value = _toml_value(getattr(sub, key))
            out.append(f"# {key} =   (not set)" if value is None else f"{key} = {value}")
        out.append("")
    return "\n".join(out)


def _toml_value(v) -> str | None:  # None: no value (left out)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(_toml_value(x)) for x in v) + "]"
    return repr(v)
