"""Which CPU features and which kernels make a model compute wrong numbers on an (emulated)
arm64 core? Evidence for docs/arm64.md; run with the facegate venv's python.

  python arm64_probe.py features
      the CPU features this process sees (getauxval AT_HWCAP / AT_HWCAP2), as XNNPACK's
      cpuinfo reads them: asimddp (dotprod), i8mm, sve, sve2, sme, sme2, ...
  python arm64_probe.py record MODEL OUT.npz
      run MODEL on fixed inputs, with the XNNPACK delegate (the runtime's default) and with
      the builtin kernels only; save the outputs and every intermediate tensor of the
      builtin run (experimental_preserve_all_tensors)
  python arm64_probe.py compare MODEL REF.npz
      the same here, compared with REF.npz (recorded on x86-64): per runtime path, the
      cosine of each output to the reference's and between distinct inputs; for the
      builtin path, the first operator whose output leaves the reference by more than a
      few quantisation steps.

Run under qemu-user with QEMU_CPU=cortex-a76, max, max,sme=off, ... (the variable is read
by qemu for every process it starts).
"""
from __future__ import annotations

import ctypes
import sys

import numpy as np

HWCAP = {  # linux arch/arm64/include/uapi/asm/hwcap.h
    "asimddp": (1, 20), "sve": (1, 22),
    "sve2": (2, 1), "svei8mm": (2, 9), "i8mm": (2, 13), "bf16": (2, 14), "sme": (2, 23),
    "sme_i16i64": (2, 24), "sme_f64f64": (2, 25), "sme_i8i32": (2, 26), "sme_f16f32": (2, 27),
    "sme_b16f32": (2, 28), "sme_f32f32": (2, 29), "sme_fa64": (2, 30), "sme2": (2, 37),
}
AT_HWCAP, AT_HWCAP2 = 16, 26


def features() -> list[str]:
    import platform

    if platform.machine() != "aarch64":
        return [f"({platform.machine()}: no arm64 hwcaps)"]
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    words = {1: libc.getauxval(AT_HWCAP), 2: libc.getauxval(AT_HWCAP2)}
    return [name for name, (w, bit) in HWCAP.items() if words[w] >> bit & 1]


def interpreter(model: str, builtin: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"experimental_preserve_all_tensors": True,
          "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if builtin else {}
    it = Interpreter(model_path=model, num_threads=1, **kw)
    it.allocate_tensors()
    return it


def inputs(it) -> list[np.ndarray]:
    """Three distinct inputs: two seeded noise images and a smooth gradient."""
    d = it.get_input_details()[0]
    shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
    rng = np.random.default_rng(12)
    if dtype == np.int8:
        lo, hi = -128, 127
    elif dtype == np.uint8:
        lo, hi = 0, 255
    else:
        lo, hi = -1.0, 1.0
    noise = [rng.uniform(lo, hi, shape) for _ in range(2)]
    ramp = np.broadcast_to(np.linspace(lo, hi, shape[2])[None, None, :, None], shape)
    return [x.astype(dtype) for x in (*noise, ramp)]


def run(it, x: np.ndarray, tensors: bool) -> tuple[np.ndarray, dict]:
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    out = it.get_tensor(it.get_output_details()[0]["index"]).astype(np.float64).ravel()
    inter = {}
    if tensors:
        for op in it._get_ops_details():
            for t in op["outputs"]:
                try:
                    inter[int(t)] = it.get_tensor(int(t)).copy()
                except ValueError:
                    pass
    return out, inter


def outputs(model: str) -> dict:
    res = {}
    for path in ("xnnpack", "builtin"):
        it = interpreter(model, path == "builtin")
        for i, x in enumerate(inputs(it)):
            out, inter = run(it, x, path == "builtin" and i == 0)
            res[f"{path}/out{i}"] = out
            for t, v in inter.items():
                res[f"{path}/t{t}"] = v
    return res


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def compare(model: str, ref_path: str) -> None:
    ref = np.load(ref_path)
    got = outputs(model)
    print(f"features: {' '.join(features()) or '-'}")
    for path in ("xnnpack", "builtin"):
        o = [got[f"{path}/out{i}"] for i in range(3)]
        to_ref = [cos(o[i], ref[f"{path}/out{i}"]) for i in range(3)]
        between = [cos(o[0], o[1]), cos(o[0], o[2]), cos(o[1], o[2])]
        ref_between = [cos(ref[f"{path}/out{a}"], ref[f"{path}/out{b}"]) for a, b in ((0, 1), (0, 2), (1, 2))]
        print(f"{path:8s} cosine to x86 per input {' '.join(f'{c:.4f}' for c in to_ref)}; "
              f"between inputs {' '.join(f'{c:.4f}' for c in between)} "
              f"(x86 {' '.join(f'{c:.4f}' for c in ref_between)})")
    it = interpreter(model, builtin=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    for op in it._get_ops_details():
        for t in op["outputs"]:
            key = f"builtin/t{int(t)}"
            if key not in ref or key not in got:
                continue
            kind = got[key].dtype.kind
            a, b = ref[key].astype(np.float64), got[key].astype(np.float64)
            diff = np.abs(a - b).max()  # int8 tensors: in quantisation steps
            if (kind in "iu" and diff > 3) or (kind == "f" and diff > 1e-3 * (np.abs(a).max() + 1)):
                print(f"builtin: first diverging op #{op['index']} {op['op_name']} -> tensor {int(t)} "
                      f"{details[int(t)]['name']!r}: max |diff| {diff:.4g}")
                return
    print("builtin: every intermediate tensor within 3 quantisation steps (or 1e-3 relative) of x86")


def main(argv: list[str]) -> int:
    if argv[:1] == ["features"]:
        print(" ".join(features()) or "-")
    elif argv[:1] == ["record"] and len(argv) == 3:
        np.savez_compressed(argv[2], **outputs(argv[1]))
    elif argv[:1] == ["compare"] and len(argv) == 3:
        compare(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
