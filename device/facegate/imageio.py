"""Decoding untrusted image bytes (ID portraits, probe files) with hard limits.

The header is read before decoding so that an image bomb (a small file that claims a
huge canvas) is refused without allocating its pixels; the JPEG header is read the way
libjpeg reads it, so the two cannot disagree. Behind that, OpenCV's decoders themselves
refuse more than DECODER_MAX_PIXELS (set in facegate/__init__ before cv2 is loaded).
"""
from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from . import DECODER_CAPPED, DECODER_MAX_PIXELS
from .errors import InputError
from .quiet import quiet_stderr

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
if not DECODER_CAPPED:
    logging.getLogger(__name__).warning(
        "cv2 was loaded before facegate: OpenCV's decoders are not capped at %d pixels unless "
        "OPENCV_IO_MAX_IMAGE_PIXELS was set; only the header checks stand against image bombs", DECODER_MAX_PIXELS)


# JPEG markers as libjpeg(-turbo)'s read_markers() takes them before the first scan
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7
_JPEG_WITH_LENGTH = frozenset({0xC4, 0xCC, 0xDB, 0xDC, 0xDD, *range(0xE0, 0xF0), 0xFE})  # DHT DAC DQT DNL DRI APPn COM
# up to the FF run before the next marker: other bytes and stuffed FF 00 pairs are passed over
# (possessive, so long runs of FF or FF 00 cost one linear pass in C, never backtracking)
_JPEG_NEXT_MARKER = re.compile(rb"[^\xff]*+(?:\xff++\x00[^\xff]*+)*+\xff++")
_JPEG_MAX_MARKERS = 1000  # before the frame header; real files have a few dozen


def _jpeg_frame_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the frame header libjpeg would read, or (0, 0) where libjpeg
    would find none or stop with an error. Walks the markers after SOI as libjpeg's
    next_marker() does: bytes other than FF are skipped, FF fill bytes too, FF 00 (a stuffed
    zero) is discarded without a length; TEM and RST0-7 have no length; DHT, DAC, DQT, DNL,
    DRI, APPn and COM are skipped by their length; the first SOF0-15 (not DHT, JPG or DAC)
    carries the size. SOS or EOI before it, a second SOI, JPG, an unknown marker or more than
    _JPEG_MAX_MARKERS markers: (0, 0)."""
    i, n = 2, len(data)
    for _ in range(_JPEG_MAX_MARKERS):
        m = _JPEG_NEXT_MARKER.match(data, i)
        if m is None or m.end() >= n:
            return 0, 0
        marker = data[m.end()]
        i = m.end() + 1
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker in _JPEG_SOF:  # length(2) precision(1) height(2) width(2)
            if i + 7 > n:
                return 0, 0
            h, w = struct.unpack(">HH", data[i + 3:i + 7])
            return w, h
        if marker not in _JPEG_WITH_LENGTH or i + 2 > n:
            return 0, 0
        i += max(struct.unpack(">H", data[i:i + 2])[0], 2)  # a length below 2 covers only itself
    return 0, 0  # refused: more markers before the frame than any real file has


def header_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from a PNG, JPEG, BMP or WebP header, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:2] == b"\xff\xd8":
        w, h = _jpeg_frame_size(data)
        return "jpeg", w, h
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return "bmp", abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":  # extended: 24-bit canvas width-1 / height-1
            return "webp", int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
            w, h = struct.unpack("<HH", data[26:30])
            return "webp", w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width-1, height-1
            bits = int.from_bytes(data[21:25], "little")
            return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return "webp", 0, 0
    return None


def decode_image(data: bytes, max_bytes: int = 20_000_000, max_pixels: int = DECODER_MAX_PIXELS,
                 what: str = "image") -> np.ndarray:
    """Decode untrusted bytes into HxWx3 uint8 BGR, or raise InputError with a reason."""
    if not data:
        raise InputError(f"{what} is empty")
    if len(data) > max_bytes:
        raise InputError(f"{what} is too large ({len(data)} bytes > {max_bytes})")
    head = header_size(data)
    if head is None:
        raise InputError(f"{what} is not a JPEG, PNG, BMP or WebP image")
    fmt, w, h = head
    if w * h == 0:  # no size in the header: refuse rather than decode blind (a bomb could hide)
        raise InputError(f"{what} is corrupt: no image size in its {fmt.upper()} header")
    if w * h > max_pixels:
        raise InputError(f"{what} is too large ({w}x{h} pixels > {max_pixels})")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # the decoder's own limit (OPENCV_IO_MAX_IMAGE_PIXELS, set in facegate/__init__)
        raise InputError(f"{what} is too large (its decoder found more than {DECODER_MAX_PIXELS} pixels)") from None
    if img is None or img.size == 0:
        raise InputError(f"{what} is corrupt or truncated ({fmt})")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise InputError(f"{what} is too large ({img.shape[1]}x{img.shape[0]} pixels)")
    if min(img.shape[:2]) < 16:
        raise InputError(f"{what} is too small ({img.shape[1]}x{img.shape[0]} pixels)")
    return img


def read_image(path: str | Path, max_bytes: int = 20_000_000, max_pixels: int = DECODER_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file (see decode_image)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise InputError(f"{p.name} is too large ({size} bytes > {max_bytes})")
        data = p.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{p} is a directory, not an image") from None
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror}") from None
    with quiet_stderr():  # libjpeg / libpng warnings would stand beside the CLI's one line
        return decode_image(data, max_bytes, max_pixels, what=p.name)


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
