"""The `facegate` command line: argument parsing and all printing.

Exit codes: 0 success / match, 1 a negative decision or failed check, 2 bad input or
configuration.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, modelstore, status
from . import config as config_mod
from .errors import FacegateError, InputError
from .status import HealthDoc, StatusDoc

EXIT_OK, EXIT_NEGATIVE, EXIT_BAD_INPUT = 0, 1, 2


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"facegate: {msg}", file=sys.stderr)
    return code


def _config(args) -> config_mod.Config:
    cfg = config_mod.load(getattr(args, "config", None))
    updates = {}
    if getattr(args, "precision", None):
        updates["precision"] = args.precision
    if getattr(args, "threads", None):
        updates["num_threads"] = args.threads
    if updates:
        cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update=updates)})
    return cfg


def _store(cfg: config_mod.Config, args=None) -> modelstore.ModelStore:
    d = getattr(args, "dir", None) or cfg.models.dir or None
    return modelstore.ModelStore(d)


def make_runner(path: Path, num_threads: int):
    from .adapters.litert import make_runner as litert_runner

    return litert_runner(path, num_threads)


def build_verifier(cfg: config_mod.Config):
    from .pipeline import Verifier

    return Verifier.from_store(_store(cfg), cfg, make_runner)


# -- verify ---------------------------------------------------------------------------
class _Models:
    """The verifier and the liveness models, loaded on first use (after the inputs were
    read, so bad input fails fast) and then kept for every further verification."""

    def __init__(self, cfg: config_mod.Config, args):
        self.cfg, self.args = cfg, args
        self._verifier = self._liveness = None

    def verifier(self):
        if self._verifier is None:
            self._verifier = build_verifier(self.cfg)
        return self._verifier

    def liveness(self):
        """The liveness plan of --liveness (its models loaded once); None for `none`."""
        if self._liveness is None:
            self._liveness = build_liveness(self.cfg, self.args)
        return self._liveness


def _verify_one(models: _Models, cfg: config_mod.Config, args, reference_path: Path, probe_path: Path) -> dict:
    """One verification on files, as the JSON object `verify` prints; InputError on bad input."""
    from .adapters.files import FileCamera
    from .imageio import is_image_path, read_image

    lim = (cfg.verify.max_image_bytes, cfg.verify.max_image_pixels)
    # with liveness, even a single image is a (one-frame) session through the camera path
    as_frames = args.liveness != "none" or not is_image_path(probe_path)
    reference = read_image(reference_path, *lim)
    if as_frames:
        from .session import Session

        with FileCamera(probe_path, max_bytes=lim[0] * 10, max_pixels=lim[1]) as camera:
            verifier = models.verifier()
            steps = None if args.challenge is None else [s for s in args.challenge.split(",") if s]
            outcome = Session.planned(verifier, models.liveness(), steps, stop_early=False).run(
                reference, camera.frames())
            decision, timings = outcome.decision, outcome.timings_ms
    else:
        probe = read_image(probe_path, *lim)
        verifier = models.verifier()
        decision, timings = verifier.verify_image(reference, probe)
    out = {
        "decision": decision.decision,
        "reason": decision.reason,
        "similarity": None if decision.similarity is None else round(decision.similarity, 4),
        "threshold": cfg.verify.match_threshold,
        "frames_used": decision.frames_used,
        "quality": decision.quality,
        "timings_ms": timings,
        "precision": modelstore.ModelStore.variant_of(verifier.models.get("embed")),
    }
    if decision.liveness:
        out["liveness"] = {"mode": args.liveness, **decision.liveness}
    return out


def _read_pairs_file(path: str) -> list[tuple[Path, Path]]:
    """`REFERENCE<TAB>PROBE` per line (blank lines and `#` comments skipped)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read pairs file {path}: {exc}") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not all(x.strip() for x in parts):
            raise InputError(f"{path} line {n}: expected REFERENCE<TAB>PROBE, got {line!r}")
        pairs.append((Path(parts[0].strip()), Path(parts[1].strip())))
    if not pairs:
        raise InputError(f"pairs file {path} lists no pairs")
    return pairs


def cmd_verify(args) -> int:
    if args.pairs is None and (args.reference is None or args.probe is None):
        return _fail("verify needs --reference and --probe, or --pairs FILE")
    if args.pairs is not None and (args.reference is not None or args.probe is not None):
        return _fail("--pairs goes without --reference and --probe")
    cfg = _config(args)
    models = _Models(cfg, args)
    if args.pairs is None:
        try:
            out = _verify_one(models, cfg, args, Path(args.reference), Path(args.probe))
        except InputError as exc:
            return _fail(str(exc))
        print(json.dumps(out))
        return EXIT_OK if out["decision"] == "match" else EXIT_NEGATIVE
    # batch: the models are loaded once; one JSON line per pair, in order; a pair with bad
    # input gets an `error` line and the batch goes on (exit 2 at the end)
    try:
        pairs = _read_pairs_file(args.pairs)
    except InputError as exc:
        return _fail(str(exc))
    bad = 0
    for reference, probe in pairs:
        try:
            out = _verify_one(models, cfg, args, reference, probe)
        except InputError as exc:
            bad += 1
            out = {"decision": "error", "reason": "bad_input", "error": str(exc)}
        print(json.dumps({"reference": str(reference), "probe": str(probe), **out}), flush=True)
    return EXIT_BAD_INPUT if bad else EXIT_OK


def build_liveness(cfg: config_mod.Config, args):
    """The LivenessPlan that --liveness asks for (None for `none`): the models are loaded
    here, only as needed, once; each session makes its own check from it (random
    challenges drawn from one generator seeded by --seed)."""
    import random

    from .pipeline import build_liveness as load

    return load(_store(cfg), cfg, make_runner, getattr(args, "liveness", "none"), random.Random(args.seed))


# -- models ---------------------------------------------------------------------------
def cmd_models_fetch(args) -> int:
    cfg = _config(args)
    store = _store(cfg, args)
    mirror = Path(args.mirror) if args.mirror else None
    if mirror is not None and not mirror.is_dir():
        return _fail(f"mirror directory {mirror} does not exist")
    results = modelstore.fetch(store.model_dir, mirror, include_optional=args.all)
    for r in results:
        print(f"{r.status:9s} {r.entry.task:12s} {r.entry.variant:8s} {r.entry.file:36s} {r.detail}")
    refused = [r for r in results if r.status == "refused"]
    missing = modelstore.missing_required(results)
    print(f"model dir: {store.model_dir}")
    if refused:
        return _fail(f"{len(refused)} file(s) refused: contents differ from the manifest", EXIT_NEGATIVE)
    if missing:
        return _fail("no usable model for: " + ", ".join(missing), EXIT_NEGATIVE)
    return EXIT_OK


def cmd_models_verify(args) -> int:
    cfg = _config(args)
    store = _store(cfg, args)
    results = modelstore.verify(store.model_dir)
    for r in results:
        print(f"{r.status:9s} {r.entry.task:12s} {r.entry.variant:8s} {r.entry.file:36s} {r.detail}")
    bad = [r for r in results if r.status == "tampered"]
    missing = modelstore.missing_required(results)
    if bad:
        return _fail(f"{len(bad)} installed model(s) differ from the manifest: refused", EXIT_NEGATIVE)
    if missing:
        return _fail("not installed: " + ", ".join(missing), EXIT_NEGATIVE)
    print("models: ok")
    return EXIT_OK


def cmd_models_list(args) -> int:
    for e in modelstore.load_manifest():
        print(f"{e.task:12s} {e.variant:8s} {e.file:36s} {e.sha256[:16]}  {e.input}  [{e.license}]")
    return EXIT_OK


def time_runner(runner, runs: int) -> float:
    """Median milliseconds of `runs` invocations on zero-valued inputs (after warm-up)."""
    xs = [np.zeros(s.shape, s.dtype) for s in runner.inputs]
    for _ in range(3):
        runner.run(*xs)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(*xs)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1000)


def cmd_models_bench(args) -> int:
    import platform

    cfg = _config(args)
    store = _store(cfg, args)
    rows = []
    for e in store.manifest:
        if not (store.model_dir / e.file).is_file():
            continue
        path, _ = store.path(e.task, e.variant)
        cells = []
        for nt in args.threads_list:
            r = make_runner(path, nt)
            cells.append(time_runner(r, args.runs))
        rep = r.delegate_report()
        rows.append((e, cells, rep))
    heads = " ".join(f"{nt}t_ms".rjust(7) for nt in args.threads_list)
    print(f"{'task':12s} {'variant':8s} {heads} delegated partitions")
    for e, cells, rep in rows:
        print(f"{e.task:12s} {e.variant:8s} " + " ".join(f"{c:7.2f}" for c in cells)
              + f" {rep.delegated:4d}/{rep.nodes:<4d} {rep.partitions:10d}")
    for task in ("embed", "pad_v2", "pad_v1se"):
        timed = [(cells[0], e.variant) for e, cells, _ in rows if e.task == task]
        if timed:
            print(f"fastest {task} on {platform.machine()}: {min(timed)[1]}")
    return EXIT_OK


# -- daemon, keys, results ------------------------------------------------------------
def cmd_run(args) -> int:
    import logging

    from . import daemon as daemon_mod

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_mod.load(args.config)
    d = daemon_mod.build(cfg, args.config)
    daemon_mod.install_signal_handlers(d)
    return d.run()


def _key_path(args):
    from .signing import key_path

    if getattr(args, "path", None):
        return Path(args.path)
    doc = _status_doc(args)
    if doc and (doc.get("key") or {}).get("source") == "credential":
        raise FacegateError("the daemon signs with its systemd credential (LoadCredential=signing.key:...); "
                            "give --path /etc/facegate/signing.key (the credential's source) and, after "
                            "'keys rotate', run 'systemctl restart facegate'")
    return key_path(config_mod.load(args.config))


def _print_key(key, path, as_json: bool) -> None:
    info = {"path": str(path), "kid": key.kid.hex(), "public_key": key.public.hex(), "algorithm": "EdDSA (Ed25519)"}
    if as_json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:11s} {v}")


def cmd_keys_show(args) -> int:
    from .signing import load_key

    path = _key_path(args)
    if not path.exists():
        return _fail(f"no signing key at {path} yet (created on first start, or by 'facegate keys rotate')",
                     EXIT_NEGATIVE)
    _print_key(load_key(path), path, args.json)
    return EXIT_OK


def cmd_keys_init(args) -> int:
    """Create a key only where there is none (a device's before first start, a backend's)."""
    from .signing import SigningKey, save_key

    path = _key_path(args)
    if path.exists():
        return _fail(f"{path} exists; 'facegate keys rotate' replaces a key", EXIT_NEGATIVE)
    key = SigningKey.generate()
    save_key(key, path)
    _print_key(key, path, args.json)
    return EXIT_OK


def cmd_keys_rotate(args) -> int:
    """A new key replaces the old (kept as .old); a running daemon is told with SIGHUP
    and re-publishes its attestation."""
    import os
    import signal as signal_mod

    from .signing import SigningKey, save_key

    path = _key_path(args)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".old"))
    key = SigningKey.generate()
    save_key(key, path)
    _print_key(key, path, args.json)
    pid = _daemon_pid(args)
    if pid:
        from .adapters.systemd import signal_daemon

        # status.json is the service user's to write: its pid is only a candidate
        state_dir = Path(config_mod.load(args.config).daemon.state_dir)
        why_not = signal_daemon(pid, os.stat(state_dir).st_uid, signal_mod.SIGHUP)
        if why_not is None:
            print(f"told the running daemon (pid {pid}) to reload", file=sys.stderr)
        else:
            print(f"did not signal the status file's pid: {why_not}; restart the daemon to load the new key",
                  file=sys.stderr)
    return EXIT_OK


def _status_doc(args) -> StatusDoc | None:
    return status.read(config_mod.load(args.config).daemon.state_dir)


def _daemon_pid(args, doc: StatusDoc | None = None) -> int | None:
    """The running daemon's pid from its status file (`doc` when already read), or None."""
    import os

    doc = doc if doc is not None else _status_doc(args)
    pid = doc.get("pid") if doc else None
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def _ignored_text(ignored: dict) -> str:
    """Input never answered (unauthenticated, replayed, ...): the total and the top reasons."""
    top = sorted(ignored.items(), key=lambda kv: -kv[1])[:3]
    return f"{sum(ignored.values())} ignored" + (f" ({', '.join(f'{k} {v}' for k, v in top)})" if top else "")


def _selftest_line(chosen: dict) -> str:
    """The models' known-answer self-tests at the daemon's start: variant per task, how
    long its test took, and any faster variant refused first (with why)."""
    parts = []
    for task, c in chosen.items():
        refused = "".join(f"; {r}" for r in c.get("refused") or ())
        parts.append(f"{task}={c.get('variant')} passed ({c.get('kat_ms', 0):.0f} ms{refused})")
    return ", ".join(parts) or "-"


def cmd_status(args) -> int:
    doc = _status_doc(args)
    running = _daemon_pid(args, doc) is not None
    if doc is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("daemon: not running (no status file)")
        return EXIT_NEGATIVE
    doc["running"] = running
    if args.json:
        print(json.dumps(doc))
        return EXIT_OK if running else EXIT_NEGATIVE
    h: HealthDoc = doc.get("health") or HealthDoc()
    st: dict = dict(doc.get("state") or {})
    last: dict = dict(doc.get("last_decision") or {})
    synced = h.get("clock_synchronized")
    lines = [
        ("daemon", f"{'running' if running else 'NOT running'} (pid {doc.get('pid')}, version {doc.get('version')})"),
        ("device", f"{doc.get('device_id')}  kid {doc.get('kid')}"),
        ("state", f"{st.get('state')}" + (f" step={st.get('step')}" if st.get("step") else "")),
        ("broker", "connected" if doc.get("broker", {}).get("connected") else
         f"not connected {doc.get('broker', {}).get('error', '')}".strip()),
        ("camera", ("ok" if doc.get("camera", {}).get("ok") else "NOT ok")
         + f", {h.get('fps', 0)} fps, failures {doc.get('camera', {}).get('failures', 0)}"),
        ("models", ", ".join(f"{k}={v[:12]}" for k, v in (doc.get("models") or {}).items())),
        ("selftest", _selftest_line(doc.get("model_selftest") or {})),
        ("outbox", f"{h.get('outbox_depth')} waiting, {h.get('outbox_expired')} expired, last seq {doc.get('last_seq')}"),
        ("storage", "ok" if h.get("storage_ok") else "LOW: new sessions refused"),
        ("clock", {True: "synchronised", False: "NOT synchronised (commands may be refused as expired or "
                   "not yet valid)"}.get(synced, "synchronisation unknown") if synced is not None else "synchronisation unknown"),
        ("sessions", f"{h.get('sessions')} run, {h.get('rejected')} rejected, " + _ignored_text(h.get("ignored") or {})),
        ("latency", " ".join(f"{k}={v}ms" for k, v in (h.get("latency_ms") or {}).items()) or "-"),
        ("last", f"{last.get('decision')} ({last.get('reason')}) at {last.get('ts')}" if last else "-"),
        ("updated", f"{doc.get('ts')}"),
    ]
    for k, v in lines:
        print(f"{k:9s} {v}")
    return EXIT_OK if running else EXIT_NEGATIVE


def _load_pubkey(text: str):
    from cryptography.hazmat.primitives import serialization

    from .signing import SignatureError, public_from_hex

    p = Path(text)
    data = p.read_bytes() if p.is_file() else text.encode()
    if b"BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            try:
                key = serialization.load_pem_private_key(data, None).public_key()
            except (ValueError, TypeError):
                raise SignatureError("the key file is neither a PEM public nor private key") from None
        return key
    return public_from_hex(data.decode(errors="replace").strip())


def _jsonable(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def cmd_sign_command(args) -> int:
    """What a backend sends: a signed verify command for one device (for tests and
    integration; pipe it to `mosquitto_pub -f`)."""
    from .messages import Topics, verify_command
    from .signing import load_key, sign

    key = load_key(Path(args.key))
    try:
        reference = Path(args.reference).read_bytes()
    except OSError as exc:
        return _fail(f"cannot read {args.reference}: {exc.strerror}")
    topic = Topics.of(args.prefix, args.device).cmd_verify
    steps = None if args.challenge is None else [s for s in args.challenge.split(",") if s]
    payload = verify_command(reference, time.time(), args.ttl, args.request_id, steps)
    Path(args.out).write_bytes(sign(payload, key, topic))
    print(json.dumps({"topic": topic, "request_id": payload["request_id"], "kid": key.kid.hex(), "out": args.out}))
    return EXIT_OK


def cmd_verify_result(args) -> int:
    """The reference verifier for backends: check a saved COSE_Sign1 message."""
    from .signing import SignatureError, verify

    try:
        pub = _load_pubkey(args.pubkey)
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}")
    try:
        v = verify(data, pub, args.topic)
    except SignatureError as exc:
        return _fail(f"signature NOT valid: {exc}", EXIT_NEGATIVE)
    print(json.dumps({"kid": v.kid.hex(), "payload": _jsonable(v.payload)}))
    return EXIT_OK


# -- demo -----------------------------------------------------------------------------
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
    from . import demo

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
                                timeout_s=args.deadline_s or demo.DEFAULT_TIMEOUT_S)
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
    from .backend.registry import Registry
    from .backend.store import Store
    from .backend.worker import ingest

    db = workdir / "backend.db"
    store = Store.sqlite(db)
    try:
        dev, prefix = res.payload["dev"], res.topic.rsplit("/", 2)[0]
        if not any(k.state == "active" and k.pub == res.public_key for k in store.keys(dev)):
            Registry(store).enrol(dev, res.public_key, time.time(), replace=True)
        print(f"backend: {dev} enrolled (kid {res.kid.hex()}) in {db}")
        print(f"backend: result seq {res.payload['seq']} {ingest(store, prefix, res.topic, res.message, 'demo')}"
              f" (audit table 'results', key ({dev}, {res.payload['seq']}))")
        again = ingest(store, prefix, res.topic, res.message, "demo")
        copied = ingest(store, prefix, f"{prefix}/another-kiosk/result", res.message, "demo")
        print(f"backend: the same bytes again: {again}; copied to another-kiosk's topic: {copied}")
    finally:
        store.close()


# -- selftest -------------------------------------------------------------------------
def cmd_selftest(args) -> int:
    """Key, state dir, models, camera, broker (and GPIO with --gpio): one pass / fail line
    each, or one JSON object; exit 0 only when every check passed."""
    import logging

    from . import selftest

    # the checks' own lines say what failed; adapters' warnings (paho reconnects) are noise here
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = _config(args)
    pid = _daemon_pid(args)
    if pid and not args.json:
        print(f"note: the daemon is running (pid {pid}); a Pi camera and GPIO lines it holds will show as busy "
              "(systemctl stop facegate first)", file=sys.stderr)
    checks = selftest.run_checks(cfg, gpio=args.gpio, key=args.key, broker_timeout_s=args.timeout)
    ok = selftest.passed(checks)
    failed = sum(not c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "failed": failed, "checks": [c.as_dict() for c in checks]}))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            word = "SKIP" if c.skipped else "PASS" if c.ok else "FAIL"
            print(f"{word}  {c.name:{width}s}  {c.detail}  ({c.ms:.0f} ms)")
        print(f"selftest: {'PASS' if ok else 'FAIL'} ({len(checks) - failed} of {len(checks)} checks passed)")
    return EXIT_OK if ok else EXIT_NEGATIVE


# -- config ---------------------------------------------------------------------------
def cmd_config_check(args) -> int:
    try:
        cfg = config_mod.load(args.file)
    except FacegateError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.file}: ok (device_id={cfg.device_id})")
    return EXIT_OK


def cmd_config_example(args) -> int:
    print(config_mod.example())
    return EXIT_OK


# -- snapshot -------------------------------------------------------------------------
def cmd_snapshot(args) -> int:
    """One frame from the configured camera, saved locally (only when asked) with the
    detected faces boxed: for aiming and focusing the camera at installation."""
    import cv2

    from .adapters.cameras import open_camera

    cfg = _config(args)
    cam_cfg = cfg.camera.model_copy(update={"source": args.source}) if args.source else cfg.camera
    warmup = args.warmup if args.warmup is not None else (0 if cam_cfg.source == "file" else 10)
    cam = open_camera(cam_cfg, args.path)
    frame = None
    try:
        for i, got in enumerate(cam.frames()):  # live cameras: let exposure settle first
            frame = got
            if i >= warmup:
                break
    finally:
        cam.close()
    if frame is None:
        return _fail("the camera delivered no frame")
    image = frame.image.copy()
    faces = []
    if not args.no_faces:
        from .pipeline import Timings

        faces = build_verifier(cfg).find_faces(frame.image, False, Timings())
        for d in faces:
            x0, y0, x1, y1 = (int(round(v)) for v in d.box)
            cv2.rectangle(image, (x0, y0), (x1, y1), (0, 255, 0), 2)
            cv2.putText(image, f"{d.score:.2f}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 255, 0), 1, cv2.LINE_AA)
    out = Path(args.file)
    if not cv2.imwrite(str(out), image):
        return _fail(f"cannot write {out} (a .jpg or .png path in an existing directory)")
    h, w = frame.image.shape[:2]
    lores = f", lores {frame.lores.shape[1]}x{frame.lores.shape[0]}" if frame.lores is not None else ""
    found = "" if args.no_faces else f", {len(faces)} face(s)"
    print(f"{out}: {w}x{h} from {cam_cfg.source}{lores}{found}")
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------
def _steps(text: str) -> str:
    from .liveness.challenge import STEPS

    bad = [s for s in text.split(",") if s and s not in STEPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown challenge step(s): {', '.join(bad)}")
    return text


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facegate", description="On-device face verification for kiosks")
    p.add_argument("--version", action="version", version=f"facegate {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("verify", help="verify a probe image or video against a reference portrait")
    v.add_argument("--reference", help="ID portrait (JPEG/PNG)")
    v.add_argument("--probe", help="probe image, folder of images, or video")
    v.add_argument("--pairs", metavar="FILE", help="many verifications with the models loaded once: "
                   "a file of REFERENCE<TAB>PROBE lines ('-' = stdin), one JSON line out per pair")
    v.add_argument("--config", help="config TOML file")
    v.add_argument("--precision", choices=["auto", "fp32", "dynint8", "int8"])
    v.add_argument("--threads", type=int)
    v.add_argument("--liveness", choices=["none", "passive", "active", "both"], default="none",
                   help="liveness to require; a session that fails it is decided spoof")
    v.add_argument("--challenge", type=_steps, help="fixed challenge steps, e.g. turn_left,blink (default: random)")
    v.add_argument("--seed", type=int, help="seed of the random challenge (default: fresh)")
    v.set_defaults(func=cmd_verify)

    m = sub.add_parser("models", help="install, check and time the models")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    mf = msub.add_parser("fetch", help="install the models (idempotent)")
    mf.add_argument("--from", dest="mirror", help="local mirror directory of model files")
    mf.add_argument("--all", action="store_true", help="also install optional variants (see the manifest)")
    mv = msub.add_parser("verify", help="re-check installed models against the manifest")
    ml = msub.add_parser("list", help="the manifest")
    mb = msub.add_parser("bench", help="time every installed model variant on this machine")
    mb.add_argument("--runs", type=int, default=50)
    mb.add_argument("--threads-list", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    for sp, fn in ((mf, cmd_models_fetch), (mv, cmd_models_verify), (ml, cmd_models_list), (mb, cmd_models_bench)):
        sp.add_argument("--dir", help="model directory (default from config / FACEGATE_MODEL_DIR)")
        sp.add_argument("--config", help="config TOML file")
        sp.set_defaults(func=fn)

    r = sub.add_parser("run", help="run the terminal daemon (under systemd)")
    r.add_argument("--config", help="config TOML file")
    r.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    r.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="state, health, broker, camera, models, outbox of the running daemon")
    st.add_argument("--config", help="config TOML file")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    k = sub.add_parser("keys", help="the device's signing key")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    for name, fn, hlp in (("show", cmd_keys_show, "print the key id and public key"),
                          ("init", cmd_keys_init, "create a key (mode 0600) where there is none"),
                          ("rotate", cmd_keys_rotate, "make a new key; a running daemon re-publishes R/attest")):
        kp = ksub.add_parser(name, help=hlp)
        kp.add_argument("--config", help="config TOML file")
        kp.add_argument("--path", help="key file (default: from the config)")
        kp.add_argument("--json", action="store_true")
        kp.set_defaults(func=fn)

    vr = sub.add_parser("verify-result", help="check a saved signed result (COSE_Sign1) and print its payload")
    vr.add_argument("--pubkey", required=True, help="device public key: 64 hex digits, or a file (hex or PEM)")
    vr.add_argument("--topic", required=True, help="the topic the message was published on (external AAD)")
    vr.add_argument("file", help="the message bytes ('-' = stdin)")
    vr.set_defaults(func=cmd_verify_result)

    dm = sub.add_parser("demo", help="the whole terminal on this machine: a video as camera, no broker, "
                                     "a signed result verified")
    dm.add_argument("--video", help="video (or image / folder) to play as the camera; needs --reference")
    dm.add_argument("--reference", help="the reference portrait (JPEG/PNG); needs --video")
    dm.add_argument("--liveness", choices=["none", "passive", "active", "both"],
                    help="liveness the daemon requires (default: both; the built-in clip runs none, then both)")
    dm.add_argument("--challenge", type=_steps, help="challenge steps, e.g. turn_right,turn_left "
                                                     "(default: what the demo clip performs; for --video random)")
    dm.add_argument("--synthetic", action="store_true",
                    help="use the built-in clip even when $FACEGATE_SHARED holds the replay data")
    dm.add_argument("--workdir", help="clip, device key and outbox (default ~/.cache/facegate/demo)")
    dm.add_argument("--deadline-s", type=_positive_seconds, default=None,
                    help="seconds from the daemon's start to a verified result, per session (default 120; "
                         "raise it on a slow or emulated CPU)")
    dm.add_argument("--json", action="store_true", help="one JSON object per session on stdout, progress on stderr")
    dm.add_argument("--backend", action="store_true", help="also show the backend side: the device enrolled, "
                                                            "each result stored in {workdir}/backend.db as "
                                                            "'facegate backend serve' stores it (needs the backend extra)")
    dm.set_defaults(func=cmd_demo)

    sc = sub.add_parser("sign-command", help="make a signed verify command (as a backend would)")
    sc.add_argument("--key", required=True, help="the backend's Ed25519 private key (PEM)")
    sc.add_argument("--reference", required=True, help="ID portrait (JPEG/PNG)")
    sc.add_argument("--device", required=True, help="device_id of the terminal")
    sc.add_argument("--prefix", default="facegate/v1")
    sc.add_argument("--challenge", type=_steps, help="fixed steps, e.g. turn_left,blink ('' = none)")
    sc.add_argument("--ttl", type=int, default=120, help="seconds until exp")
    sc.add_argument("--request-id")
    sc.add_argument("-o", "--out", required=True)
    sc.set_defaults(func=cmd_sign_command)

    sf = sub.add_parser("selftest", help="check key, state dir, models, camera, broker (and GPIO): pass / fail "
                                         "per line")
    sf.add_argument("--config", help="config TOML file")
    sf.add_argument("--gpio", action="store_true", help="also cycle the LEDs, pulse the relay and beep (watch it)")
    sf.add_argument("--key", help="signing key to check (default: as the daemon finds it; under systemd "
                                  "/etc/facegate/signing.key)")
    sf.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    sf.add_argument("--json", action="store_true", help="one JSON object: ok, failed, checks")
    sf.set_defaults(func=cmd_selftest)

    c = sub.add_parser("config", help="check or print the configuration")
    csub = c.add_subparsers(dest="config_cmd", required=True)
    cc = csub.add_parser("check", help="validate a config file, every error with key and line")
    cc.add_argument("file")
    cc.set_defaults(func=cmd_config_check)
    ce = csub.add_parser("example", help="print a commented full config")
    ce.set_defaults(func=cmd_config_example)

    sn = sub.add_parser("snapshot", help="save one camera frame with the detected faces boxed (camera set-up)")
    sn.add_argument("file", help="output image (.jpg / .png)")
    sn.add_argument("--config", help="config TOML file")
    sn.add_argument("--source", choices=["file", "v4l2", "picamera2"], help="camera source (default: camera.source)")
    sn.add_argument("--path", help="file: image / video; v4l2: device path or index; picamera2: camera number")
    sn.add_argument("--warmup", type=int, help="frames skipped first (default 10 for live cameras, 0 for files)")
    sn.add_argument("--no-faces", action="store_true", help="do not run face detection (no models needed)")
    sn.set_defaults(func=cmd_snapshot)

    from .backend.cli import add_parser as add_backend_parser

    add_backend_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FacegateError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
