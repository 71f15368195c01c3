"""`facegate demo`: the whole terminal on this machine, a signed result verified (and with
--backend, stored as the backend stores it)."""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

from ..errors import InputError
from .common import EXIT_NEGATIVE, EXIT_OK, _fail, _jsonable


def _show_value(key: str, value) -> str:
    if key == "models" and isinstance(value, dict):  # sha256 per model file, shortened for the screen
        return " ".join(f"{k}={str(v)[:12]}…" for k, v in value.items())
    if isinstance(value, (dict, list)):
        return json.dumps(_jsonable(value))
    if isinstance(value, bytes):
        return value.hex()
    return "null" if value is None else str(value)


def _timed_say(say, t0: float, msg: str) -> None:
    say(f"[{time.monotonic() - t0:5.2f} s] {msg}")


def cmd_demo(args) -> int:
    """The whole terminal on this machine: the real daemon with a video file as its camera
    and no broker, a signed command in, the signed result out and verified."""
    from .. import demo

    if (args.video is None) != (args.reference is None):
        return _fail("--video and --reference go together")
    workdir = Path(args.workdir) if args.workdir else demo.default_workdir()
    challenge = [s for s in args.challenge.split(",") if s] if args.challenge else None
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (lambda line: print(line, flush=True))
    try:
        runs = demo.plan(workdir, video=args.video, reference=args.reference, liveness=args.liveness,
                         challenge=challenge, synthetic=args.synthetic)
    except InputError as exc:
        return _fail(str(exc))
    for i, run in enumerate(runs, 1):
        say(f"== demo {i}/{len(runs)}: {run.title}")
        for line in run.about:
            say(f"   {line}")
        t0 = time.monotonic()
        try:
            res = demo.run_demo(run.video, run.reference, workdir, run.liveness, run.challenge,
                                functools.partial(_timed_say, say, t0),
                                step_timeout_s=run.step_timeout_s,
                                timeout_s=args.deadline_s or demo.DEFAULT_TIMEOUT_S,
                                screen=getattr(args, "screen", None))
        except InputError as exc:
            return _fail(str(exc))
        except demo.DemoError as exc:
            return _fail(f"demo failed: {exc}", EXIT_NEGATIVE)
        if args.json:
            print(json.dumps({"run": i, "title": run.title, "video": str(run.video), "reference": str(run.reference),
                              "liveness": run.liveness, "challenge": run.challenge, "topic": res.topic,
                              "kid": res.kid.hex(), "public_key": res.public_key.hex(), "message": res.message.hex(),
                              "saved": str(res.saved), "verified": True, "payload": _jsonable(res.payload),
                              "explanation": res.explanation, "timings_s": res.timings_s}), flush=True)
            continue
        print(f"signed result: {len(res.message)} bytes COSE_Sign1 for {res.topic}, saved as {res.saved}")
        for k, v in res.payload.items():
            print(f"  {k:10s} {_show_value(k, v)}")
        print(f"signature verified (kid {res.kid.hex()}, device public key {res.public_key.hex()})")
        print(f"  check it yourself: facegate verify-result --pubkey {res.public_key.hex()} --topic {res.topic} "
              f"{res.saved}")
        print(f"outcome: {res.explanation}")
        if args.backend:
            _demo_backend(res, workdir)
        print("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in res.timings_s.items()) + "\n", flush=True)
    return EXIT_OK


def _demo_backend(res, workdir: Path) -> None:
    """The backend's side of a demo result: the device key enrolled in a SQLite store in the
    work dir, the result stored as a serve worker stores it, a copy on another terminal's
    topic quarantined."""
    from ..backend.registry import Registry
    from ..backend.store import Store
    from ..backend.worker import ingest

    db = workdir / "backend.db"
    store = Store.sqlite(db)
    try:
        dev, prefix = res.result.dev, res.topic.rsplit("/", 2)[0]
        if not any(k.state == "active" and k.pub == res.public_key for k in store.keys(dev)):
            Registry(store).enrol(dev, res.public_key, time.time(), replace=True)
        print(f"backend: {dev} enrolled (kid {res.kid.hex()}) in {db}")
        print(f"backend: result seq {res.result.seq} {ingest(store, prefix, res.topic, res.message, 'demo')}"
              f" (audit table 'results', key ({dev}, {res.result.seq}))")
        again = ingest(store, prefix, res.topic, res.message, "demo")
        copied = ingest(store, prefix, f"{prefix}/another-kiosk/result", res.message, "demo")
        print(f"backend: the same bytes again: {again}; copied to another-kiosk's topic: {copied}")
    finally:
        store.close()
