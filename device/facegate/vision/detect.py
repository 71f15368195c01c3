"""BlazeFace face detection (MediaPipe short- and full-range models).

Pre-processing letterboxes the frame into the model's square input; post-processing
decodes the SSD anchors and merges overlapping boxes with MediaPipe's weighted NMS.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..ports import Runner
from ..types import Detection


@dataclass(frozen=True)
class DetectorSpec:
    """Anchor layout of one BlazeFace variant (MediaPipe SsdAnchorsCalculator options)."""

    input_px: int
    strides: tuple[int, ...]
    anchors_per_layer: int  # 2 with interpolated scale (short range), 1 without


SHORT_RANGE = DetectorSpec(128, (8, 16, 16, 16), 2)
FULL_RANGE = DetectorSpec(192, (4,), 1)


def make_anchors(spec: DetectorSpec) -> np.ndarray:
    """Anchor centres, Nx2 float32 in [0, 1] of the model input (fixed anchor size 1)."""
    out = []
    i = 0
    strides = spec.strides
    while i < len(strides):
        j = i
        per_cell = 0
        while j < len(strides) and strides[j] == strides[i]:
            per_cell += spec.anchors_per_layer
            j += 1
        cells = int(np.ceil(spec.input_px / strides[i]))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], -1).reshape(-1, 2)
        out.append(np.repeat(centres, per_cell, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit a HxWx3 uint8 BGR image into size x size (centred, black padding).

    Returns (tensor 1xSxSx3 float32 RGB in [-1, 1], m: 2x3 float64 frame->input map)."""
    h, w = image_bgr.shape[:2]
    s = size / max(h, w)
    m = np.array([[s, 0.0, (size - w * s) / 2], [0.0, s, (size - h * s) / 2]])
    sq = cv2.warpAffine(image_bgr, m, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    x = cv2.cvtColor(sq, cv2.COLOR_BGR2RGB).astype(np.float32)
    x *= 1.0 / 127.5
    x -= 1.0
    return x[None], m


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, input_px: int,
           min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode raw outputs (Nx16 float32, Nx1 float32) into boxes Kx4 (x0, y0, x1, y1),
    keypoints Kx6x2 and scores K, all in model-input pixels, for scores >= min_score."""
    raw = np.clip(logits.reshape(-1), -100.0, 100.0)
    keep = raw >= np.log(min_score / (1.0 - min_score))
    if not keep.any():
        return np.zeros((0, 4), np.float32), np.zeros((0, 6, 2), np.float32), np.zeros(0, np.float32)
    reg = regressors.reshape(-1, 16)[keep]
    anc = anchors[keep] * input_px
    scores = 1.0 / (1.0 + np.exp(-raw[keep]))
    cx, cy = reg[:, 0] + anc[:, 0], reg[:, 1] + anc[:, 1]
    w, h = reg[:, 2], reg[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    kps = reg[:, 4:16].reshape(-1, 6, 2) + anc[:, None, :]
    return boxes.astype(np.float32), kps.astype(np.float32), scores.astype(np.float32)


def weighted_nms(boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = 0.3) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: each cluster of boxes overlapping
    the best one by more than iou_threshold is replaced by its score-weighted mean."""
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    remaining = np.arange(len(scores))
    out = []
    while len(remaining):
        b = boxes[remaining]
        top = b[0]
        ix = np.clip(np.minimum(b[:, 2], top[2]) - np.maximum(b[:, 0], top[0]), 0, None)
        iy = np.clip(np.minimum(b[:, 3], top[3]) - np.maximum(b[:, 1], top[1]), 0, None)
        inter = ix * iy
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        ious = inter / np.maximum(area + area[0] - inter, 1e-9)
        ious[0] = 1.0  # the best box is in its own cluster, even one of no or negative size
        cluster = remaining[ious > iou_threshold]
        wts = scores[cluster][:, None]
        box = (boxes[cluster] * wts).sum(0) / wts.sum()
        kp = (kps[cluster] * wts[:, :, None]).sum(0) / wts.sum()
        out.append((box, kp, float(scores[cluster[0]])))
        remaining = remaining[ious <= iou_threshold]
    return out


class FaceDetector:
    """A BlazeFace model: `detect(image)` -> list of Detection in frame pixels, best first."""

    def __init__(self, runner: Runner, spec: DetectorSpec, min_score: float = 0.5):
        self.runner = runner
        self.spec = spec
        self.min_score = min_score
        self.anchors = make_anchors(spec)
        n_out = runner.outputs[0].shape[1]
        if n_out != len(self.anchors):
            raise ValueError(f"model has {n_out} anchors, spec {len(self.anchors)}")
        # outputs may come in either order: the 16-wide one holds the regressors
        self._reg_idx = 0 if runner.outputs[0].shape[-1] == 16 else 1

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """image_bgr: HxWx3 uint8. Returns detections sorted by score, frame pixels."""
        x, m = letterbox(image_bgr, self.spec.input_px)
        outs = self.runner.run(x)
        reg, logit = outs[self._reg_idx], outs[1 - self._reg_idx]
        boxes, kps, scores = decode(reg[0], logit[0], self.anchors, self.spec.input_px, self.min_score)
        inv_s = 1.0 / m[0, 0]
        off = m[:, 2]
        dets = []
        for box, kp, score in weighted_nms(boxes, kps, scores):
            b = (box.reshape(2, 2) - off) * inv_s
            k = ((kp - off) * inv_s).astype(np.float32)
            dets.append(Detection((float(b[0, 0]), float(b[0, 1]), float(b[1, 0]), float(b[1, 1])), k, score))
        return dets
