"""The image header check against the real decoder: the size facegate reads from a JPEG
header must be the size OpenCV's libjpeg decodes, whatever stray, fill or stuffed bytes
and extra segments stand before the frame header; and the decoder itself is capped."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facegate import DECODER_CAPPED, DECODER_MAX_PIXELS
from facegate.errors import InputError
from facegate.imageio import decode_image, header_size
from facegate.quiet import quiet_stderr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import soak  # noqa: E402


def segments(jpeg: bytes) -> list[bytes]:
    """SOI, each marker segment up to SOS, then SOS with the entropy-coded data and EOI."""
    out, i = [jpeg[:2]], 2
    while jpeg[i + 1] != 0xDA:
        length = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        out.append(jpeg[i:i + 2 + length])
        i += 2 + length
    out.append(jpeg[i:])
    return out


def is_sof(seg: bytes) -> bool:
    return seg[:1] == b"\xff" and 0xC0 <= seg[1] <= 0xCF and seg[1] not in (0xC4, 0xC8, 0xCC)


def sof(w: int, h: int) -> bytes:
    """A baseline frame header of one 8-bit component."""
    return b"\xff\xc0\x00\x0b\x08" + struct.pack(">HH", h, w) + b"\x01\x01\x11\x00"


def resized(jpeg: bytes, w: int, h: int) -> bytes:
    """The same file with its frame header saying w x h (libjpeg fills missing data grey)."""
    return b"".join(s[:5] + struct.pack(">HH", h, w) + s[9:] if is_sof(s) else s for s in segments(jpeg))


def small_jpeg(w: int = 24, h: int = 16, color: bool = True, progressive: bool = False, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3) if color else (h, w), dtype=np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 50,
                                      cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])[1].tobytes()


def hidden_bomb(w: int = 12000, h: int = 12000) -> bytes:
    """A few hundred bytes that the old header scan read as 100 x 100 and libjpeg decodes as
    w x h: a stuffed FF 00 right after SOI (libjpeg discards it and skips 00 0A as stray
    bytes), whose next two bytes the old scan took for a length of 10 and so jumped into the
    payload of an APP1 segment - where a fake 100 x 100 frame header waits. libjpeg skips the
    APP1 by its length and reads the real frame header after it."""
    real = resized(small_jpeg(16, 16, color=False), w, h)
    payload = b"\0\0\0\0" + sof(100, 100)
    return real[:2] + b"\xff\x00\x00\x0a" + b"\xff\xe1" + struct.pack(">H", 2 + len(payload)) + payload + real[2:]


def decoded_size(data: bytes) -> tuple[int, int] | str | None:
    """(width, height) as OpenCV decodes it, "capped" when the decoder's own pixel limit
    refused it, None when it does not decode."""
    with quiet_stderr():
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            return "capped"
    return None if img is None else (img.shape[1], img.shape[0])


# -- the bomb of issue 15 ------------------------------------------------------------------
def test_hidden_frame_header_bomb_is_read_at_its_real_size_and_refused():
    bomb = hidden_bomb()
    assert len(bomb) < 700
    assert header_size(bomb) == ("jpeg", 12000, 12000)
    with pytest.raises(InputError, match=r"too large \(12000x12000 pixels > 4000000\)"):
        decode_image(bomb, max_pixels=4_000_000)


def test_the_decoder_itself_is_capped():
    """Behind the header check: OpenCV refuses to allocate more than DECODER_MAX_PIXELS
    (facegate sets OPENCV_IO_MAX_IMAGE_PIXELS before cv2 is loaded)."""
    assert DECODER_CAPPED
    over = resized(small_jpeg(16, 16, color=False), 8000, 5001)  # 40,008,000 pixels
    assert decoded_size(over) == "capped"
    assert decoded_size(resized(small_jpeg(16, 16, color=False), 400, 300)) == (400, 300)  # grey-filled, fine


def test_verify_with_the_bomb_as_reference_stays_near_baseline_memory(tmp_path, model_dir):
    """`facegate verify --reference bomb.jpg`: exit 2 with one line, and the process's peak
    RSS (VmHWM) as when the reference is merely corrupt (12000 x 12000 x 3 would be +412 MiB)."""
    good = tmp_path / "good.jpg"
    good.write_bytes(small_jpeg(64, 64))
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(hidden_bomb())
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(300))
    peaks = {}
    for name, ref in (("corrupt", corrupt), ("bomb", bomb)):
        rc, out, err, _dt, peaks[name] = soak._verify_child(ref, good)
        lines = err.strip().splitlines()
        assert rc == 2 and not out and len(lines) == 1 and lines[0].startswith("facegate: "), (name, rc, err)
    assert "too large (12000x12000 pixels" in lines[0]
    assert peaks["bomb"] < peaks["corrupt"] + 20, peaks


# -- the header reader against the real decoder ---------------------------------------------
def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", 2 + len(body)) + body


no_ff = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"\xff", b"\xfe"))
junk_items = st.one_of(
    st.tuples(st.just("fill"), st.integers(1, 6)),  # FF fill bytes before the next marker
    st.tuples(st.just("stuffed"), st.integers(1, 4)),  # FF 00 pairs
    st.tuples(st.just("stray"), no_ff),  # bytes libjpeg skips with a warning
    st.tuples(st.just("app"), st.integers(0, 15), st.binary(max_size=40)),
    st.tuples(st.just("app_fake_sof"), st.integers(0, 15), st.integers(1, 400), st.integers(1, 400),
              st.integers(0, 6)),
    st.tuples(st.just("com"), st.binary(max_size=40)),
    st.tuples(st.just("rst"), st.integers(0, 7)),
    st.tuples(st.just("tem")),
    st.tuples(st.just("dnl"), st.integers(0, 0xFFFF)),
)


def _junk(item) -> bytes:
    kind = item[0]
    if kind == "fill":
        return b"\xff" * item[1]
    if kind == "stuffed":
        return b"\xff\x00" * item[1]
    if kind == "stray":
        return item[1]
    if kind == "app":
        body = item[2]
        if item[1] == 1 and body.startswith(b"Exif"):  # EXIF orientation would rotate the image
            body = b"x" + body
        return _segment(0xE0 + item[1], body)
    if kind == "app_fake_sof":  # a frame header inside a segment payload: libjpeg never reads it
        return _segment(0xE0 + item[1], b"\0" * item[4] + sof(item[2], item[3]))
    if kind == "com":
        return _segment(0xFE, item[1])
    if kind == "rst":
        return bytes([0xFF, 0xD0 + item[1]])
    if kind == "tem":
        return b"\xff\x01"
    return _segment(0xDC, struct.pack(">H", item[1]))


@st.composite
def jpegs_with_junk(draw):
    w, h = draw(st.integers(16, 48)), draw(st.integers(16, 48))
    base = small_jpeg(w, h, color=draw(st.booleans()), progressive=draw(st.booleans()),
                      seed=draw(st.integers(0, 1000)))
    segs = segments(base)
    # junk goes between the segments after the first (OpenCV recognises a JPEG by FF D8 FF)
    # and the scan; most of it before the frame header, where it could hide one
    out = segs[:2]
    for seg in segs[2:]:
        fill = b""  # fill bytes belong right before a marker, not before stray bytes
        for item in draw(st.lists(junk_items, max_size=4)):
            data = _junk(item)
            if item[0] == "fill":
                fill += data
            elif item[0] != "stray":
                out.append(fill + data)
                fill = b""
            else:
                out.append(data)
        out.append(fill + seg)
    return b"".join(out), w, h


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jpegs_with_junk())
def test_header_reads_what_the_decoder_decodes_with_junk_before_the_frame(sample):
    data, w, h = sample
    assert header_size(data) == ("jpeg", w, h)
    assert decoded_size(data) == (w, h)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jpegs_with_junk(), st.lists(st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 400),
                                             st.sampled_from([0x00, 0x01, 0xC0, 0xC2, 0xC4, 0xD0, 0xD8, 0xD9,
                                                              0xDA, 0xDB, 0xE1, 0xFE, 0xFF, 0x10, 0x7F])),
                                   min_size=1, max_size=6))
def test_header_and_decoder_never_disagree_on_mutated_files(sample, edits):
    """Whatever bytes change before and around the frame header: when the decoder produces
    an image, the header said exactly its size; when the decoder's cap refused it, the
    header check had refused it already."""
    data = bytearray(sample[0])
    for op, pos, value in edits:
        pos = 3 + pos % (len(data) - 3)  # keep FF D8 FF so that OpenCV still calls libjpeg
        if op == "set":
            data[pos] = value
        elif op == "insert":
            data.insert(pos, value)
        else:
            del data[pos]
    data = bytes(data)
    _fmt, w, h = header_size(data)
    got = decoded_size(data)
    if got == "capped":
        assert w * h == 0 or w * h > DECODER_MAX_PIXELS, (w, h)
    elif got is not None:
        assert got == (w, h), (got, w, h)
