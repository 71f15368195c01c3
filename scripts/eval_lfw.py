#!/usr/bin/env python3
"""LFW verification accuracy of the real facegate pipeline.

    python scripts/eval_lfw.py --data ../shared/data/lfw [--precision int8] [--out out/]

For every pair of pairs.txt, image 1 goes through the reference path and image 2 through
the probe path of `facegate.pipeline.Verifier` (detect -> mesh -> align -> embed), and
the cosine similarity is the pair's score. A pair where a face is not found counts as an
error (never dropped). Faces that the kiosk's quality gates would refuse are scored
anyway (LFW is a test of the embedding) and counted in the table.
Writes a ROC plot PNG and ends with one line:
    lfw: accuracy=A tar@far1e-3=T eer=E pairs=N failed=F
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facegate import config as config_mod  # noqa: E402
from facegate.cli import build_verifier  # noqa: E402
from facegate.imageio import read_image  # noqa: E402
from facegate.vision.embed import cosine  # noqa: E402
from lfw import eer, fold_accuracy, read_pairs, roc, threshold_at_far  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="folder with pairs.txt and images/")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "dynint8", "int8"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", help="config TOML (thresholds and gates)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N pairs of each fold half (smoke runs)")
    ap.add_argument("--out", type=Path, default=Path("out"), help="folder for the ROC plot")
    args = ap.parse_args()

    cfg = config_mod.load(args.config)
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(
        update={"precision": args.precision, "num_threads": args.threads})})
    verifier = build_verifier(cfg)
    from facegate.modelstore import ModelStore

    variant = ModelStore.variant_of(verifier.models["embed"])
    pairs = read_pairs(args.data)
    if args.limit:
        pairs = [p for i, p in enumerate(pairs) if i % 300 < args.limit]
    cache: dict[tuple[Path, bool], object] = {}
    gated: dict[str, int] = {}
    not_found: dict[str, int] = {}

    def face(path: Path, reference: bool):
        key = (path, reference)
        if key not in cache:
            probe = verifier.analyze(read_image(path), reference=reference)
            if probe.face is None:
                not_found[probe.reason] = not_found.get(probe.reason, 0) + 1
            elif probe.reason:
                gated[probe.reason] = gated.get(probe.reason, 0) + 1
            cache[key] = probe.face
        return cache[key]

    scores = np.full(len(pairs), np.nan)
    t0 = time.time()
    for i, p in enumerate(pairs):
        fa, fb = face(p.a, True), face(p.b, False)
        if fa is not None and fb is not None:
            scores[i] = cosine(fa.embedding, fb.embedding)
        if (i + 1) % 100 == 0 or i + 1 == len(pairs):
            rate = (i + 1) / (time.time() - t0)
            print(f"\r  {i + 1}/{len(pairs)} pairs  {rate:.0f} pairs/s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    acc, acc_sd = fold_accuracy(scores, same, folds)
    thr = threshold_at_far(scores, same, 1e-3)
    s0 = np.nan_to_num(scores, nan=-2.0)
    tar = float((s0[same] >= thr).mean())
    far = float((s0[~same] >= thr).mean())
    e = eer(scores, same)
    failed = int(np.isnan(scores).sum())
    cfg_thr = verifier.policy.threshold
    tar_cfg = float((s0[same] >= cfg_thr).mean())
    far_cfg = float((s0[~same] >= cfg_thr).mean())

    print(f"machine: {platform.machine()}  precision: {variant}  threads: {args.threads}  pairs: {len(pairs)}")
    print(f"{'metric':38s} value")
    print(f"{'accuracy (fold protocol)':38s} {acc * 100:.2f} % (sd {acc_sd * 100:.2f})")
    print(f"{'threshold for FAR <= 1e-3 (all pairs)':38s} {thr:.4f}")
    print(f"{'TAR / FAR at that threshold':38s} {tar * 100:.2f} % / {far * 100:.3f} %")
    print(f"{'TAR / FAR at policy threshold ' + format(cfg_thr, '.3f'):38s} {tar_cfg * 100:.2f} % / {far_cfg * 100:.3f} %")
    print(f"{'match policy':38s} {verifier.policy.describe()}")
    print(f"{'EER':38s} {e * 100:.2f} %")
    print(f"{'pairs failed (no face found)':38s} {failed} ({failed / len(pairs) * 100:.2f} %)")
    print(f"{'images without a usable face':38s} {dict(sorted(not_found.items())) or 0}")
    print(f"{'images a kiosk quality gate refuses':38s} {dict(sorted(gated.items())) or 0}")
    print(f"{'genuine score median / impostor max':38s} {np.nanmedian(scores[same]):.3f} / {np.nanmax(scores[~same]):.3f}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        _, fa, ta = roc(scores, same)
        args.out.mkdir(parents=True, exist_ok=True)
        png = args.out / f"lfw_roc_{variant}.png"
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.semilogx(np.maximum(fa, 1e-4), ta, label=f"facegate SFace {variant}")
        ax.axvline(1e-3, color="grey", ls=":", label="FAR 1e-3")
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(f"LFW ({len(pairs)} pairs)")
        ax.set_ylim(0.9, 1.001)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        print(f"ROC plot: {png}")
    except ImportError:
        print("ROC plot: skipped (matplotlib not installed)")
    print(f"lfw: accuracy={acc * 100:.2f} tar@far1e-3={tar * 100:.2f} eer={e * 100:.2f} "
          f"pairs={len(pairs)} failed={failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
