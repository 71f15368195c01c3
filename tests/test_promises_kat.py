"""kat's mutation survivors (issue 25), at what the known-answer test promises: a detector's
box is judged by its overlap (IoU) with the answer, at the 0.9 tolerance's edge; the shipped
known inputs are read as recorded; a variant whose self-test failed once stays refused (the
cached result) without stopping the fall-back to the next, and the choice says why."""
from __future__ import annotations

import numpy as np
import pytest

from facegate import kat, modelstore
from facegate.errors import ModelError


def detection(box, score=0.9):
    return {"box": list(box), "keypoints": [[0.0, 0.0]] * 6, "score": score}


@pytest.mark.parametrize("got,want,ok", [
    ((0, 0, 10, 10), (0, 0, 10, 10), True),  # the same box: IoU 1
    ((0, 0, 10, 9), (0, 0, 10, 10), True),  # IoU 0.9 exactly: at the tolerance
    ((0, 0, 10, 8.9), (0, 0, 10, 10), False),  # 0.89
    ((0, 0, 9, 10), (0, 0, 10, 10), True),
    ((0, 0, 8.9, 10), (0, 0, 10, 10), False),
    ((1, 0, 11, 10), (0, 0, 10, 10), False),  # shifted 1 px: 90 / 110 = 0.818
    ((0, 5, 10, 15), (0, 0, 10, 10), False),  # shifted down half: 50 / 150
    ((20, 20, 30, 30), (0, 0, 10, 10), False),  # apart: 0
    ((10, 0, 20, 10), (0, 0, 10, 10), False),  # touching: 0
    ((2, 0, 12, 10), (2, 0, 12, 10), True),  # the same box away from the origin
    ((0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5), True),  # a tiny box is still compared by its overlap
    ((0, 0, 0, 0), (0, 0, 0, 0), False),  # no area at all: no overlap, no division by zero
])
def test_a_detected_box_passes_by_its_overlap_with_the_answer(got, want, ok):
    w = {"face": [detection(want)]}
    have = {"face": [detection(got)]}
    if ok:
        assert kat.compare("detect_short", have, w).startswith("boxes IoU >= ")
    else:
        with pytest.raises(kat.KatFailure, match="box IoU"):
            kat.compare("detect_short", have, w)


def test_boxes_side_by_side_have_no_overlap_at_all():
    """Apart in x (or y) while level in the other: IoU 0, not one pixel's row of overlap."""
    for got in ((20, 0, 30, 10), (0, 20, 10, 30)):
        with pytest.raises(kat.KatFailure) as err:
            kat.compare("detect_short", {"face": [detection(got)]}, {"face": [detection((0, 0, 10, 10))]})
        assert str(err.value) == "face: box IoU 0.000 with the expected box (< 0.9)"


def pad(*p_real_and_other):
    return {f"in{i}": [0.0, real, other] for i, (real, other) in enumerate(p_real_and_other)}


def test_liveness_answers_within_0_3_pass_and_the_first_beyond_is_named():
    want = pad((0.1, 0.9), (0.9, 0.1), (0.5, 0.5))
    assert kat.compare("pad_v2", want, want) == "3 inputs' class probabilities within 0.0000"
    at = pad((0.0, 0.9), (0.9, 0.1), (0.5, 0.5))
    assert kat.compare("pad_v2", pad((0.3, 0.9), (0.9, 0.1), (0.5, 0.5)), at) == (
        "3 inputs' class probabilities within 0.3000")  # exactly 0.3 apart: still within
    off = pad((0.45, 0.9), (0.9, 0.1), (0.5, 0.5))
    with pytest.raises(kat.KatFailure) as err:
        kat.compare("pad_v2", off, want)
    assert str(err.value) == "in0: p(real) 0.450, expected 0.100 (class probabilities 0.350 apart > 0.3)"


def test_liveness_outputs_that_ignore_their_input_are_caught_by_p_real():
    """The qemu `max` failure: p(real) (class 1) the same for inputs known to differ by more
    than 2 x 0.3; judged on class 1 only, with a spread of 0.1 (0.3 / 3) still taken for
    collapse."""
    want = pad((0.1, 0.5), (0.9, 0.5))  # p(real) 0.8 apart; the other class alike
    with pytest.raises(kat.KatFailure, match="outputs barely depend on the input"):
        kat.compare("pad_v2", pad((0.5, 0.0), (0.5, 1.0)), want)  # p(real) constant, the other class not
    with pytest.raises(kat.KatFailure, match="outputs barely depend on the input"):
        kat.compare("pad_v2", pad((0.41, 0.5), (0.5, 0.5)), want)  # a spread of 0.09
    close = pad((0.5, 0.5), (0.6, 0.5))  # p(real) only 0.1 apart: no collapse to look for
    assert kat.compare("pad_v2", pad((0.55, 0.5), (0.55, 0.5)), close).startswith("2 inputs'")


def test_the_iou_of_tall_boxes_is_area_over_area():
    """Width and height not swapped: a 2 x 20 box inside a 4 x 20 one overlaps by half."""
    want = {"face": [detection((0, 0, 4, 20))]}
    with pytest.raises(kat.KatFailure, match=r"box IoU 0\.500"):
        kat.compare("detect_short", {"face": [detection((0, 0, 2, 20))]}, want)
    with pytest.raises(kat.KatFailure, match=r"box IoU 0\.500"):
        kat.compare("detect_short", {"face": [detection((0, 0, 20, 2))]}, {"face": [detection((0, 0, 20, 4))]})


def test_the_shipped_known_inputs_are_read_as_recorded():
    import json

    from facegate.modelstore import resource

    meta = json.loads(resource(f"{kat.KAT_DIR}/inputs.json").read_text())
    image = resource(f"{kat.KAT_DIR}/{meta['image']}").read_bytes()
    ins = kat.read_inputs(meta, image)
    assert ins.face.ndim == 3 and ins.face.shape[2] == 3
    assert ins.box == tuple(float(v) for v in meta["box"]) and all(isinstance(v, float) for v in ins.box)
    for got, want in ((ins.keypoints, meta["keypoints"]), (ins.five, meta["five"])):
        assert got.dtype.name == "float32" and np.allclose(got, np.asarray(want, np.float32))
    assert ins.eye_corners == {int(k): tuple(v) for k, v in meta["eye_corners"].items()}
    assert all(isinstance(k, int) and isinstance(v, tuple) for k, v in ins.eye_corners.items())
    with pytest.raises(ModelError, match="cannot be decoded"):
        kat.read_inputs(meta, b"not an image")


def test_a_failed_self_test_is_remembered_and_the_next_variant_still_tried(model_dir):
    from test_kat import garbage_for

    store = modelstore.ModelStore(model_dir)
    make = garbage_for({"sface_int8.tflite"})
    calls = []

    def counting(path, num_threads):
        calls.append(path.name)
        return make(path, num_threads)
    for _ in range(2):  # the second time from the cached self-test results
        runner, c = kat.load(store, "embed", "auto", counting, 1)  # the choice is returned, not kept in the store
        assert c.entry.variant == "fp32"
        assert c.refused == (f"int8 refused: {store.self_tests[(_entry(store, 'int8').sha256, 1)].detail}",)
        assert c.why.startswith("fp32 sface_fp32.tflite, auto: the fastest installed variant that passes here "
                                f"({c.refused[0]}); known answers: ")
        assert c.task == "embed" and c.precision == "auto"
    assert calls.count("sface_int8.tflite") == 1  # refused once, not loaded and tested again
    runner, c = kat.load(store, "embed", "fp32", counting, 1)
    assert c.why.startswith("fp32 sface_fp32.tflite, as configured; known answers: ")
    with pytest.raises(ModelError) as err:
        kat.load(store, "embed", "int8", counting, 1)
    assert str(err.value).startswith("no embed model passes its known-answer self-test on this CPU (precision int8): "
                                     "int8 refused: ")


def _entry(store, variant):
    return next(e for e in store.variants("embed") if e.variant == variant)


def test_detections_count_then_keypoints_and_score_at_their_tolerances():
    want = {"face": [detection((0, 0, 10, 10), 0.9)], "pattern": []}

    def have(kp_dx=0.0, score=0.9, n=1):
        d = detection((0, 0, 10, 10), score)
        d["keypoints"] = [[kp_dx, 0.0]] * 6
        return {"face": [d] * n, "pattern": []}
    assert kat.compare("detect_short", have(), want) == "boxes IoU >= 1.000, keypoints within 0.00 px"
    assert kat.compare("detect_short", have(2.0, 0.95), want) == "boxes IoU >= 1.000, keypoints within 2.00 px"
    for got, said in ((have(n=2), "2 face(s) found in face, expected 1"),
                      (have(2.5), "face: keypoints 2.5 px off (> 2.0)"),
                      (have(score=0.8), "face: score 0.800, expected 0.900")):
        with pytest.raises(kat.KatFailure) as err:
            kat.compare("detect_short", got, want)
        assert str(err.value) == said
    # of two detections, the one overlapping the answer is compared (not the first)
    far, near = detection((50, 50, 60, 60), 0.9), detection((0, 0, 10, 10), 0.9)
    assert kat.compare("detect_short", {"face": [far, near], "pattern": []},
                       {"face": [near, far], "pattern": []}).startswith("boxes IoU >= 1.000")


def test_landmarks_at_their_mean_and_worst_tolerances_and_the_presence():
    pts = [[0.0, 0.0]] * 4
    want = {"a": {"points": pts, "presence": 0.9}}

    def moved(dxs, presence=0.9):
        return {"a": {"points": [[dx, 0.0] for dx in dxs], "presence": presence}}
    assert kat.compare("mesh", moved([3.0, 1.0 / 3, 1.0 / 3, 1.0 / 3 - 1e-12]), want).startswith(
        "landmarks within 1.000 px on average, 3.000 px at worst")  # both at their limits
    assert kat.compare("mesh", moved([0.0] * 4, 0.95), want) == "landmarks within 0.000 px on average, 0.000 px at worst"
    for got, said in ((moved([3.1, 0, 0, 0]), "a: landmarks 0.78 px off on average, 3.10 px at worst (> 1.0 / 3.0)"),
                      (moved([1.1] * 4), "a: landmarks 1.10 px off on average, 1.10 px at worst (> 1.0 / 3.0)"),
                      (moved([0.0] * 4, 0.8), "a: face presence 0.800, expected 0.900")):
        with pytest.raises(kat.KatFailure) as err:
            kat.compare("mesh", got, want)
        assert str(err.value) == said
    no_presence = {"a": {"points": pts}}  # iris answers carry none
    assert kat.compare("iris", {"a": {"points": pts}}, no_presence).startswith("landmarks within 0.000")


def test_embeddings_at_their_cosine_and_pair_tolerances():
    import math

    def unit(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]
    want = {"face": unit(0), "flip": unit(10), "pattern": unit(80)}  # face vs pattern: cosine 0.17 (distinct)
    assert kat.compare("embed", want, want) == "3 embeddings at cosine >= 1.0000 to their answers, pairs as expected"
    turned = {k: unit(d + 5) for k, d in (("face", 0), ("flip", 10), ("pattern", 80))}  # all turned 5 degrees
    assert kat.compare("embed", turned, want).startswith("3 embeddings at cosine >= 0.9962")
    scaled = {k: [3 * x for x in v] for k, v in want.items()}  # the cosine, not the dot product
    with pytest.raises(kat.KatFailure, match="distinct inputs collapse"):
        kat.compare("embed", scaled, want)  # (scaled pairs' dots grow: a collapse as the check sees it)
    with pytest.raises(kat.KatFailure) as err:
        kat.compare("embed", {"face": unit(-20), "flip": unit(10), "pattern": unit(80)}, want)
    assert str(err.value) == "face: embedding at cosine 0.940 from its known answer (< 0.95)"
    with pytest.raises(kat.KatFailure) as err:  # each near its answer, a pair's cosine 0.1+ off
        kat.compare("embed", {"face": unit(-12), "flip": unit(18), "pattern": unit(80)}, want)
    assert str(err.value) == "face vs flip: cosine 0.866, expected 0.985"
    collapsed = {"face": unit(0), "flip": unit(0), "pattern": unit(0)}
    with pytest.raises(kat.KatFailure) as err:
        kat.compare("embed", collapsed, want)
    assert str(err.value) == "distinct inputs collapse: face and pattern at cosine 1.000 (known 0.174, must stay < 0.5)"
