"""The TFLite runtime adapter: the only module that imports ai-edge-litert (or
tflite_runtime when only that is installed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..ports import DelegateReport, TensorSpec
from ..quiet import quiet_stderr

try:  # pragma: no cover - which one is present depends on the machine
    from ai_edge_litert.interpreter import Interpreter as _Interpreter

    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover
    try:
        from tflite_runtime.interpreter import Interpreter as _Interpreter

        RUNTIME = "tflite-runtime"
    except ImportError:
        _Interpreter = None
        RUNTIME = "none"


def _spec(d: dict) -> TensorSpec:
    scale, zero = d["quantization"]
    return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]), float(scale), int(zero))


class LiteRTRunner:
    """Runs one .tflite file with the XNNPACK delegate (on by default in the runtime)."""

    def __init__(self, path: str | Path, num_threads: int = 1):
        if _Interpreter is None:
            raise ModelError("no TFLite runtime installed (pip install ai-edge-litert)")
        self.path = Path(path)
        try:
            with quiet_stderr():
                self._it = _Interpreter(model_path=str(self.path), num_threads=int(num_threads))
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load model {self.path.name}: {exc}") from None
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()
        self.inputs = [_spec(d) for d in self._in]
        self.outputs = [_spec(d) for d in self._out]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        for d, a in zip(self._in, arrays):
            self._it.set_tensor(d["index"], a)
        self._it.invoke()
        return [self._it.get_tensor(d["index"]) for d in self._out]

    def delegate_report(self) -> DelegateReport:
        """Walk the executed graph back from its outputs: a tensor made by a DELEGATE
        node counts for the delegate; an original node reached otherwise runs on the
        plain CPU kernels."""
        ops = self._it._get_ops_details()
        producer: dict[int, dict] = {}
        for op in ops:  # original nodes first, delegate nodes after: delegates win
            for t in op["outputs"]:
                producer[int(t)] = op
        originals = [op for op in ops if op["op_name"] != "DELEGATE"]
        partitions = len(ops) - len(originals)
        seen: set[int] = set()
        cpu_nodes: set[int] = set()
        stack = [int(d["index"]) for d in self._out]
        while stack:
            t = stack.pop()
            if t in seen or t not in producer:
                continue
            seen.add(t)
            op = producer[t]
            if op["op_name"] != "DELEGATE":
                cpu_nodes.add(int(op["index"]))
            stack.extend(int(i) for i in op["inputs"] if i >= 0)
        return DelegateReport(len(originals), len(originals) - len(cpu_nodes), partitions)


def make_runner(path: str | Path, num_threads: int) -> LiteRTRunner:
    """The RunnerFactory used everywhere outside tests."""
    return LiteRTRunner(path, num_threads)
