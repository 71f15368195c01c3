"""The demo's inputs: the ones every install has -- the public-domain photograph of Grace
Hopper shipped in the package, cut to an ID-chip-sized portrait, and a clip in which the
same photo drifts and tilts on grey (a still photo: a presentation attack) -- and the
replay of a real person when the evaluation data mirror is named ($FACEGATE_SHARED).
Built once under the demo's work dir."""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from .. import modelstore
from ..errors import FacegateError, InputError
from ..imageio import decode_image
from ..vocab import Step

# the built-in clip: change CLIP_VERSION whenever make_clip changes (cached files are rebuilt)
CLIP_VERSION = 1
CLIP_SIZE = (640, 480)  # width, height in pixels
CLIP_FPS = 15
CLIP_SECONDS = 6.0
CLIP_MAX_TILT_DEG = 50.0
SAMPLE_CHALLENGE: list[str] = [Step.TURN_RIGHT, Step.TURN_LEFT]

REPLAY_VIDEO = Path("data") / "replay" / "zubair" / "live.webm"
SAMPLE_PHOTO = "samples/grace_hopper.jpg"  # in facegate.models (modelstore.resource)
REPLAY_REFERENCE_FRAME = 20
REPLAY_CHALLENGE: list[str] = [Step.TURN_RIGHT, Step.TURN_LEFT]
REPLAY_STEP_TIMEOUT_S = 10.0  # its turns come at the end of the 13 s clip


class DemoError(FacegateError):
    """The demo did not complete: no result in time, the daemon failed or would not stop,
    or the result did not verify."""


def default_workdir() -> Path:
    """Where the demo keeps its clip, device key and outbox: $XDG_CACHE_HOME/facegate/demo."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facegate" / "demo"


def shared_dir() -> Path | None:
    """The evaluation data mirror named by $FACEGATE_SHARED, else None (never a path
    guessed from where the package lies: an installed package has no checkout beside it)."""
    env = os.environ.get("FACEGATE_SHARED")
    return Path(env) if env else None


def sample_photo() -> np.ndarray:
    """The public-domain photograph of Grace Hopper shipped in the package (BGR uint8)."""
    try:
        data = modelstore.resource(SAMPLE_PHOTO).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the packaged sample photo {SAMPLE_PHOTO}: {exc} "
                         "(pass --video FILE --reference FILE)") from None
    return decode_image(data, what=f"sample photo {SAMPLE_PHOTO}")


def id_portrait(photo: np.ndarray) -> np.ndarray:
    """A tight 102x126 head-and-shoulders crop, like the portrait on an ID card's chip
    (the framing of scripts/sample_portraits.py)."""
    h, w = photo.shape[:2]
    crop = photo[int(h * 0.04):int(h * 0.62), int(w * 0.22):int(w * 0.78)]
    return cv2.resize(crop, (102, 126), interpolation=cv2.INTER_AREA)


def tilted(photo: np.ndarray, scale: float, dx: float, dy: float, tilt_deg: float,
           size: tuple[int, int] = CLIP_SIZE) -> np.ndarray:
    """The flat photo rotated by tilt_deg about its vertical axis (pinhole camera, focal
    length 1.2x the frame width), scaled, shifted by (dx, dy) pixels and laid on grey."""
    W, H = size
    h, w = photo.shape[:2]
    f = 1.2 * W
    a = math.radians(tilt_deg)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    out = []
    for x, y in corners - np.array([w / 2, h / 2], np.float32):
        X, Z = x * math.cos(a), x * math.sin(a) + f
        out.append([f * X / Z * scale + W / 2 + dx, f * y / Z * scale + H / 2 + dy])
    m = cv2.getPerspectiveTransform(corners, np.array(out, np.float32))
    grey = np.full((H, W, 3), (92, 96, 100), np.uint8)
    return cv2.warpPerspective(photo, m, (W, H), dst=grey, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_TRANSPARENT)


def clip_frames(photo: np.ndarray) -> list[np.ndarray]:
    """The built-in clip, deterministic: 1.5 s frontal with a hand-held drift, the photo
    tilted to +CLIP_MAX_TILT_DEG and back (2 s), to the other side and back (2 s), frontal."""
    frames = []
    for i in range(int(CLIP_SECONDS * CLIP_FPS)):
        t = i / CLIP_FPS
        scale = 0.72 + 0.04 * math.sin(1.3 * t)
        dx, dy = 6 * math.sin(2.1 * t), 4 * math.sin(1.7 * t)
        tilt = CLIP_MAX_TILT_DEG * math.sin(math.pi * (t - 1.5) / 2) if 1.5 <= t < 5.5 else 0.0
        frames.append(tilted(photo, scale, dx, dy, tilt))
    return frames


def _write_clip(frames: list[np.ndarray], path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    w = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), CLIP_FPS, CLIP_SIZE)
    if not w.isOpened():
        raise DemoError(f"OpenCV cannot write an MPEG-4 video to {tmp}")
    try:
        for f in frames:
            w.write(f)
    finally:
        w.release()
    os.replace(tmp, path)


def sample_inputs(workdir: Path) -> tuple[Path, Path]:
    """(clip, portrait) from the packaged Grace Hopper photo, built once under workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    clip = workdir / f"hopper_clip_v{CLIP_VERSION}.mp4"
    portrait = workdir / "hopper_id.png"
    if not (clip.is_file() and portrait.is_file()):
        photo = sample_photo()
        if not cv2.imwrite(str(portrait), id_portrait(photo)):
            raise DemoError(f"cannot write {portrait}")
        _write_clip(clip_frames(photo), clip)
    return clip, portrait


def replay_inputs(workdir: Path, shared: Path | None = None) -> tuple[Path, Path] | None:
    """(live.webm, its frame 20 as a PNG portrait) when the replay data is present."""
    from ..adapters.files import FileCamera

    shared = shared or shared_dir()
    if shared is None:
        return None
    video = shared / REPLAY_VIDEO
    if not video.is_file():
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    ref = workdir / f"zubair_frame{REPLAY_REFERENCE_FRAME}.png"
    if not ref.is_file():
        with FileCamera(video) as cam:
            frame = next((f for f in cam.frames() if f.seq == REPLAY_REFERENCE_FRAME), None)
        if frame is None or not cv2.imwrite(str(ref), frame.image):
            raise DemoError(f"cannot take frame {REPLAY_REFERENCE_FRAME} of {video}")
    return video, ref
