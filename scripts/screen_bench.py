"""What the kiosk screen costs and what guidance buys, on this machine:

1. the preview's encode cost per frame at 640x480 (mirror + JPEG, facegate.screen.preview);
2. the frame loop's rate (session frames per second) of the real daemon on the replay of
   a real person, with no page, with a loopback client reading the MJPEG preview and the
   event stream, and with headless Chromium showing the page with its motion, as started by
   hand and at nice 10 as scripts/kiosk-browser.sh starts it (on a terminal the browser
   runs on the same CPU; its own CPU is a column), in two forms of camera:
   - `video`: the replay decoded as fast as it goes (~1 ms a frame): the stress form, the
     loop's own capacity;
   - `realtime`: the replay at its own 15 frames/s (a terminal's default camera rate):
     the frames the loop handles of those the camera gives;
   `--threads`: where the daemon's CPU goes in one stress session, thread by thread (how the
   idle feed racing a replay session was found: docs/measurements.md);
3. seconds from command to decision for a person who starts too far away (the shrunk
   replay, in real time) against the original replay, both guided.

    nice .venv/bin/python scripts/screen_bench.py [--rounds 3] [--forms video,realtime] [--threads]

Needs ../shared/data/replay/zubair/live.webm and the models; prints Markdown tables.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import screen_videos  # noqa: E402
from chromium_cdp import Browser, chromium_path, proc_stat  # noqa: E402
from facegate.screen.preview import encode  # noqa: E402
from facegate.signing import SigningKey  # noqa: E402
from screen_terminal import Terminal  # noqa: E402

DEV = "bench-1"
LIVE = ROOT.parent / "shared" / "data" / "replay" / "zubair" / "live.webm"


def encode_cost(frames, n: int = 300) -> dict:
    import cv2

    imgs = [cv2.resize(f, (640, 480)) for f in frames[:60]]
    ms = []
    for i in range(n):
        t0 = time.perf_counter()
        jpg = encode(imgs[i % len(imgs)], 640)
        ms.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(ms), "p90_ms": sorted(ms)[int(0.9 * n)], "kb": len(jpg) / 1024}


class BenchTerminal(Terminal):
    """The shared test terminal (tests/screen_terminal.py) with the shipped fusion setting,
    timed per session."""

    def __init__(self, tmp: Path, video: Path, key: SigningKey, realtime: bool):
        super().__init__(tmp, video, key, "active", realtime=realtime, device_id=DEV, fusion_frames=None)

    def session(self, reference: bytes) -> tuple[float, int, float, str, float]:
        """(frames per second of the session's loop, frames, seconds command -> decision,
        decision, this process's CPU milliseconds per session frame: the daemon's threads,
        preview encoding and page server included; the browser is another process)."""
        before = self.d.health.last_decision
        t0 = time.perf_counter()
        self.verify(reference, ["turn_right", "turn_left"])
        while not self.d.kiosk.state[0] == "waiting_face":
            time.sleep(0.001)
        self.frames.clear()
        cpu0 = time.process_time()
        while self.d.health.last_decision is before:
            time.sleep(0.01)
        t1, cpu = time.perf_counter(), time.process_time() - cpu0
        f = [t for t in self.frames if t <= t1]
        return ((len(f) - 1) / (f[-1] - f[0]), len(f), t1 - t0, self.d.health.last_decision["decision"],
                1000 * cpu / len(f))


def mjpeg_reader(url: str, stop: threading.Event) -> threading.Thread:
    def run():
        with urllib.request.urlopen(url + "preview.mjpg") as r, urllib.request.urlopen(url + "events") as ev:
            ev.fp.raw._sock.settimeout(0.01)  # type: ignore[attr-defined]
            while not stop.is_set():
                r.read(65536)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


MODES = ("no page", "MJPEG + events client", "headless Chromium page", "headless Chromium page, nice 10")
FORMS = {"video": "camera as fast as it decodes", "realtime": "real time, the camera at 15 frames/s"}


def loop_rates(forms: list[str], rounds: int, reference: bytes, key: SigningKey, tmp: Path) -> None:
    """Part 2: every form, every mode, `rounds` times interleaved; a table per form."""
    rates: dict[tuple[str, str], list[float]] = {(f, m): [] for f in forms for m in MODES}
    cpu: dict[tuple[str, str], list[float]] = {(f, m): [] for f in forms for m in MODES}
    bcpu: dict[tuple[str, str], list[float]] = {(f, m): [] for f in forms for m in MODES}  # the browser's CPU, % of one core
    terms = {form: BenchTerminal(tmp / form, LIVE, key, realtime=form == "realtime") for form in forms}
    # the page as a kiosk shows it: with motion; the second one niced as kiosk-browser.sh starts it
    browsers = {m: Browser(800, 480, nice=10 if "nice" in m else 0, reduced_motion=False)
                for m in MODES[2:]} if chromium_path() else {}
    try:
        for _ in range(rounds):
            for form in forms:
                term = terms[form]
                for mode in MODES:
                    stop = threading.Event()
                    browser = browsers.get(mode)
                    if mode.startswith("MJPEG"):
                        mjpeg_reader(term.url, stop)
                    elif mode.startswith("headless") and browser:
                        browser.open(term.url)
                        browser.wait("window.facegate && ['idle', 'result'].includes(document.body.dataset.screen)", 30)
                    elif mode.startswith("headless"):
                        continue
                    time.sleep(1.0)
                    b0, w0 = (browser.cpu_seconds() if browser else 0.0), time.perf_counter()
                    fps, n, s, decision, ms = term.session(reference)
                    b1, w1 = (browser.cpu_seconds() if browser else 0.0), time.perf_counter()
                    rates[form, mode].append(fps)
                    cpu[form, mode].append(ms)
                    bcpu[form, mode].append(100 * (b1 - b0) / (w1 - w0))
                    print(f"  {form} / {mode}: {fps:.1f} frames/s, {ms:.1f} CPU ms/frame ({n} frames, {s:.1f} s, "
                          f"{decision}), browser {bcpu[form, mode][-1]:.0f} % of a core", flush=True)
                    stop.set()
                    if browser:
                        browser.open("about:blank")
                    time.sleep(1.0)
    finally:
        for browser in browsers.values():
            browser.close()
        for term in terms.values():
            term.stop()
    for form in forms:
        print(f"\n| frame loop, {FORMS[form]} | frames/s, median of {rounds} | vs no page "
              "| daemon CPU ms per frame, median | browser CPU, % of a core |\n|---|---|---|---|---|")
        base = statistics.median(rates[form, "no page"])
        for mode in MODES:
            r = rates[form, mode]
            if r:
                m, c = statistics.median(r), statistics.median(cpu[form, mode])
                b = f"{statistics.median(bcpu[form, mode]):.0f}" if mode.startswith("headless") else "-"
                print(f"| {mode} | {m:.1f} ({', '.join(f'{x:.1f}' for x in r)}) | {100 * (m / base - 1):+.1f} % "
                      f"| {c:.1f} | {b} |")


def thread_cpu() -> dict[int, float]:
    """CPU seconds of each thread of this process now (utime + stime, /proc/self/task)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            f = proc_stat(f"self/task/{tid}")
        except OSError:
            continue  # ended meanwhile
        out[int(tid)] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


def thread_table(reference: bytes, key: SigningKey, tmp: Path) -> None:
    """One stress session of the daemon (no page), its CPU per thread: sampled every 20 ms
    so that threads which end during the session (a decoder's) are counted too."""
    term = BenchTerminal(tmp / "threads", LIVE, key, realtime=False)
    seen: dict[int, float] = {}
    names: dict[int, str] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(thread_cpu())
            names.update({t.native_id: t.name for t in threading.enumerate() if t.native_id})
            for tid in seen.keys() - names.keys():
                try:
                    names[tid] = "native " + Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                except OSError:
                    pass
            time.sleep(0.02)
    try:
        before = thread_cpu()
        sampler = threading.Thread(target=sample, name="sampler", daemon=True)
        sampler.start()
        w0 = time.perf_counter()
        _, n, _, decision, ms = term.session(reference)
        wall = time.perf_counter() - w0
        stop.set()
        sampler.join()
        seen.update(thread_cpu())
    finally:
        term.stop()
    used: dict[str, list[float]] = {}
    for tid, cpu in seen.items():
        used.setdefault(names.get(tid, "?"), []).append(cpu - before.get(tid, 0.0))
    print(f"\n| thread (one stress session: {n} frames, {wall:.1f} s, {decision}, {ms:.1f} CPU ms a frame) "
          "| threads | CPU s | % of a core |\n|---|---|---|---|")
    for name, cpus in sorted(used.items(), key=lambda kv: -sum(kv[1])):
        if sum(cpus) >= 0.01:
            print(f"| {name} | {len(cpus)} | {sum(cpus):.2f} | {100 * sum(cpus) / wall:.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--forms", default="video,realtime",
                    help="comma-separated camera forms of part 2: " + ", ".join(FORMS))
    ap.add_argument("--threads", action="store_true", help="only the per-thread CPU of one stress session")
    ap.add_argument("--no-guided", action="store_true", help="skip part 3 (the real-time replays)")
    args = ap.parse_args()
    forms = [f for f in args.forms.split(",") if f]
    if not set(forms) <= set(FORMS):
        ap.error(f"--forms: one or more of {', '.join(FORMS)}")
    frames = screen_videos.original_frames(LIVE)
    enc = encode_cost(frames)
    print(f"preview encode at 640x480: median {enc['median_ms']:.2f} ms, p90 {enc['p90_ms']:.2f} ms, "
          f"{enc['kb']:.0f} KiB per frame")
    key = SigningKey.generate()
    import cv2
    ok, ref = cv2.imencode(".jpg", frames[20])
    reference = ref.tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        if args.threads:
            thread_table(reference, key, Path(tmp))
            return 0
        loop_rates(forms, args.rounds, reference, key, Path(tmp))
        if args.no_guided:
            return 0
        small = screen_videos.small(frames, Path(tmp) / "small.mp4")
        print("\n| real-time replay | seconds command -> decision | decision |\n|---|---|---|")
        for name, video in (("original (face near)", LIVE), ("shrunk (starts too far, comes closer)", small)):
            t = BenchTerminal(Path(tmp) / name[:5], video, key, realtime=True)
            try:
                _, _, s, decision, _ = t.session(reference)
                print(f"| {name} | {s:.1f} | {decision} |", flush=True)
            finally:
                t.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
