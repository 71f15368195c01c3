#!/usr/bin/env python3
"""Record the known answers of every model in the manifest (models/kat/expected.json).

Run on the reference machine (x86-64) with every variant installed:

    facegate models fetch --all --from ../shared/models --dir /tmp/kat-models
    .venv/bin/python scripts/record_kat.py --dir /tmp/kat-models

Each model file is run on the known inputs of facegate.kat (models/kat/: face128.png with
its geometry in inputs.json, its mirror image, a generated pattern) and its outputs are
stored under its sha256: a model whose bytes change needs new answers (facegate refuses a
file without them). --inputs first re-makes face128.png from the public-domain Grace
Hopper photograph (facegate.models samples/, the one matplotlib ships) and re-measures its
geometry with the fp32 short-range detector and face mesh (then every answer must be recorded again).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from facegate import __version__, kat, modelstore
from facegate.adapters import litert
from facegate.liveness.challenge import LEFT_EYE, RIGHT_EYE
from facegate.types import Detection
from facegate.vision.align import five_points
from facegate.vision.detect import SHORT_RANGE, FaceDetector
from facegate.vision.mesh import FaceMesh, roi_from_detection

KAT_SRC = Path(__file__).resolve().parents[1] / "models" / "kat"  # the checkout's copy (a dev tool)
IMAGE = "face128.png"
SIZE = 128


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def make_inputs(store: modelstore.ModelStore) -> None:
    """face128.png: the head of the packaged Grace Hopper photograph, 128x128; inputs.json:
    its face box, keypoints, 5 alignment points and eye corners from the fp32 models."""
    from facegate.demo import sample_photo

    photo = sample_photo()
    face = cv2.resize(photo[50:400, 90:440], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    KAT_SRC.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(KAT_SRC / IMAGE), face, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    face = cv2.imread(str(KAT_SRC / IMAGE))
    det = FaceDetector(litert.make_runner(store.path("detect_short", "fp32")[0], 1), SHORT_RANGE).detect(face)[0]
    det = Detection(tuple(round(v, 2) for v in det.box), np.round(det.keypoints, 2), 1.0)
    mesh = FaceMesh(litert.make_runner(store.path("mesh", "fp32")[0], 1)).estimate(face, roi_from_detection(det))
    corners = {str(i): [round(float(mesh.points[i, 0]), 2), round(float(mesh.points[i, 1]), 2)]
               for i in RIGHT_EYE[:2] + LEFT_EYE[:2]}
    meta = {"image": IMAGE,
            "source": "grace_hopper.jpg of facegate.models samples/ (public domain, US Navy photograph, "
                      "as matplotlib ships it), rows 50-400, "
                      "columns 90-440, resized to 128x128 (INTER_AREA)",
            "box": list(det.box), "keypoints": np.round(det.keypoints.astype(np.float64), 2).tolist(),
            "five": np.round(five_points(mesh.points).astype(np.float64), 2).tolist(), "eye_corners": corners}
    (KAT_SRC / "inputs.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {KAT_SRC / IMAGE} ({(KAT_SRC / IMAGE).stat().st_size} bytes) and inputs.json")


def discriminates(task: str, out: dict) -> str | None:
    """None when one constant output cannot pass for every input, else why it could."""
    if task in ("pad_v2", "pad_v1se"):
        real = [p[1] for p in out.values()]
        if max(real) - min(real) <= 2 * kat.TOLERANCES["pad"]["prob"]:
            return f"p(real) of the inputs spread over only {max(real) - min(real):.3f}"
    if task == "embed":
        v = {k: np.float64(e) for k, e in out.items()}
        if float(np.dot(v["face"], v["pattern"])) >= kat.TOLERANCES["embed"]["distinct_max"]:
            return "face and pattern embeddings are not distinct"
    if task in ("detect_short", "detect_full") and (len(out["face"]) != 1 or out["pattern"]):
        return "the face is not found once, or the pattern has a face"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="model directory with every manifest variant installed")
    ap.add_argument("--inputs", action="store_true", help="re-make face128.png and inputs.json first")
    args = ap.parse_args()
    store = modelstore.ModelStore(args.dir)
    if args.inputs:
        make_inputs(store)
    ins = kat.read_inputs(json.loads((KAT_SRC / "inputs.json").read_text()), (KAT_SRC / IMAGE).read_bytes())
    models = {}
    for entry in store.manifest:
        path, entry = store.path(entry.task, entry.variant)  # every variant, optional ones too
        t0 = time.perf_counter()
        out = kat.outputs(entry.task, litert.make_runner(path, 1), ins)
        weak = discriminates(entry.task, out)
        if weak:
            print(f"{entry.file}: {weak}: these inputs would not catch a constant output", file=sys.stderr)
            return 1
        models[entry.sha256] = {"task": entry.task, "variant": entry.variant, "file": entry.file, "outputs": out}
        print(f"{entry.task:12s} {entry.variant:8s} {entry.file:36s} {(time.perf_counter() - t0) * 1000:7.1f} ms")
    doc = {"format": kat.FORMAT,
           "recorded": {"machine": platform.machine(), "runtime": f"{litert.RUNTIME} {_version(litert.RUNTIME)}", "facegate": __version__,
                        "python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__},
           "models": models}
    (KAT_SRC / "expected.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {KAT_SRC / 'expected.json'} ({(KAT_SRC / 'expected.json').stat().st_size} bytes, "
          f"{len(models)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
