#!/usr/bin/env python3
"""What the mirror-averaged embedding costs: median ms of one SFace run against the mirrored
pair (Embedder.embed vs Embedder.embed_mirrored) on real aligned LFW crops, 1 thread, per
embedding variant, measured in one run.

    python scripts/bench_mirror.py --data ../shared/data/lfw [--n 60] [--repeats 5]
Ends with one line: bench_mirror: int8_ms=A int8_mirrored_ms=B fp32_ms=C fp32_mirrored_ms=D
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from facegate import config as config_mod
from facegate.cli import build_verifier
from facegate.imageio import read_image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    paths = sorted((args.data / "images").glob("*/*.jpg"))[: args.n]
    out = {}
    for precision in ("int8", "fp32"):
        cfg = config_mod.Config()
        cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"precision": precision, "lanes": 1})})
        v = build_verifier(cfg)
        crops = [p.face.crop for p in (v.analyze(read_image(x)) for x in paths) if p.face is not None]
        times: dict[str, list[float]] = {"": [], "_mirrored": []}
        for _ in range(args.repeats):  # interleaved, so both see the same machine
            for c in crops:
                for name, fn in (("", v.embedder.embed), ("_mirrored", v.embedder.embed_mirrored)):
                    t0 = time.perf_counter()
                    fn(c)
                    times[name].append((time.perf_counter() - t0) * 1000)
        for name, ts in times.items():
            out[f"{precision}{name}_ms"] = statistics.median(ts)
    print("bench_mirror: " + " ".join(f"{k}={v:.2f}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
