"""Reading an LFW-style folder (pairs.txt + images/) and scoring verification (shared by
the evaluation and benchmark scripts)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pair:
    fold: int
    same: bool
    a: Path
    b: Path


def read_pairs(root: Path) -> list[Pair]:
    """pairs.txt in the official View 2 format: a header `folds n`, then per fold n
    same-person lines `Name i j` and n different-person lines `Name i Other j`."""
    lines = (root / "pairs.txt").read_text().split("\n")
    folds, n = (int(x) for x in lines[0].split())
    img = lambda name, i: root / "images" / name / f"{name}_{int(i):04d}.jpg"  # noqa: E731
    out = []
    rows = [ln.split() for ln in lines[1:] if ln.strip()]
    for k, parts in enumerate(rows):
        fold = k // (2 * n)
        if len(parts) == 3:
            out.append(Pair(fold, True, img(parts[0], parts[1]), img(parts[0], parts[2])))
        elif len(parts) == 4:
            out.append(Pair(fold, False, img(parts[0], parts[1]), img(parts[2], parts[3])))
    assert len(out) == folds * 2 * n, f"pairs.txt: {len(out)} pairs, header says {folds * 2 * n}"
    return out


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold that maximises accuracy on (scores, same); NaN scores count as errors."""
    s = scores[~np.isnan(scores)]
    cands = np.unique(np.concatenate([s, s + 1e-6]))
    best, best_acc = 0.0, -1.0
    for t in cands:
        acc = np.mean(np.where(np.isnan(scores), False, (scores >= t) == same))
        if acc > best_acc:
            best, best_acc = float(t), acc
    return best


def fold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """Standard protocol: each fold judged with the threshold chosen on the others.
    Returns (mean accuracy, std). A NaN score (no face found) is always an error."""
    accs = []
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        t = best_threshold(scores[train], same[train])
        ok = np.where(np.isnan(scores[test]), False, (scores[test] >= t) == same[test])
        accs.append(ok.mean())
    return float(np.mean(accs)), float(np.std(accs))


def threshold_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """Lowest threshold whose false accept rate over impostor pairs is <= far (a NaN
    impostor score is a rejection)."""
    imp = np.sort(np.nan_to_num(scores[~same], nan=-2.0))[::-1]
    k = int(np.floor(far * len(imp)))  # impostors allowed at or above the threshold
    return float(np.nextafter(imp[k], 2.0)) if k < len(imp) else -1.0


def roc(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FAR, TAR) over every distinct score; NaN counts as rejected."""
    s = np.nan_to_num(scores, nan=-2.0)
    ts = np.unique(s)[::-1]
    gen, imp = s[same], s[~same]
    far = np.array([(imp >= t).mean() for t in ts])
    tar = np.array([(gen >= t).mean() for t in ts])
    return ts, far, tar


def eer(scores: np.ndarray, same: np.ndarray) -> float:
    _, far, tar = roc(scores, same)
    frr = 1 - tar
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)
