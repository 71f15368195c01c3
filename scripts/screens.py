"""Screenshots of every kiosk screen, at 800x480 (the Pi touch display) and 1920x1080, in
English and Simplified Chinese, through the real page server (facegate.screen) in
headless Chromium (scripts/chromium_cdp.py). The terminal's events are told to the
screen directly, and the preview shows the public-domain Grace Hopper photo shipped in
the package, posed for each hint (small for move_closer, dark for more_light, twice for
one_face_only, ...): no person's data goes into docs/.

    .venv/bin/python scripts/screens.py [--out docs/screens]

Writes {lang}-{width}x{height}-{screen}.jpg and docs/screens/README.md's table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from chromium_cdp import Browser  # noqa: E402
from facegate.config import ScreenConfig  # noqa: E402
from facegate.demo import sample_photo, tilted  # noqa: E402
from facegate.events import Answered, Ready, StateChanged  # noqa: E402
from facegate.guidance import Guidance  # noqa: E402
from facegate.screen import KioskScreen  # noqa: E402
from facegate.types import Frame  # noqa: E402
from facegate.vocab import FaceReason, Failure, Hint, State, Verdict  # noqa: E402

SIZES = ((800, 480), (1920, 1080))
LANGS = ("en", "zh")
FRAME = (640, 480)


def poses(photo: np.ndarray) -> dict[str, np.ndarray]:
    normal = tilted(photo, 0.9, 0, 0, 0, FRAME)
    two = np.hstack([tilted(photo, 0.6, 0, 0, 0, (320, 480))] * 2)
    return {"normal": normal, "small": tilted(photo, 0.16, 0, 0, 0, FRAME), "big": tilted(photo, 2.0, 0, 60, 0, FRAME),
            "dark": (normal * 0.12).astype(np.uint8), "bright": np.clip(normal * 1.6 + 110, 0, 255).astype(np.uint8),
            "aside": tilted(photo, 0.7, 200, 40, 0, FRAME), "turned": tilted(photo, 0.9, 0, 0, 35, FRAME), "two": two}


HINT_POSE = {Hint.ONE_FACE_ONLY: "two", Hint.LOOK_AT_CAMERA: "turned", Hint.MOVE_CLOSER: "small",
             Hint.MOVE_BACK: "big", Hint.MORE_LIGHT: "dark", Hint.LESS_LIGHT: "bright", Hint.CENTER_FACE: "aside",
             Hint.HOLD_STILL: "normal", Hint.BLINK: "normal", Hint.TURN_LEFT: "turned", Hint.TURN_RIGHT: "turned"}
STEP_OF = {Hint.BLINK: "blink", Hint.TURN_LEFT: "turn_left", Hint.TURN_RIGHT: "turn_right"}


def scenes() -> list[tuple[str, str, list]]:
    """(name, pose, events that bring the screen there from idle)."""
    start = [StateChanged(State.WAITING_FACE, None, "s1")]
    out: list[tuple[str, str, list]] = [("idle", "normal", []), ("waiting_face", "normal", start)]
    for h in Hint:
        step = STEP_OF.get(h)
        state = State.CHALLENGE if step else State.WAITING_FACE
        progress, left = (0.55, 4.2) if step else (0.2, 24.0)
        g = Guidance("s1", state, step, h, 0.4 if step else 0.0, progress, 21.5 if step else left, left if step else None)
        out.append((f"hint-{h.value}", HINT_POSE[h], start + ([StateChanged(state, step, "s1")] if step else []) + [g]))
    out.append(("deciding", "normal", start + [StateChanged(State.DECIDING, None, "s1")]))
    for name, decision, reason in (("result-passed", Verdict.MATCH, None),
                                   ("result-retry-no_face_in_time", Verdict.TIMEOUT, FaceReason.NO_FACE_IN_TIME),
                                   ("result-retry-different_person", Verdict.NO_MATCH, FaceReason.DIFFERENT_PERSON),
                                   ("result-error-cancelled", Verdict.ERROR, Failure.CANCELLED)):
        out.append((name, "normal", start + [StateChanged(State.DECIDING, None, "s1"),
                                             Answered("s1", "r1", decision, reason), StateChanged(State.IDLE)]))
    return out


def shoot(out: Path) -> list[str]:
    photo = sample_photo()
    frames = poses(photo)
    names = []
    with Browser(*SIZES[0]) as b:
        for lang in LANGS:
            for name, pose, events in scenes():
                screen = KioskScreen(ScreenConfig(listen="127.0.0.1:0", language=lang, result_show_s=60), "boot")
                screen.start()
                try:
                    screen(Ready())
                    for e in events:
                        screen(e)
                    screen.offer(Frame(frames[pose], time.monotonic(), 1))
                    for w, h in SIZES:
                        b.size(w, h)
                        b.open(screen.url)
                        b.wait("window.facegate && window.facegate.view && window.facegate.view.screen !== 'starting'"
                               " && document.getElementById('preview').naturalWidth > 0", 20, name)
                        time.sleep(0.3)
                        names.append(b.screenshot(out / f"{lang}-{w}x{h}-{name}.jpg").name)
                finally:
                    screen.stop()
        for lang in LANGS:  # offline: a page whose daemon went away under it
            screen = KioskScreen(ScreenConfig(listen="127.0.0.1:0", language=lang), "boot")
            screen.start()
            screen(Ready())
            for w, h in SIZES:
                b.size(w, h)
                b.open(screen.url)
                b.wait("window.facegate && window.facegate.view && window.facegate.view.screen === 'idle'", 20, "idle")
                if (w, h) == SIZES[-1]:
                    screen.stop()
                    b.wait("document.body.dataset.screen === 'offline'", 20, "offline")
                    for w2, h2 in SIZES:
                        b.size(w2, h2)
                        time.sleep(0.3)
                        names.append(b.screenshot(out / f"{lang}-{w2}x{h2}-offline.jpg").name)
    return names


def index(out: Path) -> None:
    rows = ["# The kiosk screen, every screen", "",
            "Made by `scripts/screens.py` (the real page server in headless Chromium; the preview shows the",
            "public-domain Grace Hopper photo shipped in the package, posed for each hint). 800x480 is the",
            "Raspberry Pi touch display, 1920x1080 a monitor.", "",
            "| screen | en 800x480 | zh 800x480 | en 1920x1080 | zh 1920x1080 |", "|---|---|---|---|---|"]
    names = sorted({p.name.split("-", 2)[2].rsplit(".", 1)[0] for p in out.glob("*.jpg")},
                   key=lambda n: [s[0] for s in scenes()].index(n) if n in [s[0] for s in scenes()] else 99)
    for n in names:
        cells = [f"![{n}]({lang}-{w}x{h}-{n}.jpg)" for w, h in SIZES for lang in LANGS]
        rows.append(f"| `{n}` | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    (out / "README.md").write_text("\n".join(rows) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "screens"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = shoot(out)
    index(out)
    print(f"{len(names)} screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
