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


def test_each_quality_gate_lets_its_limit_through_and_refuses_past_it():
    """decide.gate at its edges (mutation survivors: `<` / `>` turned into `<=` / `>=`)."""
    from facegate.config import VerifyConfig

    cfg = VerifyConfig()
    ok = Quality(cfg.min_eye_distance_px, cfg.min_sharpness, cfg.min_brightness, cfg.max_yaw_deg, -cfg.max_pitch_deg)
    assert decide.gate(ok, cfg.min_face_presence, cfg) is None
    assert decide.gate(Quality(30, 100, cfg.max_brightness, 0, 0), cfg.min_face_presence, cfg) is None
    e = 1e-6
    for q, presence, reason in (
            (ok, cfg.min_face_presence - e, FaceReason.NO_FACE),
            (Quality(cfg.min_eye_distance_px - e, 100, 120, 0, 0), 1.0, FaceReason.FACE_TOO_SMALL),
            (Quality(30, 100, 120, cfg.max_yaw_deg + e, 0), 1.0, FaceReason.POSE_OUT_OF_RANGE),
            (Quality(30, 100, 120, 0, -cfg.max_pitch_deg - e), 1.0, FaceReason.POSE_OUT_OF_RANGE),
            (Quality(30, 100, cfg.min_brightness - e, 0, 0), 1.0, FaceReason.TOO_DARK),
            (Quality(30, 100, cfg.max_brightness + e, 0, 0), 1.0, FaceReason.TOO_BRIGHT),
            (Quality(30, cfg.min_sharpness - e, 120, 0, 0), 1.0, FaceReason.TOO_BLURRY)):
        assert decide.gate(q, presence, cfg) == reason, (q, presence)


def test_prominence_is_the_visible_area_weighted_by_centrality():
    from facegate.types import Detection

    kp = np.zeros((6, 2), np.float32)
    centred = Detection((40.0, 30.0, 60.0, 50.0), kp, 0.9)  # 20 x 20 at the centre of 100 x 80
    assert decide.prominence(centred, 100, 80) == pytest.approx(400.0)
    cut = Detection((-10.0, -10.0, 10.0, 20.0), kp, 0.9)  # 10 x 20 of it inside, centre (0, 5)
    d = np.hypot(0 - 50, 5 - 40) / np.hypot(50, 40)
    assert decide.prominence(cut, 100, 80) == pytest.approx(200.0 * (1 - d) ** 2)
    assert decide.prominence(Detection((200.0, 200.0, 220.0, 230.0), kp, 0.9), 100, 80) == 0.0
    # wholly outside on one side only, its centre still within the half-diagonal: nothing
    # of it is visible, so it counts nothing (not one pixel's width or height)
    assert decide.prominence(Detection((101.0, 0.0, 110.0, 80.0), kp, 0.9), 100, 80) == 0.0  # right of it
    assert decide.prominence(Detection((0.0, 81.0, 100.0, 90.0), kp, 0.9), 100, 80) == 0.0  # below it


def test_a_face_exactly_dominant_ratio_times_the_next_is_chosen():
    """`dominant_ratio` times more prominent is enough (the docstring's promise); a hair
    less is two faces."""
    from facegate.types import Detection

    kp = np.zeros((6, 2), np.float32)
    big = Detection((30.0, 30.0, 70.0, 50.0), kp, 0.9)  # 40 x 20 = 800, centred in 100 x 80
    small = Detection((40.0, 30.0, 60.0, 50.0), kp, 0.9)  # 20 x 20 = 400, centred
    assert decide.choose_face([small, big], 100, 80, 2.0) == (big, None)
    assert decide.choose_face([small, big], 100, 80, np.nextafter(2.0, 3.0)) == (None, FaceReason.MULTIPLE_FACES)
    assert decide.choose_face([big], 100, 80, 2.0) == (big, None)
    assert decide.choose_face([], 100, 80, 2.0) == (None, FaceReason.NO_FACE)
