"""`facegate demo`: the whole terminal on any machine -- no Pi, no camera, no broker.

`run_demo` builds the real daemon (daemon.build) from a config with MQTT off and a video
file as its camera, runs it on a thread, signs a verify command with a throw-away backend
key and hands it in as if the broker had delivered it (Daemon.handle_inbound), reports
the daemon's state changes (its state observer), takes the signed result out of the outbox, verifies it against
the device's public key and the result topic, and stops the daemon. Nothing is printed
here: progress goes to a callback, the caller (the CLI) prints.

Inputs every install has (`sample_inputs`): the public-domain photograph of Grace Hopper
(US Navy, 1984), shipped in the package (models/samples/, the copy matplotlib ships), cut to an ID-chip-sized portrait, and a 6 s clip
in which the same photo drifts and tilts on a grey background. That clip is a still photo,
i.e. a presentation attack. Measured with the shipped models (int8, x86-64):
- liveness none: match (the portrait is cut from the same photo: a plumbing check, not
  evidence of accuracy);
- passive: MiniFASNet p(real) median 0.02 over the 90 frames (threshold 0.5) ->
  presentation_attack. Framing decides it: with the print's edges and the grey surround in
  view the photo scores 0.005-0.02, the same photo filling a 640x480 frame scores 0.86
  (live). The passive check alone is no proof against a photo;
- active: a flat photo tilted by up to 60 degrees reads as at most 11 degrees of head yaw
  (beyond that the face mesh loses the face); a turn step needs 25 degrees from the
  person's own frontal pose, so it times out -> spoof, reason timeout.

When $FACEGATE_SHARED names the evaluation data mirror (data/replay/zubair/live.webm under
it, a real person who turns the head at the end; scripts/dev.sh demo sets it to ../shared
when that exists beside the checkout) the demo runs that instead, with liveness both and the challenge turn_right,turn_left the
clip performs.
"""
from __future__ import annotations

import math
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from .. import daemon as daemon_mod
from ..config import Config, ScreenConfig
from ..contract import Command, Result, SignatureError, SigningKey, public_from_hex
from ..errors import InputError
from ..events import Event, Ready, StateChanged
from ..guidance import Guidance
from ..imageio import decode_image
from ..ports import Inbound
from ..screen.strings import hint_key, text
from ..signing import key_path, load_key
from ..vocab import LivenessMode, LivenessReason, State, Verdict
from .inputs import (
    CLIP_MAX_TILT_DEG,
    CLIP_SECONDS,
    CLIP_VERSION,
    REPLAY_CHALLENGE,
    REPLAY_REFERENCE_FRAME,
    REPLAY_STEP_TIMEOUT_S,
    SAMPLE_CHALLENGE,
    DemoError,
    default_workdir,
    replay_inputs,
    sample_inputs,
    sample_photo,
    shared_dir,
    tilted,
)

__all__ = ["CLIP_VERSION", "DemoError", "DemoResult", "DemoRun", "default_workdir", "explain", "plan",
           "replay_inputs", "run_demo", "sample_inputs", "sample_photo", "shared_dir", "tilted"]

LIVENESS_MODES = tuple(LivenessMode)
DEMO_DEVICE_ID = "demo-kiosk"
SCREEN_WAIT_S = 60.0  # demo --screen: how long the session waits for a page to open
SCREEN_LISTEN = ScreenConfig.model_fields["listen"].metadata[0].pattern.strip("^$")
DEFAULT_TIMEOUT_S = 120.0  # from daemon start to verified result
STOP_TIMEOUT_S = 20.0
COMMAND_LIFETIME_S = 120
MAX_REFERENCE_FILE_BYTES = 50_000_000

SPOOF_WHY: dict[str, str] = {
    LivenessReason.PRESENTATION_ATTACK: "the passive model judged the face not live (a presentation attack)",
    LivenessReason.TIMEOUT: "a challenge step was not seen within its step timeout",
    LivenessReason.FACE_CHANGED: "the tracked face was lost, replaced or changed during the session",
    LivenessReason.CHALLENGE_INCOMPLETE: "the challenge was not completed"}


@dataclass(frozen=True)
class DemoRun:
    """One session of the demo: its inputs and what to say about them beforehand."""

    title: str
    video: Path
    reference: Path
    liveness: str
    challenge: list[str] | None
    step_timeout_s: float | None = None
    about: tuple[str, ...] = ()


@dataclass(frozen=True)
class DemoResult:
    """A verified result. result: the typed result; payload: its CBOR map (for display); message: the signed COSE_Sign1
    bytes as stored in the outbox; topic: the topic they are signed for (external AAD);
    kid / public_key: the device key (8 / 32 raw bytes); timings_s: build, ready (daemon
    start to first frame), session (command to signed result), total; saved: the message
    written to a file for `facegate verify-result`."""

    result: Result
    payload: dict
    message: bytes
    topic: str
    kid: bytes
    public_key: bytes
    request_id: str
    challenge: list[str] | None
    explanation: str
    saved: Path
    timings_s: dict = field(default_factory=dict)


def plan(workdir: Path, video: Path | None = None, reference: Path | None = None, liveness: str | None = None,
         challenge: list[str] | None = None, synthetic: bool = False) -> list[DemoRun]:
    """The demo's sessions: the user's files, else the replay data when present (unless
    `synthetic`), else the built-in clip twice (liveness none, then both)."""
    if video is not None and reference is not None:
        _check_video(Path(video))
        _reference_bytes(Path(reference), Config().daemon.max_command_bytes, Config().daemon.max_reference_pixels)
        return [DemoRun("your video as the camera, your portrait as the reference", Path(video), Path(reference),
                        liveness or "both", challenge,
                        about=(f"reference: {reference}", f"camera:    {video} (played as fast as it decodes)",
                               "challenge: " + (",".join(challenge) if challenge else
                                                "drawn at random by the daemon, as in production")))]
    replay = None if synthetic else replay_inputs(workdir)
    if replay is not None:
        v, ref = replay
        steps = challenge or REPLAY_CHALLENGE
        mode = liveness or "both"
        return [DemoRun("a live person (replay of a webcam video) vs a portrait from it", v, ref, mode,
                        steps if mode in ("active", "both") else None, REPLAY_STEP_TIMEOUT_S,
                        about=(f"camera:    {v} (13 s, 960x540: a real person who smiles, waves and "
                               "turns the head at the end)",
                               f"reference: {ref} (frame {REPLAY_REFERENCE_FRAME} of the same video)",
                               f"liveness:  {mode}" + (f", challenge {','.join(steps)}, step timeout "
                                                       f"{REPLAY_STEP_TIMEOUT_S:g} s (the turns come late)"
                                                       if mode in ("active", "both") else ""),
                               "expect:    match, and every liveness check asked passes",
                               "(`facegate demo --synthetic` runs the built-in clip every install has instead)"))]
    clip, portrait = sample_inputs(workdir)
    steps = challenge or SAMPLE_CHALLENGE
    inputs = (f"reference: {portrait} (102x126 ID-chip-sized crop of the public-domain photo of Grace Hopper "
              "shipped in the package)",
              f"camera:    {clip} ({CLIP_SECONDS:g} s: the same photo drifting and tilted up to "
              f"{CLIP_MAX_TILT_DEG:g} degrees on grey -- a still photo, i.e. a presentation attack)")
    passive_why = ("the passive model scores this framing p(real) ~0.02, threshold 0.5 (the same photo filling "
                   "the frame scores 0.86: the passive check alone is no proof)")
    active_why = ("a flat photo tilted by up to 60 degrees reads as at most ~11 degrees of head yaw, a turn step "
                  "needs 25, so the challenge times out")
    expect = {"none": "expect:    match: the face comparison alone cannot tell a photo from a person (and the "
                      "portrait is cut from this very photo: a plumbing check, not a measure of accuracy)",
              "passive": f"expect:    spoof, presentation_attack. Measured with the shipped models: {passive_why}",
              "active": f"expect:    spoof, timeout. Measured with the shipped models: {active_why}",
              "both": f"expect:    spoof, timeout (the challenge is judged first). Measured with the shipped "
                      f"models: {active_why}; and {passive_why}"}
    if liveness is not None:
        return [DemoRun(f"ID portrait vs a clip of the same photo, liveness {liveness}", clip, portrait, liveness,
                        steps if liveness in ("active", "both") else None, about=inputs + (expect[liveness],))]
    return [DemoRun("ID portrait vs a clip of the same photo, liveness none", clip, portrait, "none", None,
                    about=inputs + (expect["none"],)),
            DemoRun(f"the same clip with liveness both (passive + challenge {','.join(steps)}), the daemon's default",
                    clip, portrait, "both", steps, about=(expect["both"],))]


def _reference_bytes(path: Path, max_bytes: int, max_pixels: int) -> tuple[bytes, str]:
    """The portrait as sent in a command: the file's bytes, or re-encoded as JPEG (and
    scaled down) when it exceeds the daemon's command limits; plus a note of what was done."""
    try:
        size = path.stat().st_size
        if size > MAX_REFERENCE_FILE_BYTES:
            raise InputError(f"{path} is too large for a portrait ({size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the reference {path}: {exc.strerror}") from None
    image = decode_image(data, MAX_REFERENCE_FILE_BYTES, 100_000_000, what=f"reference {path.name}")
    h, w = image.shape[:2]
    budget = max_bytes - 1024  # the rest of the command: ids, times, signature
    if len(data) <= budget and h * w <= max_pixels:
        return data, ""
    f = min(1.0, math.sqrt(max_pixels / (h * w)))
    small = cv2.resize(image, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok or len(jpg) > budget:
        raise InputError(f"the reference {path} does not fit in a verify command ({max_bytes} bytes)")
    return jpg.tobytes(), f"reference re-encoded as a {small.shape[1]}x{small.shape[0]} JPEG to fit the command limit"


def _check_video(path: Path) -> None:
    from ..adapters.files import FileCamera

    with FileCamera(path) as cam:  # raises InputError: missing, empty, too large, unreadable
        if next(iter(cam.frames()), None) is None:
            raise InputError(f"{path} holds no frames")


def demo_config(video: Path, workdir: Path, liveness: str, backend_public_hex: str,
                step_timeout_s: float | None = None, screen: str | None = None) -> Config:
    """The daemon's config: the video as camera (as fast as it decodes), MQTT off, state
    and signing key inside workdir, the backend key trusted; screen: the kiosk page's
    listen address (the video then plays in real time, for a person to watch), None: no page."""
    lc = {} if step_timeout_s is None else {"step_timeout_s": step_timeout_s}
    if screen is not None and not re.fullmatch(SCREEN_LISTEN, screen):
        raise InputError(f"--screen {screen}: the page is served on loopback only: 127.0.0.1:PORT, "
                         "localhost:PORT or [::1]:PORT")
    return Config.model_validate({
        "device_id": DEMO_DEVICE_ID,
        "camera": {"source": "file", "path": str(video), "realtime": screen is not None},
        "screen": {"enabled": True, "listen": screen} if screen else {"enabled": False},
        "mqtt": {"enabled": False, "trusted_keys": [backend_public_hex]},
        "daemon": {"state_dir": str(workdir / "state"), "key_file": str(workdir / "device-signing.key"),
                   "liveness": liveness},
        "liveness": lc,
    })


# -- progress -----------------------------------------------------------------------------
class _StateTap:
    """The demo's sink (daemon.build(sinks=...)): told the terminal's events, in order, on
    the daemon's thread; it queues them for the demo thread. Ready: the camera delivers."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.is_ready = threading.Event()
        self.last: tuple[str, str | None] = (State.IDLE, None)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Ready):
            self.is_ready.set()
            self.events.put(("ready", None, None))
        elif isinstance(event, StateChanged):
            self.events.put((event.state, event.step, event.session))
            self.last = (event.state, event.step)
        elif isinstance(event, Guidance):
            self.events.put(("hint", event.hint, event.session))


class _Narrator:
    """Turns state changes and the hints shown to the person into progress lines."""

    def __init__(self, on_progress: Callable[[str], None]):
        self.say = on_progress
        self.step: str | None = None
        self.hint: str | None = None

    def __call__(self, state: str, step: str | None, session: str | None) -> None:
        if state == "hint":
            if step != self.hint:
                self.hint = step
                self.say(f"  the kiosk shows: \"{text(hint_key(str(step)))}\"")
        elif state == "ready":
            self.say("daemon ready: the camera delivers frames (idle)")
        elif state == "waiting_face":
            self.say(f"state waiting_face: session {session} started, looking for one face in the frames")
        elif state == "challenge" and step and step != self.step:
            if self.step:
                self.say(f"  step {self.step} seen")
            self.say(f"state challenge: step {step}")
            self.step = step
        elif state == "challenge" and not step and self.step is None:
            self.say("state challenge: face found, checking liveness")
            self.step = ""
        elif state == "deciding":
            self.say("state deciding: the session ended; deciding, signing (COSE_Sign1, Ed25519) "
                     "and storing the result in the outbox")


def explain(result: Result) -> str:
    """One sentence on what a result says (decisions only: no scores are published)."""
    d, r, lv = result.decision, result.reason, result.liveness
    checks = []
    if "steps" in lv:
        checks.append(f"challenge {','.join(lv['steps'])} {'passed' if lv.get('active_pass') else 'NOT passed'}")
    if "passive_pass" in lv:
        checks.append(f"passive check {'passed' if lv['passive_pass'] else 'NOT passed'}")
    tail = f" ({'; '.join(checks)})" if checks else ""
    if d == Verdict.MATCH:
        return ("match: the face in the frames is the reference's person (the similarity never leaves the "
                "device)" + (f" and liveness held{tail}" if checks else ", no liveness asked"))
    if d == Verdict.SPOOF:
        why = SPOOF_WHY.get(str(r), str(r))
        return f"spoof ({r}): {why}{tail}; never a match, whatever the faces' similarity"
    if d == Verdict.NO_MATCH:
        return f"no_match ({r}): a usable face was found but it is not the reference's person"
    if d == Verdict.TIMEOUT:
        return f"timeout ({r}): the session timeout ended before a decision{tail}"
    if d == Verdict.NO_FACE:
        return f"no_face ({r}): no usable face" + (" in the reference" if str(r).startswith("reference_") else "")
    return f"{d} ({r})"


# -- the run ------------------------------------------------------------------------------
def run_demo(video: Path, reference: Path, workdir: Path, liveness: str, challenge: list[str] | None,
             on_progress: Callable[[str], None], *, step_timeout_s: float | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S, screen: str | None = None) -> DemoResult:
    """One verification through the real daemon: command in, signed result out, verified.
    screen: serve the kiosk page on this loopback address (its URL is told; the result
    screen stays up for its result_show_s before the daemon stops).

    Raises InputError for unusable inputs (before anything starts) and DemoError when no
    verified result arrives within timeout_s of the daemon's start, or the daemon fails or
    does not stop. The daemon is always asked to stop and joined."""
    video, reference, workdir = Path(video), Path(reference), Path(workdir)
    if liveness not in LIVENESS_MODES:
        raise InputError(f"liveness must be one of {', '.join(LIVENESS_MODES)}")
    t0 = time.monotonic()
    _check_video(video)
    backend = SigningKey.generate()  # throw-away: only this run's daemon trusts it
    cfg = demo_config(video, workdir, liveness, backend.public.hex(), step_timeout_s, screen)
    ref_bytes, note = _reference_bytes(reference, cfg.daemon.max_command_bytes, cfg.daemon.max_reference_pixels)
    workdir.mkdir(parents=True, exist_ok=True)
    tap = _StateTap()
    d = daemon_mod.build(cfg, sinks=[tap], service=False)
    device_public = load_key(key_path(cfg)).public  # as a backend would hold it: from the key file
    topics = d.topics
    t_built = time.monotonic()
    on_progress(f"daemon built (models verified): device {cfg.device_id}, signing kid {d.key.kid.hex()}, "
                f"liveness {liveness}, MQTT off (results stay in {d.state_dir / 'outbox.sqlite'})")
    narrate = _Narrator(on_progress)
    box: dict = {}

    def target() -> None:
        try:
            box["rc"] = d.run()
        except BaseException as exc:  # reported to the demo thread
            box["error"] = exc

    def drain() -> None:
        while True:
            try:
                narrate(*tap.events.get_nowait())
            except queue.Empty:
                return

    thread = threading.Thread(target=target, name="facegate-demo-daemon", daemon=True)
    deadline = time.monotonic() + timeout_s
    thread.start()
    try:
        # commands wait in the daemon's queue while the camera starts; it answers
        # camera_unavailable itself if no frame comes within camera.frame_timeout_s
        tap.is_ready.wait(min(cfg.camera.frame_timeout_s + 1.0, timeout_s))
        t_ready = time.monotonic()
        drain()
        if d.screen is not None:
            on_progress(f"kiosk screen: open {d.screen.url} in a browser on this machine; the session starts "
                        f"when the page is open (or in {SCREEN_WAIT_S:g} s)" if d.screen.url else
                        f"kiosk screen: could not listen on {cfg.screen.listen} (see the log)")
            until = time.monotonic() + SCREEN_WAIT_S
            while d.screen.url and not d.screen.watched and time.monotonic() < min(until, deadline):
                time.sleep(0.1)
        start_seq = d.outbox.last_seq
        rid = uuid.uuid4().hex
        message = Command.new(ref_bytes, time.time(), COMMAND_LIFETIME_S, rid, challenge).sign(backend, topics.cmd_verify)
        if note:
            on_progress(note)
        on_progress(f"backend: verify command {rid} ({len(message)} bytes COSE_Sign1, signed by throw-away "
                    f"backend key {backend.kid.hex()}) on {topics.cmd_verify}; challenge "
                    + (",".join(challenge) if challenge else "none" if liveness in ("none", "passive")
                       else "drawn by the daemon"))
        t_cmd = time.monotonic()
        d.handle_inbound(Inbound(topics.cmd_verify, message))
        found = None
        while found is None:
            drain()
            for row in d.outbox.pending(limit=50, after=(start_seq, "")):
                if row.seq <= start_seq or row.topic != topics.result:
                    continue
                try:
                    r, v = Result.verify(row.message, public_from_hex(device_public.hex()), topics.result)
                except SignatureError as exc:
                    raise DemoError(f"result seq {row.seq} does NOT verify: {exc}") from None
                if r.request_id == rid:
                    found = (row, r, v)
                    break
            if found is None:
                if not thread.is_alive():
                    why = box.get("error", f"exit {box.get('rc')}")
                    raise DemoError(f"the daemon stopped before answering: {why}")
                if time.monotonic() > deadline:
                    state, step = tap.last
                    raise DemoError(f"no result within {timeout_s:g} s (daemon state: {state}"
                                    f"{', step ' + step if step else ''})")
                time.sleep(0.02)
        t_result = time.monotonic()
        drain()
        row, result, v = found
        on_progress(f"result: seq {row.seq} in the outbox ({len(row.message)} bytes COSE_Sign1 for {row.topic}); "
                    "taken as delivered")
        d.outbox.delivered(row.seq, row.topic)  # the demo is its consumer: keep the outbox empty
        if d.screen is not None and d.screen.url:
            time.sleep(cfg.screen.result_show_s)  # the result screen, before the page loses its daemon
    finally:
        d.request_stop()
        thread.join(STOP_TIMEOUT_S)
    if thread.is_alive():
        raise DemoError(f"the daemon did not stop within {STOP_TIMEOUT_S:g} s")
    if "error" in box:
        raise DemoError(f"the daemon failed: {box['error']}")
    on_progress(f"daemon stopped (exit {box.get('rc')})")
    saved = workdir / f"result-{liveness}.cose"
    saved.write_bytes(row.message)
    t_end = time.monotonic()
    return DemoResult(result=result, payload=v.payload, message=row.message, topic=row.topic, kid=v.kid,
                      public_key=device_public, request_id=rid, challenge=challenge, explanation=explain(result),
                      saved=saved,
                      timings_s={"build": round(t_built - t0, 2), "ready": round(t_ready - t_built, 2),
                                 "session": round(t_result - t_cmd, 2), "total": round(t_end - t0, 2)})
