"""Pure pre/post-processing: shapes, dtypes and geometry, checked against hand values."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from facegate import decide
from facegate.config import VerifyConfig
from facegate.errors import InputError
from facegate.imageio import decode_image, header_size
from facegate.ports import TensorSpec
from facegate.types import Detection, Quality
from facegate.vision.align import TEMPLATE
from facegate.vision.detect import FULL_RANGE, SHORT_RANGE, decode, letterbox, make_anchors, weighted_nms
from facegate.vision.geometry import apply_affine, invert_affine, rotated_square, similarity_transform
from facegate.vision.tensors import to_input


def test_anchor_counts_match_the_models():
    a = make_anchors(SHORT_RANGE)
    assert a.shape == (896, 2) and a.dtype == np.float32
    assert make_anchors(FULL_RANGE).shape == (2304, 2)
    assert np.allclose(a[0], [0.5 / 16, 0.5 / 16]) and np.allclose(a[-1], [7.5 / 8, 7.5 / 8])


def test_letterbox_maps_frame_points_into_the_square():
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 90:110] = 255
    x, m = letterbox(img, 128)
    assert x.shape == (1, 128, 128, 3) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    cx, cy = apply_affine(m, np.array([[100.0, 50.0]]))[0]
    assert abs(cx - 64) < 1 and abs(cy - 64) < 1
    assert x[0, int(cy), int(cx)].min() > 0.9  # the white square landed there


def test_decode_and_nms_merge_overlapping_boxes():
    anchors = make_anchors(SHORT_RANGE)
    reg = np.zeros((896, 16), np.float32)
    logit = np.full((896, 1), -10.0, np.float32)
    reg[:, 2:4] = 20.0
    logit[[0, 1]] = 5.0  # two anchors of the same cell: one face
    boxes, kps, scores = decode(reg, logit, anchors, 128, 0.5)
    assert boxes.shape == (2, 4) and kps.shape == (2, 6, 2)
    merged = weighted_nms(boxes, kps, scores)
    assert len(merged) == 1
    box, _, score = merged[0]
    assert np.allclose(box, [4 - 10, 4 - 10, 4 + 10, 4 + 10]) and score > 0.99


def test_nms_keeps_a_box_of_negative_size_instead_of_crashing():
    """A broken model (random regressors) can give boxes of negative width; each still
    stands for itself (it used to raise IndexError: an empty cluster)."""
    boxes = np.float32([[10, 10, 5, 5], [0, 0, 10, 10]])
    kps = np.zeros((2, 6, 2), np.float32)
    out = weighted_nms(boxes, kps, np.float32([0.9, 0.8]))
    assert len(out) == 2 and out[0][2] == pytest.approx(0.9)
    assert np.allclose(out[0][0], [10, 10, 5, 5])


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, t = 0.3, 0.7, np.array([12.0, -5.0])
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    dst = src @ r.T + t
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], r, atol=1e-9) and np.allclose(m[:, 2], t, atol=1e-9)
    assert np.allclose(apply_affine(invert_affine(m), dst), src, atol=1e-3)


def test_rotated_square_levels_the_rotated_axis():
    angle = 0.5
    m = rotated_square(50, 60, 40, angle, 192)
    assert np.allclose(apply_affine(m, np.array([[50.0, 60.0]])), [[96, 96]], atol=1e-4)
    # a point 10 px along the rotated x axis lands 10 * 192/40 px right of the centre
    p = np.array([[50 + 10 * np.cos(angle), 60 + 10 * np.sin(angle)]])
    assert np.allclose(apply_affine(m, p), [[96 + 48, 96]], atol=1e-4)


def test_template_is_the_arcface_one():
    assert TEMPLATE.shape == (5, 2) and TEMPLATE[0, 0] < TEMPLATE[1, 0]


def test_to_input_quantizes_int8_and_keeps_float():
    x = np.array([[0, 128, 255]], np.float32)
    q = to_input(x, TensorSpec("in", (1, 3), np.dtype(np.int8), 1.0, -128))
    assert q.dtype == np.int8 and q.tolist() == [[-128, 0, 127]]
    f = to_input(x, TensorSpec("in", (1, 3), np.dtype(np.float32)))
    assert f.dtype == np.float32


def _png(w: int, h: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_image_bomb_is_refused_before_decoding():
    bomb = _png(100_000, 100_000)
    assert header_size(bomb) == ("png", 100_000, 100_000)
    with pytest.raises(InputError, match="too large"):
        decode_image(bomb)


def test_jpeg_header_size_and_corrupt_bytes():
    ok, buf = cv2.imencode(".jpg", np.full((60, 80, 3), 128, np.uint8))
    data = buf.tobytes()
    assert header_size(data) == ("jpeg", 80, 60)
    assert decode_image(data).shape == (60, 80, 3)
    for bad, why in ((b"", "empty"), (b"hello world", "not a JPEG"), (data[:40], "corrupt")):
        with pytest.raises(InputError, match=why):
            decode_image(bad)


def _det(x0, y0, x1, y1):
    return Detection((x0, y0, x1, y1), np.zeros((6, 2), np.float32), 0.9)


def test_choose_face_prefers_a_dominant_central_face():
    centre, edge = _det(80, 80, 170, 170), _det(0, 90, 80, 170)
    assert decide.choose_face([edge, centre], 250, 250, 2.0) == (centre, None)
    twin = _det(40, 80, 120, 160), _det(130, 80, 210, 160)
    assert decide.choose_face(list(twin), 250, 250, 2.0) == (None, "multiple_faces")
    assert decide.choose_face([], 250, 250, 2.0) == (None, "no_face")


def test_quality_gates_name_their_reason():
    cfg = VerifyConfig()
    good = Quality(40, 100, 120, 0, 0)
    assert decide.gate(good, 0.99, cfg) is None
    assert decide.gate(Quality(5, 100, 120, 0, 0), 0.99, cfg) == "face_too_small"
    assert decide.gate(Quality(40, 1, 120, 0, 0), 0.99, cfg) == "too_blurry"
    assert decide.gate(Quality(40, 100, 10, 0, 0), 0.99, cfg) == "too_dark"
    assert decide.gate(Quality(40, 100, 250, 0, 0), 0.99, cfg) == "too_bright"
    assert decide.gate(Quality(40, 100, 120, 70, 0), 0.99, cfg) == "pose_out_of_range"
    assert decide.gate(good, 0.1, cfg) == "no_face"


def test_decide_match_and_fuse():
    assert decide.decide_match(0.5, 0.4, {}).decision == "match"
    d = decide.decide_match(0.1, 0.4, {})
    assert d.decision == "no_match" and d.reason == "different_person"
    f = decide.fuse([np.array([1.0, 0.0]), np.array([0.0, 1.0])])
    assert np.isclose(np.linalg.norm(f), 1.0) and np.allclose(f, [2 ** -0.5, 2 ** -0.5])
