"""Decoding untrusted image bytes (ID portraits, probe files) with hard limits.

The header is read before decoding so that an image bomb (a small file that claims a
huge canvas) is refused without allocating its pixels.
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .quiet import quiet_stderr

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def header_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from a PNG, JPEG, BMP or WebP header, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            seg = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return "jpeg", w, h
            i += 2 + seg
        return "jpeg", 0, 0
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


def decode_image(data: bytes, max_bytes: int = 20_000_000, max_pixels: int = 40_000_000,
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
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise InputError(f"{what} is corrupt or truncated ({fmt})")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise InputError(f"{what} is too large ({img.shape[1]}x{img.shape[0]} pixels)")
    if min(img.shape[:2]) < 16:
        raise InputError(f"{what} is too small ({img.shape[1]}x{img.shape[0]} pixels)")
    return img


def read_image(path: str | Path, max_bytes: int = 20_000_000, max_pixels: int = 40_000_000) -> np.ndarray:
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
