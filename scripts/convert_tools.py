"""convert_models: the PRelu rewrite, onnx2tf, full-int8 quantization, measurement in the
runtime venv and the accuracy helpers (see convert_models.py)."""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CONVERT_SCRIPT = Path(__file__).resolve().parent / "convert_models.py"  # its children run through it


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
    cmd = [sys.executable, str(CONVERT_SCRIPT), "_onnx2tf", str(onnx_path), str(out_dir),
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
    subprocess.run([py, str(CONVERT_SCRIPT), "_measure", str(sp)], check=True)
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
