"""soak phase fuzz: malformed, unauthenticated and signed-but-bad commands over MQTT, each
answer (or its absence) checked against the documented rule."""
from __future__ import annotations

import math
import os
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cbor2
import cv2
import numpy as np

from facegate import signing  # key files and command signing only
from soak_common import (
    CLOCK_SKEW_S,
    CMD,
    DOCUMENTED,
    FIELDS,
    HANG_S,
    MAX_COMMAND_BYTES,
    REPLIES,
    ROOT,
    Collector,
    Ctx,
    Inputs,
    Res,
    clear_hwm,
    command,
    cose_verify,
    finish,
    log,
    new_daemon,
    proc_status,
    quantiles,
)
from soak_inputs import (
    bomb_files,
    cbor_oddities,
    rand_value,
    sign_raw,
)


@dataclass
class Case:
    family: str
    payload: bytes
    expect: str | None        # exact reason, "session", or None (any documented answer)
    authentic: bool = False
    answerable: bool | None = False  # AnswerOracle.expect: True one answer due, False none, None either
    response_topic: str = REPLIES
    sent: float = 0.0
    answer: Res | None = None
    peak_mb: float | None = None


class Fuzzer:
    """Seeded generators for verify commands; `authentic` is decided independently."""

    def __init__(self, rng: random.Random, key: signing.SigningKey, inputs: Inputs, work: Path):
        self.rng, self.key, self.inputs = rng, key, inputs
        self.other = signing.SigningKey.generate()
        self.valid_sent: list[tuple[float, dict]] = []
        self.refs = self._references(work)
        self.families = [  # (weight, generator)
            (14, self.random_bytes), (8, self.cbor_structure), (4, self.cbor_odd), (10, self.truncated),
            (10, self.bitflip), (1, self.oversized), (6, self.header), (5, self.unknown_key),
            (3, self.wrong_topic), (22, self.signed_bad_payload), (9, self.bad_reference),
            (2, self.replay), (3, self.unsigned), (3, self.valid)]

    # inputs for references
    def _references(self, work: Path) -> dict[str, bytes]:
        ref = self.inputs.ref
        img = cv2.imdecode(np.frombuffer(ref, np.uint8), cv2.IMREAD_COLOR)
        big = cv2.resize(img, (2000, 2000))  # 4,000,000 px: exactly max_reference_pixels
        over = np.zeros((2001, 2000, 3), np.uint8)
        png_hdr = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
        jpg_sof = b"\xff\xd8\xff\xc0\x00\x11\x08" + (65000).to_bytes(2, "big") * 2 + b"\x03" + b"\x01\x22\x00" * 3
        return {
            "grey_png": cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))[1].tobytes(),
            "big_valid_jpeg": cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
            "over_limit_png": cv2.imencode(".png", over)[1].tobytes(),
            "tiny_png": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
            "blank_png": cv2.imencode(".png", np.full((300, 300, 3), 128, np.uint8))[1].tobytes(),
            "png_header_60000": png_hdr + self.rng.randbytes(200),
            "jpeg_sof_65000": jpg_sof + self.rng.randbytes(300),
            "truncated_jpeg": ref[: len(ref) // 3],
            "gif": b"GIF89a" + self.rng.randbytes(500),
            "tiff": b"II*\x00" + self.rng.randbytes(500),
            "pdf": b"%PDF-1.4\n" + self.rng.randbytes(500),
            "bmp_negative": b"BM" + b"\0" * 16 + (-70000).to_bytes(4, "little", signed=True) * 2 + b"\0" * 40,
            "random_1_9mb": b"\xff\xd8" + self.rng.randbytes(1_900_000),
        }

    def good(self, **over) -> dict:
        now = time.time()
        p = {"request_id": uuid.uuid4().hex, "nonce": os.urandom(16), "iat": int(now), "exp": int(now) + 120,
             "reference": self.inputs.ref if self.rng.random() < 0.5 else self.inputs.stranger}
        p.update(over)
        return p

    def next(self) -> Case:
        total = sum(w for w, _ in self.families)
        x = self.rng.uniform(0, total)
        for w, gen in self.families:
            x -= w
            if x <= 0:
                return gen()
        return self.families[-1][1]()

    # generators
    def random_bytes(self) -> Case:
        n = self.rng.choice([0, 1, 2, 3, self.rng.randint(4, 64), self.rng.randint(65, 4096)])
        prefix = self.rng.choice([b"", b"\xd2", b"\xd2\x84", b"\xd2\x84\x4a"])
        return Case("random_bytes", prefix + self.rng.randbytes(n), None)

    def cbor_structure(self) -> Case:
        r = self.rng.random()
        if r < 0.4:
            body = cbor2.dumps(rand_value(self.rng))
        elif r < 0.8:
            body = cbor2.dumps(cbor2.CBORTag(18, [rand_value(self.rng) for _ in range(self.rng.choice([0, 3, 4, 4, 5]))]))
        else:
            body = cbor2.dumps(cbor2.CBORTag(self.rng.choice([17, 98, 96, 19]), [b"", {}, b"", b""]))
        return Case("cbor_structure", body, None)

    def cbor_odd(self) -> Case:
        return Case("cbor_oddities", cbor_oddities(self.rng), None)

    def truncated(self) -> Case:
        m = signing.sign(self.good(), self.key, CMD)
        return Case("truncated", m[: self.rng.randrange(len(m))], None)

    def bitflip(self) -> Case:
        m = bytearray(signing.sign(self.good(), self.key, CMD))
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(min(len(m), 120)) if self.rng.random() < 0.6 else self.rng.randrange(len(m))
            op = self.rng.random()
            if op < 0.6:
                m[i] = self.rng.randrange(256)
            elif op < 0.8:
                del m[i]
            else:
                m.insert(i, self.rng.randrange(256))
        return Case("bitflip", bytes(m), None)

    def oversized(self) -> Case:
        p = self.good(reference=b"\xff\xd8" + self.rng.randbytes(MAX_COMMAND_BYTES))
        return Case("oversized", signing.sign(p, self.key, CMD), "too_large")

    def header(self) -> Case:
        kid = self.key.kid
        variants = [
            ({1: -7, 4: kid}, "bad_header"), ({4: kid}, "bad_header"), ({1: -8}, "bad_header"),
            ({1: -8, 4: "kid"}, "bad_header"), ([1, -8], "bad_header"), ({1: -8, 4: b"12345678"}, "unknown_key"),
            ({1: -8, 4: kid[:4]}, "unknown_key"), ({1: "EdDSA", 4: kid}, "bad_header")]
        hdr, expect = self.rng.choice(variants)
        r = self.rng.random()
        if r < 0.15:
            return Case("header", sign_raw(cbor2.dumps(self.good()), self.key, protected=b"\xff\xfe"), "bad_header")
        if r < 0.3:  # a valid signature over a valid command, but the unprotected header is not a map
            return Case("header", sign_raw(cbor2.dumps(self.good()), self.key, unprotected=[1, 2]), "not_cose")
        if r < 0.45:  # the signature cut short / empty / 64 bytes of noise
            parts = list(cbor2.loads(signing.sign(self.good(), self.key, CMD)).value)
            parts[3] = self.rng.choice([b"", parts[3][:32], self.rng.randbytes(64)])
            return Case("header", cbor2.dumps(cbor2.CBORTag(18, parts)), "bad_signature")
        return Case("header", sign_raw(cbor2.dumps(self.good()), self.key, protected=cbor2.dumps(hdr)), expect)

    def unknown_key(self) -> Case:
        return Case("unknown_key", signing.sign(self.good(), self.other, CMD), "unknown_key")

    def wrong_topic(self) -> Case:
        return Case("wrong_topic", signing.sign(self.good(), self.key, f"{ROOT}/cmd/other"), "bad_signature")

    def signed_bad_payload(self) -> Case:
        rng = self.rng
        r = rng.random()
        if r < 0.08:
            return Case("signed_bad_payload", sign_raw(rng.randbytes(rng.randint(0, 100)), self.key), None)
        if r < 0.16:
            return Case("signed_bad_payload", sign_raw(cbor2.dumps(rand_value(rng)), self.key), None)
        p = self.good()
        now = time.time()
        for _ in range(rng.randint(1, 3)):
            m = rng.random()
            name = rng.choice(FIELDS + ("challenge",))
            if m < 0.2:
                p.pop(name, None)
            elif m < 0.55:
                p[name] = rand_value(rng)
            elif m < 0.65:
                p[rng.choice(["extra", "similarity", 7, b"x"])] = rand_value(rng)
            elif m < 0.8:
                p["iat"], p["exp"] = rng.choice([(now - 900, now - 600), (now + 600, now + 700), (now, now + 10**6),
                                                 (now, now - 1), (2**70, 2**71), (-2**80, now), (10**400, 10**401)])
            elif m < 0.9:
                p["challenge"] = rng.choice([["blink"] * 7, ["blink", "wink"], [["blink"]], "blink", {"s": 1},
                                             ["turn_left", "turn_right"], [], None])
                if p["challenge"] is None:
                    del p["challenge"]
            else:
                p[rng.choice(["request_id", "nonce"])] = rng.choice(["", "x" * 129, b"", b"n" * 65, 5, None])
        try:
            body = cbor2.dumps(p)
        except (TypeError, ValueError, OverflowError, cbor2.CBOREncodeError):
            body = cbor2.dumps({"request_id": "x"})
        return Case("signed_bad_payload", sign_raw(body, self.key), None)

    def bad_reference(self) -> Case:
        name = self.rng.choice(sorted(self.refs) + ["random", "bitflipped_jpeg"])
        if name == "random":
            ref = self.rng.randbytes(self.rng.randint(0, 5000))
        elif name == "bitflipped_jpeg":
            b = bytearray(self.inputs.ref)
            for _ in range(self.rng.randint(1, 50)):
                b[self.rng.randrange(len(b))] = self.rng.randrange(256)
            ref = bytes(b)
        else:
            ref = self.refs[name]
        return Case(f"reference:{name}", signing.sign(self.good(reference=ref), self.key, CMD), None)

    def replay(self) -> Case:
        recent = [p for t, p in self.valid_sent if time.time() - t < 60]  # still within its lifetime
        if not recent:
            return self.valid()
        old = self.rng.choice(recent)
        if self.rng.random() < 0.5:
            return Case("replay", signing.sign(old, self.key, CMD), "replayed_request_id")
        return Case("replay", signing.sign(self.good(nonce=old["nonce"]), self.key, CMD), "replayed_nonce")

    def unsigned(self) -> Case:
        return Case("unsigned", cbor2.dumps(self.good()), "not_cose")

    def valid(self) -> Case:
        p = self.good()
        self.valid_sent = self.valid_sent[-50:] + [(time.time(), p)]
        return Case("valid", signing.sign(p, self.key, CMD), "session")

    def bombs(self, files: dict[str, Path]) -> list[Case]:
        """Small files that decode to huge canvases (sent one at a time, peak RSS measured)."""
        return [Case(f"bomb:{name}", signing.sign(self.good(reference=path.read_bytes()), self.key, CMD), None)
                for name, path in files.items()]


def classify(c: Case, public: bytes) -> str | None:
    """None when the answer (or its absence) follows a documented rule, else why not."""
    a = c.answer
    if c.answerable is False or (c.answerable is None and a is None):
        return None if a is None else f"answered ({a.decision}/{a.reason}) though it must not be"
    if a is None:
        return "unanswered"
    if a.t - c.sent > HANG_S:
        return f"answered after {a.t - c.sent:.1f} s"
    if a.session is not None or a.decision != "rejected":
        if not c.authentic:
            return f"unauthenticated command started a session ({a.decision})"
        if c.expect not in (None, "session"):
            return f"session started, expected {c.expect}"
        return None
    if a.reason not in DOCUMENTED:
        return f"undocumented reason {a.reason}"
    if c.expect == "session" and a.reason != "busy":
        return f"valid command rejected: {a.reason}"
    if c.expect not in (None, "session") and a.reason != c.expect:
        return f"expected {c.expect}, got {a.reason}"
    return None


def authentic(payload: bytes, public: bytes) -> bool:
    try:
        return isinstance(cose_verify(payload, public, CMD), dict)
    except Exception:
        return False


class AnswerOracle:
    """README's rule, judged independently and in the order the cases are sent: only an
    authentic command (signed by the backend key for the command topic, at most
    max_command_bytes, unprotected header a map) whose payload is a map with a well-typed
    request_id and nonce, neither of them still on record from an earlier command, gets
    one signed answer; everything else is counted, never answered. expect() says True (one
    answer due), False (none) or None (either): an `exp` in the past may lie at or below
    the daemon's replay floor, and a record near its purge may or may not be there yet."""

    PURGE_SLACK_S = 5.0  # the daemon purges every health_interval_s (1 s here), give or take

    def __init__(self, public: bytes):
        self.public = public
        self.records: dict[tuple[str, object], tuple[float, bool]] = {}  # id -> (kept until, surely recorded)

    def expect(self, payload: bytes, family: str, now: float) -> bool | None:
        if len(payload) > MAX_COMMAND_BYTES or family == "replay":
            return False
        try:
            p = cose_verify(payload, self.public, CMD)
            unprotected = cbor2.loads(payload).value[1]
        except Exception:
            return False
        if not isinstance(p, dict) or not isinstance(unprotected, Mapping):  # RFC 9052: a map
            return False
        rid, nonce, exp = p.get("request_id"), p.get("nonce"), p.get("exp")
        if not (isinstance(rid, str) and 0 < len(rid) <= 128 and isinstance(nonce, bytes) and 0 < len(nonce) <= 64):
            return False
        finite = not isinstance(exp, bool) and isinstance(exp, (int, float)) and _finite(exp)
        keep_until = float(exp) + CLOCK_SKEW_S if finite else float("inf")
        verdict: bool | None = None if finite and float(exp) < now - CLOCK_SKEW_S else True
        keys = (("request_id", rid), ("nonce", nonce))
        prior = [self.records[k] for k in keys if k in self.records]
        if any(sure and until > now + self.PURGE_SLACK_S for until, sure in prior):
            return False  # a replay of a command still on record
        if any(until > now - self.PURGE_SLACK_S for until, _ in prior):
            verdict = None  # its record may or may not be purged yet
        for k in keys:
            self.records[k] = (keep_until, verdict is True)
        return verdict


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def phase_fuzz(ctx: Ctx) -> None:
    a = ctx.args
    b = ctx.broker("fuzz-broker")
    d = new_daemon(ctx, "fuzz", b, max_pending=100).start()
    be = Collector(b, d.public)
    fz = Fuzzer(ctx.rng, ctx.key, ctx.inputs, ctx.work)
    oracle = AnswerOracle(ctx.key.public)
    cases: list[Case] = []
    failures: dict[str, int] = {}
    t0 = time.monotonic()
    rss = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        base = proc_status(d.pid)

        def fire(c: Case) -> None:
            c.authentic = authentic(c.payload, ctx.key.public)
            c.answerable = oracle.expect(c.payload, c.family, time.time())
            corr = len(cases).to_bytes(4, "big")
            cases.append(c)
            c.sent = time.monotonic()
            be.send(c.payload, response_topic=c.response_topic, corr=corr)

        window = 32
        bomb_paths = bomb_files(ctx.work)
        odd_topics = ("facegate/v1/replies/backend/" + "x" * 2000, "other/not-allowed", "facegate/v1/replies/backend/ünïcode")
        n_main = a.fuzz - len(bomb_paths) - len(odd_topics) - 1  # - 1: the wildcard case, on its own daemon
        pending: list[int] = []
        for i in range(n_main):
            fire(fz.next())
            if cases[-1].answerable is True:  # only answers are awaited; the rest is counted in health
                pending.append(len(cases) - 1)
            while len(pending) >= window:
                be.wait(lambda: pending[0].to_bytes(4, "big") in be.replies, HANG_S * 3)
                while pending and pending[0].to_bytes(4, "big") in be.replies:
                    pending.pop(0)
                if pending and time.monotonic() - cases[pending[0]].sent > HANG_S * 3:
                    pending.pop(0)  # unanswered: judged below
                if not d.alive():
                    raise RuntimeError(f"daemon died during fuzzing:\n{d.logtail()}")
            if i % 500 == 0:
                rss.append((i, proc_status(d.pid).get("VmRSS", 0) / 1024))
                if i % 2000 == 0:
                    log(f"  fuzz {i}/{n_main}")
        be.wait(lambda: all(p.to_bytes(4, "big") in be.replies for p in pending), HANG_S * 3)
        # image bombs: one at a time, the daemon's peak RSS around each
        for c in fz.bombs(bomb_paths):  # signed now: a command lives 120 s
            clear_hwm(d.pid)
            before = proc_status(d.pid).get("VmRSS", 0) / 1024
            fire(c)
            idx = len(cases) - 1
            be.wait(lambda idx=idx, c=c: idx.to_bytes(4, "big") in be.replies or c.answerable is not True, 60)
            c.peak_mb = proc_status(d.pid).get("VmHWM", 0) / 1024 - before
        # the MQTT 5 response topic is attacker-chosen: valid, not allowed by the ACL, odd
        rt_cases = []
        for rt in odd_topics:
            c = Case(f"response_topic:{rt[:24]}", b"\xffgarbage", "not_cose", response_topic=rt)
            fire(c)
            rt_cases.append(c)
        silent = sum(1 for c in cases if c.answerable is False)
        # every case the daemon must not answer is counted once in health's `ignored`
        try:
            st = d.wait_status(lambda s: sum(s["health"].get("ignored", {}).values()) >= silent, HANG_S * 3,
                               fresh_after=time.time())
        except TimeoutError:
            pass
        time.sleep(1.5)
        st = d.wait_status(lambda s: True, 10, fresh_after=time.time())
        for i, c in enumerate(cases):
            c.answer = be.replies.get(i.to_bytes(4, "big"))
        silent += sum(1 for c in cases if c.answerable is None and c.answer is None)
        # an answer to unauthenticated input would come on R/result (an odd response topic
        # is never honoured for it): judge those cases by the result stream
        for c in rt_cases:
            c.answer = c.answer or next((r for r in be.results if r.reason == "not_cose" and r.t >= c.sent), None)
        for c in cases:
            why = classify(c, d.public)
            if why is None and c.peak_mb is not None and c.peak_mb > a.mem_bound_mb:
                why = f"peak RSS +{c.peak_mb:.0f} MB > {a.mem_bound_mb} MB"
            if why:
                key = f"{c.family}: {why}"
                failures[key] = failures.get(key, 0) + 1
        ignored = st["health"].get("ignored", {})
        if sum(ignored.values()) != silent:
            failures[f"ignored counted {sum(ignored.values())} != cases that must stay unanswered {silent}"] = 1
        n_fail = sum(failures.values())
        elapsed = time.monotonic() - t0
        families: dict[str, int] = {}
        for c in cases:
            families[c.family.split(":")[0]] = families.get(c.family.split(":")[0], 0) + 1
        sessions = sum(1 for c in cases if c.answer and c.answer.session)
        unauth_sessions = sum(1 for c in cases if c.answer and c.answer.session and not c.authentic)
        lat = [c.answer.t - c.sent for c in cases if c.answer]
        reasons: dict[str, int] = {}
        for c in cases:
            if c.answer and c.answer.decision == "rejected":
                reasons[c.answer.reason] = reasons.get(c.answer.reason, 0) + 1
        ctx.totals["fuzz_cases"] += len(cases)
        ctx.totals["fuzz_failures"] += n_fail
        ctx.totals["sessions"] += sessions
        ctx.row("fuzz", "cases over MQTT / wall time (s)", f"{len(cases)} / {elapsed:.0f}", None)
        ctx.row("fuzz", "families", ", ".join(f"{k} {v}" for k, v in sorted(families.items())), None)
        ctx.row("fuzz", "answers: sessions (authentic commands) / rejected", f"{sessions} / {sum(reasons.values())}",
                None)
        ctx.row("fuzz", "rejection reasons", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda x: -x[1])),
                all(k in DOCUMENTED for k in reasons))
        ctx.row("fuzz", "sessions started by an unauthenticated command", unauth_sessions, unauth_sessions == 0)
        ctx.row("fuzz", "unanswered by rule (health `ignored`): cases / counted",
                f"{silent} / {sum(ignored.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(
                    ignored.items(), key=lambda x: -x[1])), sum(ignored.values()) == silent)
        ctx.row("fuzz", "answer latency p50 / p99 / max (ms)",
                " / ".join(f"{x * 1000:.0f}" for x in (*quantiles(lat)[::2], max(lat) if lat else float('nan'))),
                (max(lat) if lat else 0) < HANG_S)
        for c in cases:
            if c.peak_mb is not None:
                ctx.row("fuzz", f"{c.family}: answer / daemon peak RSS growth",
                        f"{c.answer.reason if c.answer else 'none'} / +{c.peak_mb:.0f} MB",
                        c.peak_mb <= a.mem_bound_mb)
        ctx.row("fuzz", "daemon RSS during the stream (MB, every 500 cases)",
                " ".join(f"{m:.0f}" for _, m in rss) + f"; start {base.get('VmRSS', 0) / 1024:.0f}", None)
        ctx.row("fuzz", "failures", f"{n_fail}" + ("" if not failures else ": " + "; ".join(
            f"{k} x{v}" for k, v in sorted(failures.items()))), n_fail == 0)
        ctx.fuzz_failures = failures
    finally:
        be.close()
        alive = d.alive()
        finish(ctx, "fuzz", d)
        if not alive:
            ctx.row("fuzz", "daemon crashed", "yes", False)
        b.stop()
    # the wildcard response topic, on its own daemon: does it hold up later results?
    phase_fuzz_wildcard(ctx)


def phase_fuzz_wildcard(ctx: Ctx) -> None:
    """An authentic command whose MQTT 5 ResponseTopic holds a wildcard, then a valid
    command: is the valid command still answered?"""
    b = ctx.broker("wild-broker")
    d = new_daemon(ctx, "wild", b).start()
    be = Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        bad, _ = command(ctx.key, b"not an image")  # authentic: answered, but not on a wildcard
        be.send(bad, response_topic="facegate/v1/replies/+/x", corr=b"w")
        time.sleep(0.5)
        msg, c = command(ctx.key, ctx.inputs.ref)
        be.send(msg)
        r = be.wait(lambda: be.by_request().get(c["request_id"]), 15)
        depth = d.status().get("health", {}).get("outbox_depth")
        ok = bool(r)
        ctx.totals["fuzz_cases"] += 1
        ctx.totals["fuzz_failures"] += 0 if ok else 1
        ctx.row("fuzz", "bad command with ResponseTopic 'facegate/v1/replies/+/x', then a valid command: answered",
                f"{'yes' if ok else 'NO, delivery stalled'} (outbox depth {depth})", ok)
    finally:
        be.close()
        finish(ctx, "fuzz", d)
        b.stop()
