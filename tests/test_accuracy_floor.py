"""An accuracy floor on a fixed small LFW subset (issue 25: test_verify_real passed for any
threshold between about 0.23 and 0.70, and nothing failed if the embedding or the alignment
degraded). Real models, the threshold in force (verify.target_fmr from
models/calibration.toml: verifier.policy.threshold, 0.4266 for the int8 embedding), the
first 60 same-person and the first 60 different-person pairs of fold 5 of
../shared/data/lfw/pairs.txt, compared as the pipeline compares them (Verifier.verify, RunningMode.IMAGE).

Measured (x86-64, int8 embedding, mirror-averaged, 2026-12-07):
  same person:      56 match, 2 no_match (similarity 0.302, 0.320), 2 no_face
  different person: 59 no_match, 1 no_face, 0 match (highest similarity 0.307)
  mean similarity:  same 0.676, different 0.099 (separation 0.577)
Floors and their margins: >= 55 of 60 same-person pairs match (1 pair of margin; the
nearest genuine pair above the threshold is at 0.453, +0.026), no different-person pair
matches (the highest is 0.120 below the threshold), separation >= 0.50 (0.077 of margin).
The test passes for a threshold in [0.308, ~0.52] only.
Mutations checked by hand: decide_match comparing with threshold - 0.15 (1 false match:
0.307) or + 0.15 (51 matches) - each fails here. Degrading the embedding or the alignment
(BGR instead of RGB in Embedder.embed or in align(), the template shrunk by 7 % and shifted
3 px) is refused earlier, by the embedding's known-answer test (cosine 0.82-0.93 < 0.95),
so the verifier fixture errors: either way the suite goes red."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from facegate.imageio import read_image
from facegate.vocab import RunningMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lfw import read_pairs  # noqa: E402

N = 60
FOLD = 4  # the fifth fold


def test_a_fixed_lfw_subset_keeps_its_accuracy_at_the_threshold_in_force(verifier, lfw):
    pairs = [p for p in read_pairs(lfw.parent) if p.fold == FOLD]
    same = [p for p in pairs if p.same][:N]
    diff = [p for p in pairs if not p.same][:N]
    assert len(same) == len(diff) == N
    thr = verifier.policy.threshold
    assert 0.30 < thr < 0.55, thr  # the calibrated int8 / fp32 thresholds lie here

    def run(ps):
        out = []
        for p in ps:
            d, _ = verifier.verify(read_image(p.a), read_image(p.b), RunningMode.IMAGE)
            out.append((d.decision, d.similarity))
        return out

    s, d = run(same), run(diff)
    matched = sum(dec == "match" for dec, _ in s)
    false_matches = [(p.a.name, p.b.name, sim) for p, (dec, sim) in zip(diff, d) if dec == "match"]
    no_face = sum(dec == "no_face" for dec, _ in s + d)
    assert matched >= 55, (matched, thr, sorted(x for _, x in s if x is not None)[:8])
    assert false_matches == [], (false_matches, thr)
    assert no_face <= 4, no_face  # the detector finds the faces it found (3 measured)
    s_sim = np.array([x for _, x in s if x is not None])
    d_sim = np.array([x for _, x in d if x is not None])
    assert s_sim.mean() - d_sim.mean() >= 0.50, (s_sim.mean(), d_sim.mean())
