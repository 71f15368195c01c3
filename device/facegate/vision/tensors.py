"""Casting pre-processed arrays to a model's input type (pure)."""
from __future__ import annotations

import numpy as np

from ..ports import TensorSpec


def to_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Cast a float-valued array (already in the model's real-valued range) to the input
    tensor's dtype, quantizing with its scale / zero point when it has one."""
    if spec.dtype == np.float32:
        return x.astype(np.float32, copy=False)
    info = np.iinfo(spec.dtype)
    if spec.scale == 1.0:
        q = x.astype(np.int32) + spec.zero_point
    else:
        q = np.round(x.astype(np.float32) / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)
