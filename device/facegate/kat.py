"""Known-answer self-tests: every model proves itself on the CPU it runs on, at load.

As a crypto module tests its algorithms at power-on, each model file is run on a few small
fixed inputs shipped in the package (`facegate.models` kat/: a 128x128 crop of the
public-domain Grace Hopper photograph that matplotlib ships, its mirror image and a
generated pattern; nothing from a data set) and its outputs are compared with the answers
recorded from the same file on the reference machine (x86-64, scripts/record_kat.py),
kept in kat/expected.json keyed by the file's sha256: a new model needs new answers.

A variant whose answers differ beyond TOLERANCES is refused with a one-line reason, and
`precision = "auto"` takes the fastest variant (modelstore.AUTO_PREFERENCE) that passes
here. Why: under qemu's `max` core (SVE/SME) the int8 SFace returned the same vector for
every face, so every pair of people "matched" (issue 12). A model that computes wrong
numbers here must never reach a decision.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import cv2
import numpy as np

from .errors import ModelError
from .liveness.challenge import LEFT_EYE, RIGHT_EYE, eye_crop
from .liveness.passive import V1SE_SCALE, V2_SCALE
from .modelstore import Choice, ModelEntry, ModelStore, resource
from .ports import DelegateReport, Runner, TensorSpec
from .types import Detection
from .vision.align import CROP_PX, align
from .vision.detect import FULL_RANGE, SHORT_RANGE, FaceDetector
from .vision.embed import Embedder
from .vision.mesh import FaceMesh, roi_from_detection
from .vision.pad import INPUT_PX as PAD_PX
from .vision.pad import crop_for_pad
from .vision.tensors import to_input

KAT_DIR = "kat"
FORMAT = 1

# Tolerances per kind of model, and why. The answers are recorded per file on x86-64; a
# CPU that runs the same file differs only by rounding (other SIMD kernels, fused
# multiply-add, int8 requantisation), which moves an output less than noise of +-1 grey
# level on the input image does. That noise, measured here (4 seeds), moved: detector
# boxes IoU >= 0.99 and keypoints <= 0.2 px; mesh landmarks <= 0.04 px; iris points
# <= 0.13 px; embeddings to cosine >= 0.9997 (fp32), >= 0.989 (int8); PAD class
# probabilities <= 0.034 (fp32), <= 0.17 (int8). The bounds below leave room for that and
# are still far too tight for a broken kernel, a constant, random numbers or NaN.
TOLERANCES = {
    # detectors (fp32): the same number of faces in each input (one in the face and its
    # mirror image, none in the pattern), each box at IoU >= 0.9 with its answer, keypoints
    # within 2 px and scores within 0.05 (128 px image, the face ~75 px wide).
    "detect": {"iou_min": 0.9, "keypoint_px": 2.0, "score": 0.05},
    # face mesh (fp32): 468 landmarks within 1 px on average and 3 px at worst (128 px
    # image); face presence within 0.05.
    "mesh": {"mean_px": 1.0, "max_px": 3.0, "presence": 0.05},
    # iris / eye contour (fp32): 71 contour + 5 iris points within 1 px on average and 3 px
    # at worst, in the model's 64 px eye crop (both eyes and the pattern).
    "iris": {"mean_px": 1.0, "max_px": 3.0},
    # embedding: each vector within cosine 0.95 of its answer; the cosine of every pair of
    # inputs within 0.1 of the answer's; and inputs that are distinct (face vs pattern,
    # known cosine < 0.5) stay below 0.5: the qemu `max` failure gave every input the same
    # vector (cosine 1.0 for every pair). The mirror image is the same person (0.97).
    "embed": {"cosine_min": 0.95, "pair_delta": 0.1, "distinct_max": 0.5},
    # passive liveness (MiniFASNet): the three class probabilities (p(real) is class 1)
    # within 0.3 of the answer's. The inputs' known p(real) spread over >= 0.63 in every
    # variant (record_kat.py checks > 2 x 0.3), so no constant output passes for all.
    "pad": {"prob": 0.3},
}


class KatFailure(Exception):
    """A model gave answers that differ from its known answers (message: one line)."""


@dataclass(frozen=True)
class KatResult:
    """One model's self-test on this CPU: ok, what was found in words, how long it took."""

    task: str
    variant: str
    sha256: str
    ok: bool
    detail: str
    ms: float


# -- the inputs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KatInputs:
    """The shipped image (HxWx3 uint8 BGR) with the geometry recorded on it from the
    reference run, in its pixels: face box (x0, y0, x1, y1) and 6 keypoints, the 5
    alignment points (eyes, nose tip, mouth corners) and the 4 eye corners of the mesh."""

    face: np.ndarray
    box: tuple[float, float, float, float]
    keypoints: np.ndarray  # 6x2 float32
    five: np.ndarray  # 5x2 float32
    eye_corners: dict  # mesh index -> (x, y)

    @property
    def width(self) -> int:
        return self.face.shape[1]

    def flipped(self) -> KatInputs:
        """The mirror image with its geometry mirrored (x -> W - 1 - x), left and right
        points swapped so that every list keeps its order (subject's right first)."""
        w1 = self.width - 1
        x0, y0, x1, y1 = self.box
        kp = self.keypoints.copy()
        kp[:, 0] = w1 - kp[:, 0]
        kp = kp[[1, 0, 2, 3, 5, 4]]  # eyes, nose, mouth, ear tragions (right, left)
        five = self.five.copy()
        five[:, 0] = w1 - five[:, 0]
        five = five[[1, 0, 2, 4, 3]]
        mirror = dict(zip(RIGHT_EYE[:2] + LEFT_EYE[:2], LEFT_EYE[:2] + RIGHT_EYE[:2]))
        corners = {mirror[i]: (w1 - x, y) for i, (x, y) in self.eye_corners.items()}
        return KatInputs(np.ascontiguousarray(self.face[:, ::-1]), (w1 - x1, y0, w1 - x0, y1),
                         kp.astype(np.float32), five.astype(np.float32), corners)


def pattern(h: int, w: int) -> np.ndarray:
    """A generated HxWx3 uint8 image with no face: horizontal and vertical ramps and an
    8 px checkerboard, one per channel (integer arithmetic: the same bytes everywhere)."""
    y, x = np.mgrid[0:h, 0:w]
    b = x * 255 // max(w - 1, 1)
    g = y * 255 // max(h - 1, 1)
    r = ((x // 8 + y // 8) % 2) * 200 + 28
    return np.stack([b, g, r], -1).astype(np.uint8)


def read_inputs(meta: dict, image_bytes: bytes) -> KatInputs:
    face = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
    if face is None:
        raise ModelError("the known-answer image in the package cannot be decoded")
    return KatInputs(face, cast("tuple[float, float, float, float]", tuple(float(v) for v in meta["box"])), np.asarray(meta["keypoints"], np.float32),
                     np.asarray(meta["five"], np.float32), {int(k): tuple(v) for k, v in meta["eye_corners"].items()})


@lru_cache(maxsize=1)
def shipped() -> tuple[KatInputs, dict]:
    """(inputs, expected answers by sha256) from the package data (read once)."""
    try:
        meta = json.loads(resource(f"{KAT_DIR}/inputs.json").read_text())
        image = resource(f"{KAT_DIR}/{meta['image']}").read_bytes()
        expected = json.loads(resource(f"{KAT_DIR}/expected.json").read_text())
    except (OSError, ModuleNotFoundError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the known-answer data of facegate.models/{KAT_DIR}: {exc}") from None
    if expected.get("format") != FORMAT:
        raise ModelError(f"facegate.models/{KAT_DIR}/expected.json has format {expected.get('format')}, "
                         f"this facegate reads {FORMAT}")
    return read_inputs(meta, image), expected["models"]


# -- running a model on them --------------------------------------------------------------
class _Finite:
    """A runner whose every output must be finite (NaN / inf fail at once)."""

    def __init__(self, runner: Runner):
        self.runner, self.inputs, self.outputs = runner, runner.inputs, runner.outputs

    def delegate_report(self) -> DelegateReport:
        return self.runner.delegate_report()

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        outs = self.runner.run(*arrays)
        for o in outs:
            if not np.all(np.isfinite(np.asarray(o, np.float64))):
                raise KatFailure("non-finite outputs (NaN or inf)")
        return outs


def _r(a, nd: int = 3) -> list:
    return np.round(np.asarray(a, np.float64), nd).tolist()


def _detect(runner: Runner, task: str, ins: KatInputs) -> dict:
    det = FaceDetector(runner, SHORT_RANGE if task == "detect_short" else FULL_RANGE)
    images = {"face": ins.face, "face_flip": ins.flipped().face, "pattern": pattern(*ins.face.shape[:2])}
    return {name: [{"box": _r(d.box), "keypoints": _r(d.keypoints), "score": round(d.score, 4)}
                   for d in det.detect(img)] for name, img in images.items()}


def _roi(ins: KatInputs):
    return roi_from_detection(Detection(ins.box, ins.keypoints, 1.0))


def _mesh(runner: Runner, ins: KatInputs) -> dict:
    mesh = FaceMesh(runner)
    out = {}
    for name, i in (("face", ins), ("face_flip", ins.flipped())):
        m = mesh.estimate(i.face, _roi(i))
        out[name] = {"points": _r(m.points[:, :2], 2), "presence": round(m.presence, 4)}
    return out


def _eye_points(ins: KatInputs) -> np.ndarray:
    pts = np.zeros((468, 3), np.float32)
    for i, xy in ins.eye_corners.items():
        pts[i, :2] = xy
    return pts


def _iris(runner: Runner, ins: KatInputs) -> dict:
    by_size = {int(np.prod(o.shape)): k for k, o in enumerate(runner.outputs)}
    pts = _eye_points(ins)
    crops = {"right_eye": eye_crop(ins.face, pts, True), "left_eye": eye_crop(ins.face, pts, False),
             "pattern": (pattern(64, 64)[None].astype(np.float32) / 255.0)[..., ::-1].copy()}
    out = {}
    for name, x in crops.items():
        o = runner.run(x)
        contour = np.asarray(o[by_size[213]], np.float64).reshape(71, 3)[:, :2]
        iris = np.asarray(o[by_size[15]], np.float64).reshape(5, 3)[:, :2]
        out[name] = {"points": _r(np.vstack([contour, iris]), 2)}
    return out


def embed_crops(ins: KatInputs) -> dict[str, np.ndarray]:
    """The aligned 112x112 RGB crops the embedding model is tested on: the face, its
    mirror image, the face misaligned by (6, 4) px, and the generated pattern."""
    flip = ins.flipped()
    return {"face": align(ins.face, ins.five), "face_flip": align(flip.face, flip.five),
            "face_shifted": align(ins.face, ins.five + np.asarray([6, 4], np.float32)),
            "pattern": pattern(CROP_PX, CROP_PX)}


def _embed(runner: Runner, ins: KatInputs) -> dict:
    emb = Embedder(runner)
    return {name: _r(emb.embed(crop), 5) for name, crop in embed_crops(ins).items()}


def _pad(runner: Runner, task: str, ins: KatInputs) -> dict:
    scale = V2_SCALE if task == "pad_v2" else V1SE_SCALE
    spec: TensorSpec = runner.inputs[0]
    flip = ins.flipped()
    crops = {"face": crop_for_pad(ins.face, ins.box, scale), "face_flip": crop_for_pad(flip.face, flip.box, scale),
             "face_dark": crop_for_pad(ins.face // 3, ins.box, scale), "pattern": pattern(PAD_PX, PAD_PX)}
    out = {}
    for name, crop in crops.items():
        z = np.asarray(runner.run(to_input(crop[None], spec))[0], np.float64).reshape(-1)
        e = np.exp(z - z.max())
        out[name] = _r(e / e.sum(), 4)
    return out


def outputs(task: str, runner: Runner, ins: KatInputs) -> dict:
    """The model's answers on the known inputs (JSON-able; what record_kat.py stores).
    Raises KatFailure for non-finite outputs."""
    r = _Finite(runner)
    if task in ("detect_short", "detect_full"):
        return _detect(r, task, ins)
    if task == "mesh":
        return _mesh(r, ins)
    if task == "iris":
        return _iris(r, ins)
    if task == "embed":
        return _embed(r, ins)
    if task in ("pad_v2", "pad_v1se"):
        return _pad(r, task, ins)
    raise ModelError(f"no known-answer test for task {task!r}")


# -- comparing with the answers -----------------------------------------------------------
def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _cmp_detect(got: dict, exp: dict) -> str:
    tol = TOLERANCES["detect"]
    worst_iou, worst_kp = 1.0, 0.0
    for name, want in exp.items():
        have = got[name]
        if len(have) != len(want):
            raise KatFailure(f"{len(have)} face(s) found in {name}, expected {len(want)}")
        for w in want:
            h = max(have, key=lambda d: _iou(d["box"], w["box"]))
            iou = _iou(h["box"], w["box"])
            kp = float(np.abs(np.float64(h["keypoints"]) - np.float64(w["keypoints"])).max())
            if not iou >= tol["iou_min"]:  # written so that NaN fails
                raise KatFailure(f"{name}: box IoU {iou:.3f} with the expected box (< {tol['iou_min']})")
            if not kp <= tol["keypoint_px"]:
                raise KatFailure(f"{name}: keypoints {kp:.1f} px off (> {tol['keypoint_px']})")
            if not abs(h["score"] - w["score"]) <= tol["score"]:
                raise KatFailure(f"{name}: score {h['score']:.3f}, expected {w['score']:.3f}")
            worst_iou, worst_kp = min(worst_iou, iou), max(worst_kp, kp)
    return f"boxes IoU >= {worst_iou:.3f}, keypoints within {worst_kp:.2f} px"


def _cmp_points(kind: str, got: dict, exp: dict) -> str:
    tol = TOLERANCES[kind]
    worst_mean = worst_max = 0.0
    for name, want in exp.items():
        d = np.linalg.norm(np.float64(got[name]["points"]) - np.float64(want["points"]), axis=-1)
        mean, mx = float(d.mean()), float(d.max())
        if not (mean <= tol["mean_px"] and mx <= tol["max_px"]):
            raise KatFailure(f"{name}: landmarks {mean:.2f} px off on average, {mx:.2f} px at worst "
                             f"(> {tol['mean_px']} / {tol['max_px']})")
        if "presence" in want and not abs(got[name]["presence"] - want["presence"]) <= tol["presence"]:
            raise KatFailure(f"{name}: face presence {got[name]['presence']:.3f}, expected {want['presence']:.3f}")
        worst_mean, worst_max = max(worst_mean, mean), max(worst_max, mx)
    return f"landmarks within {worst_mean:.3f} px on average, {worst_max:.3f} px at worst"


def _cmp_embed(got: dict, exp: dict) -> str:
    tol = TOLERANCES["embed"]
    names = list(exp)
    g = {n: np.float64(got[n]) for n in names}
    e = {n: np.float64(exp[n]) for n in names}
    pairs = [(a, b, float(np.dot(g[a], g[b])), float(np.dot(e[a], e[b])))
             for i, a in enumerate(names) for b in names[i + 1:]]
    for a, b, cg, ce in pairs:  # first: the failure that turns strangers into a match
        if ce < tol["distinct_max"] and not cg < tol["distinct_max"]:
            raise KatFailure(f"distinct inputs collapse: {a} and {b} at cosine {cg:.3f} "
                             f"(known {ce:.3f}, must stay < {tol['distinct_max']})")
    worst = 1.0
    for n in names:
        c = float(np.dot(g[n], e[n]) / max(np.linalg.norm(g[n]) * np.linalg.norm(e[n]), 1e-12))
        if not c >= tol["cosine_min"]:
            raise KatFailure(f"{n}: embedding at cosine {c:.3f} from its known answer (< {tol['cosine_min']})")
        worst = min(worst, c)
    for a, b, cg, ce in pairs:
        if not abs(cg - ce) <= tol["pair_delta"]:
            raise KatFailure(f"{a} vs {b}: cosine {cg:.3f}, expected {ce:.3f}")
    return f"{len(names)} embeddings at cosine >= {worst:.4f} to their answers, pairs as expected"


def _cmp_pad(got: dict, exp: dict) -> str:
    tol = TOLERANCES["pad"]["prob"]
    have, want = [float(got[n][1]) for n in exp], [float(exp[n][1]) for n in exp]
    if max(want) - min(want) > 2 * tol and not max(have) - min(have) > tol / 3:  # first: the qemu `max` failure
        raise KatFailure(f"outputs barely depend on the input: p(real) {min(have):.3f}-{max(have):.3f} over "
                         f"inputs known as {min(want):.3f}-{max(want):.3f}")
    worst = 0.0
    for name, want in exp.items():
        d = float(np.abs(np.float64(got[name]) - np.float64(want)).max())
        if not d <= tol:
            raise KatFailure(f"{name}: p(real) {got[name][1]:.3f}, expected {want[1]:.3f} (class probabilities "
                             f"{d:.3f} apart > {tol})")
        worst = max(worst, d)
    return f"{len(exp)} inputs' class probabilities within {worst:.4f}"


def compare(task: str, got: dict, expected: dict) -> str:
    """What matched (one line); raises KatFailure with the first difference."""
    if task in ("detect_short", "detect_full"):
        return _cmp_detect(got, expected)
    if task in ("mesh", "iris"):
        return _cmp_points(task, got, expected)
    if task == "embed":
        return _cmp_embed(got, expected)
    return _cmp_pad(got, expected)


def check(task: str, runner: Runner, entry: ModelEntry) -> KatResult:
    """Run one loaded model on the known inputs and compare with its recorded answers."""
    t0 = time.perf_counter()
    ins, answers = shipped()
    want = answers.get(entry.sha256)
    try:
        if want is None:
            raise KatFailure(f"no known answers recorded for {entry.file} (sha256 {entry.sha256[:12]}...)")
        detail = compare(task, outputs(task, runner, ins), want["outputs"])
        ok = True
    except KatFailure as exc:
        ok, detail = False, str(exc)
    except (ValueError, IndexError, KeyError, RuntimeError) as exc:  # outputs of the wrong shape
        ok, detail = False, f"outputs unusable: {type(exc).__name__}: {exc}"
    return KatResult(task, entry.variant, entry.sha256, ok, detail, round((time.perf_counter() - t0) * 1000, 1))


# -- loading: the fastest variant that passes here ----------------------------------------
def load(store: ModelStore, task: str, precision: str, make_runner, num_threads: int) -> tuple[Runner, Choice]:
    """A runner of the model for (task, precision) that passed its known-answer test on this
    CPU: precision "auto" tries the installed variants fastest first and takes the first
    that passes; an explicit precision is that variant or nothing. Returns the runner and
    the choice (which file, and why); the store keeps only its self-test results. Raises
    ModelError naming every variant's reason."""
    refused = []
    for entry in store.candidates(task, precision):
        path, entry = store.path(task, entry.variant)  # sha256 checked: a changed file is an error
        key = (entry.sha256, num_threads)
        known: KatResult | None = store.self_tests.get(key)
        if known is not None and not known.ok:
            refused.append(f"{entry.variant} refused: {known.detail}")
            continue
        try:
            runner = make_runner(path, num_threads)
        except ModelError as exc:
            refused.append(f"{entry.variant}: {exc}")
            continue
        if known is None:
            known = store.self_tests[key] = check(task, runner, entry)
        if known.ok:
            how = "auto: the fastest installed variant that passes here" if precision == "auto" else "as configured"
            if refused:
                how += f" ({'; '.join(refused)})"
            return runner, Choice(task, precision, entry, known.ms,
                                  f"{entry.variant} {entry.file}, {how}; known answers: {known.detail}",
                                  tuple(refused))
        refused.append(f"{entry.variant} refused: {known.detail}")
    if not refused:
        raise ModelError(f"no {task} model installed in {store.model_dir}: run `facegate models fetch`")
    raise ModelError(f"no {task} model passes its known-answer self-test on this CPU "
                     f"(precision {precision}): {'; '.join(refused)}")
