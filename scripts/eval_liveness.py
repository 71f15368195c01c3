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

Active challenge events against hand annotations (tests/fixtures/liveness_annotations.json):
every frame goes detector -> chosen face -> mesh (presence >= 0.5, as liveness.check.LivenessCheck
feeds the challenge) -> Observation(t, yaw, eye openness) -> a liveness.challenge.Challenge
that records every blink and turn:
  replay/*/live.webm      blinks and turns found vs annotated (a found event lies between
                          the annotated start and TOL frames after its end)
  eyeblink8/ (clips in the fixture only; the folder's own labels are unreliable)
                          the by-eye confirmed complete blinks
  nuaa/ ImposterRaw       each subject's printed-photo frames in labels.csv order, played
                          at 10 fps: blinks reported (must be 0)
blink_recall = annotated blinks found / annotated blinks. --eyes iris (default) judges
blinks on liveness.challenge.EyeLids (the iris-landmark model); --eyes mesh on the face
mesh's eye_openness, which is what liveness.check.LivenessCheck feeds until it is given EyeLids
(the table shows both). --plots writes openness / yaw curves to --out.
Ends with one line:
  liveness: apcer_print=A bpcer=B replay_rejected=R/N live_accepted=L/M blink_recall=C
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegate import config as config_mod
from facegate import decide
from facegate.adapters.files import FileCamera
from facegate.cli import build_verifier, make_runner
from facegate.imageio import read_image
from facegate.liveness.challenge import Challenge, ChallengeOptions, EyeLids, Observation, eye_openness
from facegate.liveness.passive import fuse
from facegate.modelstore import ModelStore
from facegate.pipeline import Timings, build_passive

ANNOTATIONS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "liveness_annotations.json"
TOL = 3  # frames after an annotated event's end within which the detector may report it
PRINT_FPS = 10.0


@dataclass
class FrameObs:
    """One frame as the challenge sees it: face = a face was chosen; mesh_ok = its mesh
    presence >= 0.5 (only those frames reach the challenge, as in liveness.check.LivenessCheck)."""

    seq: int
    t: float
    face: bool
    mesh_ok: bool = False
    yaw: float = 0.0
    open_mesh: float = 0.0
    open_iris: float = 0.0


def recorder() -> Challenge:
    """A challenge that never ends: its step is never asked, nothing times out, so it
    records every blink and turn of a whole video."""
    return Challenge(["record"], ChallengeOptions(step_timeout_s=float("inf"), face_lost_s=float("inf")))


def play(obs: list[FrameObs], eyes: str) -> tuple[list[int], list[tuple[str, int]]]:
    """Blinks (frame of reopening) and turns ((direction, frame of return)) recorded on obs."""
    ch = recorder()
    frame_at = {}
    for o in obs:
        frame_at[o.t] = o.seq
        if not o.face:
            ch.update(Observation(o.t, False))
        elif o.mesh_ok:
            ch.update(Observation(o.t, True, o.yaw, o.open_iris if eyes == "iris" else o.open_mesh))
    return [frame_at[t] for t in ch.blinks], [(d, frame_at[t]) for d, t in ch.turns]


def match(found: list[int], spans: list[tuple[int, int]]) -> tuple[int, list[int]]:
    """(annotated spans hit, reported frames that hit none), each report used once."""
    left, hits = list(found), 0
    for a, b in spans:
        m = next((f for f in left if a <= f <= b + TOL), None)
        if m is not None:
            hits += 1
            left.remove(m)
    return hits, left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    ap.add_argument("--threshold", type=float, help="fixed passive threshold (default: chosen on NUAA)")
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--eyes", default="iris", choices=["iris", "mesh"],
                    help="eye openness blinks are judged on for the final line (default iris)")
    ap.add_argument("--plots", action="store_true", help="write openness / yaw curves (PNG) to --out")
    args = ap.parse_args()
    cfg = config_mod.Config()
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"precision": args.precision})})
    verifier = build_verifier(cfg)
    passive, _ = build_passive(ModelStore(cfg.models.dir or None), cfg, make_runner)

    store = ModelStore(cfg.models.dir or None)
    lids = EyeLids(make_runner(store.path("iris", "fp32")[0], cfg.models.num_threads))
    notes = json.loads(ANNOTATIONS.read_text())

    def analyse(img, seq=0, t=0.0, score=True):
        """(passive score or None, FrameObs) of one frame's chosen face."""
        dets = verifier.find_faces(img, False, Timings())
        det, _ = decide.choose_face(dets, img.shape[1], img.shape[0], cfg.verify.dominant_face_ratio)
        if det is None:
            return None, FrameObs(seq, t, False)
        fa = verifier.examine(img, det, Timings(), embed=False)
        o = FrameObs(seq, t, True, fa.mesh.presence >= 0.5, fa.quality.yaw_deg)
        if o.mesh_ok:
            o.open_mesh, o.open_iris = eye_openness(fa.mesh.points), lids.openness(img, fa.mesh.points)
        return (passive.score(img, det) if score else None), o

    def frame_score(img):
        return analyse(img)[0]

    # -- NUAA ------------------------------------------------------------------------------
    nuaa = args.data / "nuaa" / "labels.csv"
    live_s, print_s, no_face = [], [], 0
    nuaa_seq: dict[tuple[str, str], list[FrameObs]] = defaultdict(list)  # (label, subject) -> frames in order
    if nuaa.is_file():
        with open(nuaa) as f:
            for row in csv.DictReader(f):
                seq = nuaa_seq[(row["label"], row["subject"])]
                s, o = analyse(read_image(nuaa.parent / row["path"]), len(seq), len(seq) / PRINT_FPS)
                seq.append(o)
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
    videos: dict[str, list[FrameObs]] = {}
    print(f"{'video':34s} {'frames':>6s} {'median':>7s} {'live frames':>11s} verdict")
    for d in replay_dirs:
        for name in ("live.webm", "screen_replay.webm"):
            if not (d / name).is_file():
                continue
            scores, obs = [], []
            with FileCamera(d / name) as cam:
                for fr in cam.frames():
                    s, o = analyse(fr.image, fr.seq, fr.t_mono_s)
                    obs.append(o)
                    if s is not None:
                        scores.append(s)
            videos[f"replay/{d.name}/{name}"] = obs
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
    # -- active challenge events vs annotations ---------------------------------------------
    for rel in notes["blink_clips"]:
        if (args.data / rel).is_file():
            with FileCamera(args.data / rel) as cam:
                videos[rel] = [analyse(fr.image, fr.seq, fr.t_mono_s, score=False)[1] for fr in cam.frames()]
    recall = events_table(videos, nuaa_seq, notes)
    h, n = recall[args.eyes]
    blink_recall = f"{h / n:.2f}" if n else "n/a"
    print(f"blink_recall: {args.eyes} {h}/{n} (iris {recall['iris'][0]}/{recall['iris'][1]}, mesh {recall['mesh'][0]}/"
          f"{recall['mesh'][1]}); the pipeline uses the iris model (EyeLids)")
    if args.plots:
        plot(videos, nuaa_seq, args.out)
    print(f"liveness: apcer_print={apcer * 100:.2f} bpcer={bpcer * 100:.2f} replay_rejected={rej}/{n_rep} "
          f"live_accepted={acc}/{n_live} blink_recall={blink_recall}")
    return 0


def match_turns(turns: list[tuple[str, int]], annotated: list[dict]) -> list[int | None]:
    """For each annotated turn in order: the frame its recorded return was found at (same
    direction, between `away` and `back` + TOL, after the previous match), else None."""
    found, left = [], list(turns)
    for tn in annotated:
        m = next((x for x in left if x[0] == tn["direction"] and tn["away"] <= x[1] <= tn["back"] + TOL), None)
        found.append(None if m is None else m[1])
        if m is not None:
            left = left[left.index(m) + 1:]
    return found


def events_table(videos: dict, nuaa_seq: dict, notes: dict) -> dict[str, tuple[int, int]]:
    """Print blinks and turns found vs annotated for both openness sources; returns
    {eyes: (annotated blinks found, annotated blinks)}."""
    annotated = {**notes["live_videos"], **notes["blink_clips"]}
    print(f"\nactive challenge events vs annotations (found = reported between the annotated start and "
          f"{TOL} frames after its end; frames 0-based)")
    print(f"{'source':48s} {'eyes':4s} {'blinks':>7s} {'other':>5s} {'turns':>6s} {'other':>5s}  reported (frame)")
    recall = {}
    for eyes in ("iris", "mesh"):
        hit = n_blinks = 0
        for rel, note in annotated.items():
            if rel not in videos:
                if eyes == "iris":
                    print(f"{rel:48s} skipped ({rel.split('/')[0]}/ absent)")
                continue
            blinks, turns = play(videos[rel], eyes)
            spans = [(b["closing"], b["reopened"]) for b in note["blinks"]]
            bh, bx = match(blinks, spans)
            hit, n_blinks = hit + bh, n_blinks + len(spans)
            tcol, tx = "-", len(turns)
            detail = f"blinks {blinks}"
            if "turns" in note:
                tf = match_turns(turns, note["turns"])
                th = sum(f is not None for f in tf)
                tcol, tx = f"{th}/{len(tf)}", len(turns) - th
                parts = []
                for tn, f in zip(note["turns"], tf):
                    parts.append(f"{tn['direction']} missed" if f is None
                                 else f"{tn['direction']} {f} (annotated back {tn['back']}, {f - tn['back']:+d})")
                detail += "  turns " + ", ".join(parts)
                if tx:
                    detail += f"  other turns {turns}"
            print(f"{rel:48s} {eyes:4s} {f'{bh}/{len(spans)}':>7s} {len(bx):5d} {tcol:>6s} {tx:5d}  {detail}")
        for rel in sorted(videos):
            if rel.endswith("screen_replay.webm"):  # not annotated: what an active check sees on a replay
                blinks, turns = play(videos[rel], eyes)
                print(f"{rel:48s} {eyes:4s} {'-':>7s} {len(blinks):5d} {'-':>6s} {len(turns):5d}  "
                      f"not annotated (attack): blinks {blinks} turns {turns}")
        for label, name in (("print_attack", "nuaa/ printed-photo sequences"), ("live", "nuaa/ live sequences")):
            subs = {k[1]: v for k, v in nuaa_seq.items() if k[0] == label}
            if subs:
                per = {sub: play(v, eyes)[0] for sub, v in sorted(subs.items())}
                bad = {sub: b for sub, b in per.items() if b}
                print(f"{f'{name} ({len(subs)} subjects)':48s} {eyes:4s} {'-':>7s} {sum(map(len, per.values())):5d} "
                      f"{'-':>6s} {'-':>5s}  {'blinks must be 0' if label == 'print_attack' else 'not annotated'}"
                      f"{f': at {bad}' if bad else ''}")
        recall[eyes] = (hit, n_blinks)
    if not nuaa_seq:
        print("nuaa/: skipped (absent), no printed-photo sequences")
    return recall


def plot(videos: dict, nuaa_seq: dict, out: Path) -> None:
    """Openness (iris, mesh; each over its own median) and yaw per frame, one PNG per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    series = dict(videos)
    series.update({f"nuaa_{lab}_{sub}": v for (lab, sub), v in nuaa_seq.items() if lab == "print_attack"})
    for name, obs in series.items():
        ok = [o for o in obs if o.mesh_ok]
        if not ok:
            continue
        x = [o.seq for o in ok]
        fig, ax = plt.subplots(2, 1, figsize=(12, 5), sharex=True)
        for key, lab in (("open_iris", "iris (EyeLids)"), ("open_mesh", "mesh eye_openness")):
            v = np.array([getattr(o, key) for o in ok])
            ax[0].plot(x, v / np.median(v), ".-", label=lab)
        ax[0].set_ylabel("openness / median")
        ax[0].legend()
        ax[1].plot(x, [o.yaw for o in ok], ".-")
        ax[1].set_ylabel("yaw (deg)")
        ax[1].set_xlabel("frame")
        for a in ax:
            a.grid(True)
        fig.tight_layout()
        fig.savefig(out / f"liveness_{name.replace('/', '_').rsplit('.', 1)[0]}.png", dpi=80)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
