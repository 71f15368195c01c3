"""The known-answer test's tolerances at their edge (issue 25: only garbage far beyond them
was tried - a constant, random numbers, NaN). A runner that is the real embedding model,
its output turned away from the true answer by a chosen angle (along directions orthogonal
to every known answer: one for the face inputs, another for the pattern, so the pair
cosines move by at most (1 - c^2)(1 - known) among faces and (1 - c^2)|known| otherwise),
passes at a worst cosine just above TOLERANCES["embed"]["cosine_min"] (0.95) and is refused
just below it, with the one-line reason naming the cosine.
Mutations: cosine_min 0.95 -> 0.9 or -> 0.96, the comparison dropped - each fails here."""
from __future__ import annotations

import re

import numpy as np
import pytest

from facegate import kat, modelstore
from facegate.adapters import litert


class Turned:
    """The real runner, each output vector turned to cosine `c` from where it was, towards
    away[i] where i is the known answer it is nearest to (its input)."""

    def __init__(self, real, c: float, known: np.ndarray, away: list[np.ndarray]):
        self.real, self.inputs, self.outputs, self.c = real, real.inputs, real.outputs, c
        self.known, self.away = known, away

    def run(self, *arrays):
        out = self.real.run(*arrays)
        x = np.asarray(out[0], np.float64).reshape(-1)
        x /= np.linalg.norm(x)
        a = self.away[int(np.argmax(self.known @ x))]
        n = a - (a @ x) * x
        n /= np.linalg.norm(n)
        y = self.c * x + np.sqrt(1 - self.c ** 2) * n
        return [y.reshape(out[0].shape).astype(np.float32), *out[1:]]

    def delegate_report(self):
        raise NotImplementedError


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_the_embedding_tolerance_holds_at_its_edge(model_dir, variant):
    store = modelstore.ModelStore(model_dir)
    e = next(x for x in store.variants("embed") if x.variant == variant)
    if not (model_dir / e.file).is_file():
        pytest.skip(f"{e.file} not installed")
    real = litert.make_runner(model_dir / e.file, 1)
    base = kat.check("embed", real, e)
    assert base.ok, base.detail
    worst = float(re.search(r"cosine >= ([0-9.]+)", base.detail).group(1))  # the real model's own distance
    _, answers = kat.shipped()
    outs = answers[e.sha256]["outputs"]
    known = np.array([np.float64(outs[n]) for n in outs])
    known /= np.linalg.norm(known, axis=1, keepdims=True)
    q, _ = np.linalg.qr(np.concatenate([known.T, np.random.default_rng(7).standard_normal((known.shape[1], 2))],
                                       axis=1))
    n_face, n_pattern = q[:, len(known)], q[:, len(known) + 1]  # orthonormal, orthogonal to the answers
    away = [n_pattern if name == "pattern" else n_face for name in outs]
    edge = kat.TOLERANCES["embed"]["cosine_min"]

    above = kat.check("embed", Turned(real, (edge + 0.002) / worst, known, away), e)
    below = kat.check("embed", Turned(real, (edge - 0.002) / worst, known, away), e)
    assert above.ok, above.detail
    assert not below.ok and re.search(r"embedding at cosine 0\.94[0-9] from its known answer", below.detail), \
        below.detail
