"""SFace face embedding: aligned crop in, L2-normalised 128-d vector out."""
from __future__ import annotations

import numpy as np

from ..ports import Runner
from .tensors import to_input


def normalize(v: np.ndarray) -> np.ndarray:
    """L2-normalise a (D,) float vector; returns float32."""
    v = v.astype(np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two L2-normalised vectors."""
    return float(np.dot(a, b))


class Embedder:
    """`embed(crop)` with crop 112x112x3 uint8 RGB -> (128,) float32, unit length.
    `embed_mirrored(crop)`: the mean of the crop's and its mirror image's embeddings, unit
    length: what the pipeline compares (METHOD; the calibration table names it)."""

    METHOD = "flip"

    def __init__(self, runner: Runner):
        self.runner = runner
        self.spec = runner.inputs[0]

    def embed(self, crop_rgb: np.ndarray) -> np.ndarray:
        x = to_input(crop_rgb[None], self.spec)
        return normalize(self.runner.run(x)[0])

    def embed_mirrored(self, crop_rgb: np.ndarray) -> np.ndarray:
        """(112, 112, 3) uint8 -> (128,) float32 unit: the crop and its left-right mirror
        image embedded and averaged (lowers the false non-match rate at a low false-match
        rate with ID-chip references: docs/measurements.md; one more model run)."""
        a = self.embed(crop_rgb)
        b = self.embed(np.ascontiguousarray(crop_rgb[:, ::-1]))
        return normalize(a + b)
