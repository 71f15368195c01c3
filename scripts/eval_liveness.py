#!/usr/bin/env python3
"""Passive liveness (presentation-attack detection) on real attacks.

    python scripts/eval_liveness.py --data ../shared/data [--precision int8] [--threshold T]

Every face goes through the real pipeline (BlazeFace -> choose face) and both MiniFASNet
models (mean p(real) per frame; a session is the median over its frames):
  nuaa/         live vs printed-photo frames, one frame = one presentation ->
                APCER (attacks accepted) and BPCER (bona fide rejected), ISO/IEC 30107-3
  replay/*/     live.webm must pass, screen_replay.webm must fail (whole video = a session)
  silent_face/  image_T1 live, image_F1 print and image_F2 screen attacks (stored
                rotated with an EXIF orientation tag; OpenCV's decoder turns them upright)
Folders absent from --data are skipped and said so. Without --threshold the script
picks the threshold that minimises max(APCER, BPCER) on NUAA and reports at it.
The active challenge (blink / turns) is not implemented yet: blink_recall=n/a.
Ends with one line:
  liveness: apcer_print=A bpcer=B replay_rejected=R/N live_accepted=L/M blink_recall=C
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from facegate import config as config_mod
from facegate import decide
from facegate.adapters.files import FileCamera
from facegate.cli import build_verifier, make_runner
from facegate.imageio import read_image
from facegate.liveness.passive import fuse
from facegate.modelstore import ModelStore
from facegate.pipeline import Timings, build_passive


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    ap.add_argument("--threshold", type=float, help="fixed passive threshold (default: chosen on NUAA)")
    ap.add_argument("--out", type=Path, default=Path("out"))
    args = ap.parse_args()
    cfg = config_mod.Config()
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"precision": args.precision})})
    verifier = build_verifier(cfg)
    passive = build_passive(ModelStore(cfg.models.dir or None), cfg, make_runner)

    def frame_score(img):
        dets = verifier.find_faces(img, False, Timings())
        det, _ = decide.choose_face(dets, img.shape[1], img.shape[0], cfg.verify.dominant_face_ratio)
        return None if det is None else passive.score(img, det)

    # -- NUAA ------------------------------------------------------------------------------
    nuaa = args.data / "nuaa" / "labels.csv"
    live_s, print_s, no_face = [], [], 0
    if nuaa.is_file():
        with open(nuaa) as f:
            for row in csv.DictReader(f):
                s = frame_score(read_image(nuaa.parent / row["path"]))
                if s is None:
                    no_face += 1
                    s = 0.0  # no face: the kiosk cannot accept it (a rejection)
                (live_s if row["label"] == "live" else print_s).append(s)
        live_a, print_a = np.array(live_s), np.array(print_s)
        if args.threshold is None:
            cands = np.unique(np.concatenate([live_a, print_a]))
            errs = np.array([max((print_a >= t).mean(), (live_a < t).mean()) for t in cands])
            best = cands[errs == errs.min()]
            # the middle of the best interval: the widest margin to both classes
            above = cands[cands > best.max()]
            hi = above.min() if len(above) else best.max()
            thr = float((best.min() + hi) / 2) if errs.min() == 0 else float(best.min())
        else:
            thr = args.threshold
        apcer, bpcer = float((print_a >= thr).mean()), float((live_a < thr).mean())
        ranks = np.argsort(np.argsort(np.concatenate([live_a, print_a])))
        auc = (ranks[: len(live_a)].sum() - len(live_a) * (len(live_a) - 1) / 2) / (len(live_a) * len(print_a))
        print(f"NUAA: {len(live_a)} live, {len(print_a)} print frames ({no_face} without a face)")
        print(f"  AUC {auc:.4f}  threshold {thr:.4f}  APCER {apcer * 100:.2f} %  BPCER {bpcer * 100:.2f} %")
    else:
        thr = args.threshold if args.threshold is not None else cfg.liveness.passive_threshold
        apcer = bpcer = float("nan")
        print(f"NUAA: skipped ({nuaa} absent); threshold {thr}")

    # -- replay videos -----------------------------------------------------------------------
    replay_dirs = sorted(p for p in (args.data / "replay").glob("*/") if (p / "live.webm").is_file())
    rej = acc = n_rep = n_live = 0
    print(f"{'video':34s} {'frames':>6s} {'median':>7s} {'live frames':>11s} verdict")
    for d in replay_dirs:
        for name in ("live.webm", "screen_replay.webm"):
            if not (d / name).is_file():
                continue
            scores = []
            with FileCamera(d / name) as cam:
                for fr in cam.frames():
                    s = frame_score(fr.image)
                    if s is not None:
                        scores.append(s)
            v = fuse(scores, thr, cfg.liveness.passive_min_frames)
            live_frac = float(np.mean(np.array(scores) >= thr)) if scores else 0.0
            print(f"{d.name + '/' + name:34s} {len(scores):6d} {v.score:7.3f} {live_frac * 100:10.0f}% "
                  f"{'live' if v.live else 'attack'}")
            if name == "live.webm":
                n_live += 1
                acc += v.live
            else:
                n_rep += 1
                rej += not v.live
    if not replay_dirs:
        print("replay: skipped (no replay/*/live.webm)")

    # -- silent_face ---------------------------------------------------------------------------
    sf = args.data / "silent_face"
    if sf.is_dir():
        for name, truth in (("image_T1.jpg", "live"), ("image_F1.jpg", "print"), ("image_F2.jpg", "screen")):
            img = read_image(sf / name)
            s = frame_score(img)
            verdict = "no face" if s is None else ("live" if s >= thr else "attack")
            ok = (verdict == "live") == (truth == "live")
            print(f"silent_face/{name:14s} truth {truth:6s} score {s if s is not None else float('nan'):.3f} "
                  f"-> {verdict} {'ok' if ok else 'WRONG'}")
    else:
        print("silent_face: skipped")
    print(f"liveness: apcer_print={apcer * 100:.2f} bpcer={bpcer * 100:.2f} replay_rejected={rej}/{n_rep} "
          f"live_accepted={acc}/{n_live} blink_recall=n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
