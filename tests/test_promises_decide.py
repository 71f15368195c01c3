"""decide.decide_match / quality_score / fuse pinned by value (mutation testing: 20 of
decide's first 53 mutants survived; decide_match ran only inside model tests, never at its
threshold)."""
from __future__ import annotations

import numpy as np
import pytest

from facegate import decide
from facegate.types import Quality
from facegate.vocab import FaceReason, Verdict


def test_the_threshold_itself_is_a_match_and_everything_is_carried():
    q = {"frames": 3}
    d = decide.decide_match(0.4266, 0.4266, q, 3)
    assert (d.decision, d.reason, d.similarity, d.quality, d.frames_used) == (Verdict.MATCH, None, 0.4266, q, 3)
    d = decide.decide_match(np.nextafter(0.4266, 0), 0.4266, q)
    assert (d.decision, d.reason, d.frames_used) == (Verdict.NO_MATCH, FaceReason.DIFFERENT_PERSON, 1)
    assert d.similarity == np.nextafter(0.4266, 0) and d.quality is q


@pytest.mark.parametrize("q,score", [
    (Quality(40, 150, 120, 0, 0), 2.0),
    (Quality(80, 75, 120, 0, 0), 2.0),  # size capped at 1.5, sharpness half
    (Quality(20, 300, 120, 0, 0), 1.5),  # sharpness capped at 1.0
    (Quality(40, 150, 120, 12, -6), 1.7),  # |yaw| + |pitch| over 60
    (Quality(40, 150, 120, -30, 30), 1.0),
])
def test_quality_score_by_value(q, score):
    assert decide.quality_score(q) == pytest.approx(score)


def test_fuse_is_the_renormalised_mean_as_float32():
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    f = decide.fuse([a, b, a])
    assert f.dtype == np.float32 and np.allclose(f, np.array([2, 1]) / np.sqrt(5))
    assert np.allclose(decide.fuse([np.zeros(2, np.float32)]), 0)  # no division by zero
