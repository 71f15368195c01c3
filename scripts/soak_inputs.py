"""soak: bad inputs. Odd CBOR values and image bombs (the fuzz phase sends them), and phase
portraits: corrupt, truncated, huge and wrong-format files through `facegate verify`."""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import cbor2
import cv2
import numpy as np

from facegate import signing  # key files and command signing only
from soak_common import (
    CMD,
    Ctx,
)
from soak_resources import (
    _verify_child,
)


# -- fuzzing ---------------------------------------------------------------------------------
def sign_raw(body: bytes, key: signing.SigningKey, topic: str = CMD, protected: bytes | None = None,
             unprotected=None) -> bytes:
    """COSE_Sign1 over arbitrary payload bytes (what a buggy or hostile signer could send)."""
    protected = cbor2.dumps({1: -8, 4: key.kid}) if protected is None else protected
    sig = key.private.sign(cbor2.dumps(["Signature1", protected, topic.encode(), body]))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {} if unprotected is None else unprotected, body, sig]))


def rand_value(rng: random.Random, depth: int = 0):
    k = rng.randrange(12 if depth < 3 else 8)
    if k == 0:
        return rng.randint(-2**64, 2**64)
    if k == 1:
        return rng.choice((-1, 1)) * 2 ** rng.randint(60, 4000) + rng.randint(0, 9)
    if k == 2:
        return rng.choice([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e308, 5e-324,
                           rng.uniform(-1e10, 1e10), time.time() + rng.uniform(-1e6, 1e6)])
    if k == 3:
        return "".join(chr(rng.choice([rng.randint(0, 127), rng.randint(128, 0xD7FF), 0]))
                       for _ in range(rng.randint(0, 200)))
    if k == 4:
        return rng.randbytes(rng.choice([0, 1, 8, 16, 64, 65, 300]))
    if k == 5:
        return rng.choice([True, False, None, cbor2.undefined])
    if k == 6:
        return rng.choice(["blink", "turn_left", "turn_right", "smile", ""])
    if k == 7:
        return cbor2.CBORSimpleValue(rng.choice([0, 5, 19, 32, 255]))
    if k == 8:
        return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 8))]
    if k == 9:
        return {rng.choice(["a", "request_id", "iat", 1, -5, b"k"]): rand_value(rng, depth + 1)
                for _ in range(rng.randint(0, 6))}
    if k == 10:
        return cbor2.CBORTag(rng.choice([0, 1, 2, 3, 4, 5, 24, 28, 29, 30, 32, 35, 36, 37, 258, 55799, 99999]),
                             rand_value(rng, depth + 1))
    return rng.randint(0, 30)


def cbor_oddities(rng: random.Random) -> bytes:
    """Hand-made CBOR that decoders get wrong: deep nesting, lengths far beyond the data,
    indefinite lengths never closed, reserved bytes, a tag-18 of the wrong shape."""
    n = rng.randint(100, 100_000)
    return rng.choice([
        b"\x81" * n + b"\x00",                                   # [[[[...]]]]
        b"\xa1\x00" * n + b"\x00",                               # {0: {0: ...}}
        b"\xd2" * n + b"\x00",                                   # tag 18 on tag 18 ...
        b"\x5b" + (2**62).to_bytes(8, "big") + b"ab",            # bytes of 2^62 announced
        b"\x9b" + (2**62).to_bytes(8, "big"),                    # array of 2^62 items
        b"\xbb" + (2**40).to_bytes(8, "big") + b"\x00\x00",       # map of 2^40 pairs
        b"\x5f" + b"\x41a" * rng.randint(1, 1000),               # indefinite bytes, never closed
        b"\x9f" * 200 + b"\xff" * 100,                           # unbalanced indefinite arrays
        b"\xd2\x84" + b"\x1c\x1c\x1c\x1c",                       # reserved additional info
        b"\xd2\x84\x40\xa0\x40\x40",                             # tag 18, four empty parts
        b"\xd2\x83\x40\xa0\x40",                                 # tag 18, three parts
        b"\xd2\x85\x40\xa0\x40\x40\x40",                         # tag 18, five parts
        b"\xd8\x1c\x81\xd8\x1d\x00",                             # shareable referring to itself
        b"\xc2\x5a" + (1_500_000).to_bytes(4, "big") + rng.randbytes(1_500_000),  # 12 Mbit bignum
        b"\xc5\x82\x1b" + (2**63 - 1).to_bytes(8, "big") + b"\x01",               # bigfloat 2^(2^63)
        b"\xc4\x82\x3b" + (2**63 - 1).to_bytes(8, "big") + b"\x01",               # decimal 10^-(2^63)
        b"\xc1\xfb" + np.float64(1e300).tobytes()[::-1],                           # epoch 1e300
        b"\xd8\x23\x78\x20" + b"(a+)+" * 6 + b"$.",                               # regex tag
    ])


def _write_bombs(d: str) -> None:
    d = Path(d)
    white = np.zeros((16000, 16000, 3), np.uint8)
    (d / "webp_16000x16000.webp").write_bytes(cv2.imencode(".webp", white, [cv2.IMWRITE_WEBP_QUALITY, 101])[1])
    del white
    grey = np.full((12000, 12000), 128, np.uint8)
    jpg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 10, cv2.IMWRITE_JPEG_OPTIMIZE, 1])[1].tobytes()
    del grey
    # FF 00 right after SOI: libjpeg skips it as stray bytes, facegate's header scan reads it
    # as a segment and jumps past the real frame header
    (d / "jpeg_12000x12000_ff00.jpg").write_bytes(jpg[:2] + b"\xff\x00\x7f\x7f" + jpg[2:])
    (d / "jpeg_12000x12000.jpg").write_bytes(jpg)
    (d / "png_2000x2000_legal.png").write_bytes(cv2.imencode(".png", np.zeros((2000, 2000, 3), np.uint8))[1])


def bomb_files(work: Path) -> dict[str, Path]:
    """Image bombs, made once in a child process (encoding them takes 1.5 GB, which would
    otherwise stay in this process and in every child it forks)."""
    import multiprocessing

    d = work / "bombs"
    if not d.is_dir():
        d.mkdir(parents=True)
        p = multiprocessing.get_context("fork").Process(target=_write_bombs, args=(str(d),))
        p.start()
        p.join()
    return {f.stem: f for f in sorted(d.iterdir())}


# -- portraits through `facegate verify` ------------------------------------------------------
def portrait_cases(ctx: Ctx, d: Path) -> list[tuple[str, str, Path]]:
    """(name, role, path): role 'reference' or 'probe' (the other side is a good file)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = ctx.rng
    ref = ctx.inputs.ref
    img = cv2.imdecode(np.frombuffer(ref, np.uint8), cv2.IMREAD_COLOR)
    png = cv2.imencode(".png", img)[1].tobytes()
    video = ctx.inputs.video.read_bytes()
    files: dict[str, bytes | None] = {
        "empty.jpg": b"", "truncated.jpg": ref[: len(ref) // 3], "truncated.png": png[: len(png) // 2],
        "header_only.jpg": ref[:200], "corrupt.jpg": bytes(b ^ 0x5A if 300 < i < 2000 else b for i, b in enumerate(ref)),
        "random.jpg": rng.randbytes(20000), "text.jpg": b"this is not an image\n" * 50,
        "gif.gif": b"GIF89a\x10\x00\x10\x00" + rng.randbytes(300), "tiff.tif": b"II*\x00" + rng.randbytes(1000),
        "pdf.jpg": b"%PDF-1.7\n" + rng.randbytes(2000), "html.png": b"<html><body>hi</body></html>",
        "tiny_8x8.png": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
        "png_claims_60000x60000.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2
        + b"\x08\x02\x00\x00\x00" + rng.randbytes(100),
        "jpeg_claims_65000x65000.jpg": b"\xff\xd8\xff\xc0\x00\x11\x08" + (65000).to_bytes(2, "big") * 2
        + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01" + rng.randbytes(100),
        "bmp_claims_70000x70000.bmp": b"BM" + b"\0" * 16 + (70000).to_bytes(4, "little") * 2 + b"\0" * 40,
        "over_40mpx_7000x6000.png": cv2.imencode(".png", np.zeros((6000, 7000, 3), np.uint8))[1].tobytes(),
        "huge_25mb.jpg": None,  # sparse, written below
        "random.webm": rng.randbytes(50000), "truncated_header.webm": video[:3000], "empty.mp4": b"",
    }
    for name, data in files.items():
        if data is not None:
            (d / name).write_bytes(data)
    with open(d / "huge_25mb.jpg", "wb") as f:
        f.write(ref[:2])
        f.truncate(25_000_000)
    (d / "dir.jpg").mkdir(exist_ok=True)
    (d / "frames_one_corrupt").mkdir(exist_ok=True)
    (d / "frames_one_corrupt" / "000.jpg").write_bytes(ref)
    (d / "frames_one_corrupt" / "001.jpg").write_bytes(ref[:500])
    (d / "frames_empty").mkdir(exist_ok=True)
    bombs = bomb_files(ctx.work)  # small files that decode to huge canvases
    shutil.copy(bombs["webp_16000x16000"], d / "bomb_webp_16000x16000.webp")
    shutil.copy(bombs["jpeg_12000x12000_ff00"], d / "bomb_jpeg_12000x12000_ff00.jpg")
    out = []
    for name in sorted(list(files) + ["dir.jpg", "missing.jpg", "bomb_webp_16000x16000.webp",
                                      "bomb_jpeg_12000x12000_ff00.jpg"]):
        out.append((name, "reference", d / name))
    for name in ("truncated.jpg", "random.webm", "truncated_header.webm", "empty.mp4", "frames_one_corrupt",
                 "frames_empty", "bomb_webp_16000x16000.webp", "missing.mp4"):
        out.append((name, "probe", d / name))
    return out


def phase_portraits(ctx: Ctx) -> None:
    """Bad files through `facegate verify`: exit 2 with a reason on one line, bounded memory."""
    d = ctx.work / "portraits"
    good = d / "good.jpg"
    d.mkdir(parents=True, exist_ok=True)
    good.write_bytes(ctx.inputs.ref)
    base = _verify_child(good, good)
    ctx.row("portraits", "good reference and probe: exit / peak RSS (MB)", f"{base[0]} / {base[4]:.0f}", base[0] == 0)
    bound = base[4] + ctx.args.mem_bound_mb
    cases = portrait_cases(ctx, d)
    n_exit = n_line = n_mem = 0
    for name, role, path in cases:
        ref, probe = (path, good) if role == "reference" else (good, path)
        rc, out, err, dt, peak = _verify_child(ref, probe)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ours = [ln for ln in lines if ln.startswith("facegate: ")]
        exit_ok = rc == 2 and len(ours) == 1 and "Traceback" not in err and not out.strip() and dt < 60
        line_ok = exit_ok and len(lines) == 1
        mem_ok = peak <= bound
        n_exit += exit_ok
        n_line += line_ok
        n_mem += mem_ok
        why = ours[-1][10:].replace(str(d) + "/", "") if ours else (lines[-1] if lines else "(nothing on stderr)")
        extra = "" if len(lines) <= 1 else f" [+{len(lines) - len(ours)} native line(s): {next(x for x in lines if x not in ours)[:45]}]"
        ctx.row("portraits", f"{role} {name}: exit {rc}, {dt:.1f} s, peak {peak:.0f} MB", why[:70] + extra,
                exit_ok and line_ok and mem_ok)
    n = len(cases)
    ctx.portrait_failures = n - min(n_exit, n_line, n_mem)
    ctx.row("portraits", "exit 2 with one `facegate:` reason, no traceback", f"{n_exit}/{n}", n_exit == n)
    ctx.row("portraits", "nothing else on stderr (native decoder messages)", f"{n_line}/{n}", n_line == n)
    ctx.row("portraits", f"peak RSS <= good run + {ctx.args.mem_bound_mb:.0f} MB ({bound:.0f} MB)", f"{n_mem}/{n}",
            n_mem == n)
