"""The terminal's own commands: run the daemon, its signing key, its status, signed commands
and results, the self-test, the configuration and a camera snapshot."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .. import config as config_mod
from ..errors import FacegateError
from ..status import HealthDoc
from .common import (
    EXIT_BAD_INPUT,
    EXIT_NEGATIVE,
    EXIT_OK,
    _config,
    _daemon_pid,
    _fail,
    _jsonable,
    _status_doc,
    build_verifier,
)


def cmd_run(args) -> int:
    import logging

    from .. import daemon as daemon_mod

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_mod.load(args.config)
    d = daemon_mod.build(cfg, args.config)
    daemon_mod.install_signal_handlers(d)
    return d.run()


def _key_path(args):
    from ..signing import key_path

    if getattr(args, "path", None):
        return Path(args.path)
    doc = _status_doc(args)
    if doc and (doc.get("key") or {}).get("source") == "credential":
        raise FacegateError("the daemon signs with its systemd credential (LoadCredential=signing.key:...); "
                            "give --path /etc/facegate/signing.key (the credential's source) and, after "
                            "'keys rotate', run 'systemctl restart facegate'")
    return key_path(config_mod.load(args.config))


def _print_key(key, path, as_json: bool, device: str | None = None) -> None:
    """device: the config's device_id, so that `backend devices enrol` can tell a key
    enrolled under another device's name (kiosk-7's key as kiosk-8)."""
    info = {"path": str(path), "kid": key.kid.hex(), "public_key": key.public.hex(), "algorithm": "EdDSA (Ed25519)"}
    if device:
        info["device"] = device
    if as_json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:11s} {v}")


def cmd_keys_show(args) -> int:
    from ..signing import load_key

    path = _key_path(args)
    if not path.exists():
        cfg_arg = f" --config {args.config}" if getattr(args, "config", None) else ""
        return _fail(f"no signing key at {path} yet: make it with 'facegate keys init{cfg_arg}' "
                     "(the daemon also makes one at its first start; an install.sh terminal keeps it in "
                     "/etc/facegate/signing.key: --path /etc/facegate/signing.key)", EXIT_NEGATIVE)
    _print_key(load_key(path), path, args.json, _device_of(args))
    return EXIT_OK


def _device_of(args) -> str | None:
    """The config's device_id when the key was found through --config (not --path)."""
    if getattr(args, "path", None) or not getattr(args, "config", None):
        return None
    return config_mod.load(args.config).device_id


def cmd_keys_init(args) -> int:
    """Create a key only where there is none (a device's before first start, a backend's)."""
    from ..signing import SigningKey, save_key

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

    from ..signing import SigningKey, save_key

    path = _key_path(args)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".old"))
    key = SigningKey.generate()
    save_key(key, path)
    _print_key(key, path, args.json)
    pid = _daemon_pid(args)
    if pid:
        from ..adapters.systemd import signal_daemon

        # status.json is the service user's to write: its pid is only a candidate
        state_dir = Path(config_mod.load(args.config).daemon.state_dir)
        why_not = signal_daemon(pid, os.stat(state_dir).st_uid, signal_mod.SIGHUP)
        if why_not is None:
            print(f"told the running daemon (pid {pid}) to reload", file=sys.stderr)
        else:
            print(f"did not signal the status file's pid: {why_not}; restart the daemon to load the new key",
                  file=sys.stderr)
    return EXIT_OK


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


def _when(ts) -> str:
    """A wall-clock time as people read it, and how long ago."""
    if not isinstance(ts, (int, float)):
        return "-"
    ago = max(0.0, time.time() - ts)
    age = f"{ago:.0f} s" if ago < 120 else f"{ago / 60:.0f} min" if ago < 7200 else f"{ago / 3600:.0f} h"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts)) + f" ({age} ago)"


def _refused_text(doc, h) -> str:
    n = h.get("publish_refused") or 0
    if not n:
        return ""
    return (f"; {n} publish(es) REFUSED by the broker: its ACL lets a terminal write only under its own "
            f"user name, so mqtt.username must be the device_id '{doc.get('device_id')}'")


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
        ("broker", ("connected" if doc.get("broker", {}).get("connected") else
                    f"not connected {doc.get('broker', {}).get('error', '')}".strip()) + _refused_text(doc, h)),
        ("camera", ("ok" if doc.get("camera", {}).get("ok") else "NOT ok")
         + f", {h.get('fps', 0)} fps, failures {doc.get('camera', {}).get('failures', 0)}"),
        ("models", ", ".join(f"{k}={v[:12]}" for k, v in (doc.get("models") or {}).items())),
        ("selftest", _selftest_line(doc.get("model_selftest") or {})),
        ("policy", (doc.get("match_policy") or {}).get("why", "-")),
        ("outbox", f"{h.get('outbox_depth')} waiting, {h.get('outbox_expired')} expired, last seq {doc.get('last_seq')}"),
        ("storage", "ok" if h.get("storage_ok") else "LOW: new sessions refused"),
        ("clock", {True: "synchronised", False: "NOT synchronised (commands may be refused as expired or "
                   "not yet valid)"}.get(synced, "synchronisation unknown") if synced is not None else "synchronisation unknown"),
        ("sessions", f"{h.get('sessions')} run, {h.get('rejected')} rejected, " + _ignored_text(h.get("ignored") or {})),
        ("latency", " ".join(f"{k}={v}ms" for k, v in (h.get("latency_ms") or {}).items()) or "-"),
        ("last", f"{last.get('decision')}" + (f" ({last.get('reason')})" if last.get("reason") else "")
         + f" at {_when(last.get('ts'))}" if last else "none yet"),
        ("updated", _when(doc.get("ts"))),
    ]
    for k, v in lines:
        print(f"{k:9s} {v}")
    return EXIT_OK if running else EXIT_NEGATIVE


def _load_pubkey(text: str):
    from cryptography.hazmat.primitives import serialization

    from ..contract import SignatureError, public_from_hex

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


def cmd_sign_command(args) -> int:
    """What a backend sends: a signed verify command for one device (for tests and
    integration; pipe it to `mosquitto_pub -f`)."""
    from ..contract import Command, Topics
    from ..signing import load_key

    key = load_key(Path(args.key))
    try:
        reference = Path(args.reference).read_bytes()
    except OSError as exc:
        return _fail(f"cannot read {args.reference}: {exc.strerror}")
    topic = Topics.of(args.prefix, args.device).cmd_verify
    steps = None if args.challenge is None else [s for s in args.challenge.split(",") if s]
    command = Command.new(reference, time.time(), args.ttl, args.request_id, steps)
    Path(args.out).write_bytes(command.sign(key, topic))
    print(json.dumps({"topic": topic, "request_id": command.request_id, "kid": key.kid.hex(), "out": args.out}))
    return EXIT_OK


def cmd_verify_result(args) -> int:
    """The reference verifier for backends: check a saved COSE_Sign1 message (any of the
    contract's signed ones) and print its payload map as JSON."""
    from ..contract import SignatureError, verify

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



# -- selftest -------------------------------------------------------------------------
def cmd_selftest(args) -> int:
    """Key, state dir, models, camera, broker (and GPIO with --gpio): one pass / fail line
    each, or one JSON object; exit 0 only when every check passed."""
    import logging

    from .. import selftest

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
        skipped = [c.name for c in checks if c.skipped]
        passed = len(checks) - failed - len(skipped)
        failed_names = ", ".join(c.name for c in checks if not c.ok)
        print(f"selftest: {'PASS' if ok else 'FAIL'} ({passed} passed"
              + (f", {failed} failed: {failed_names}" if failed else "")
              + (f", {len(skipped)} skipped: {', '.join(skipped)}" if skipped else "") + ")")
    return EXIT_OK if ok else EXIT_NEGATIVE


# -- config ---------------------------------------------------------------------------
def cmd_config_check(args) -> int:
    try:
        cfg = config_mod.load(args.file)
    except FacegateError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    problems = config_mod.unusable(cfg, Path(args.file).read_text(), args.file)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.file}: ok (device_id={cfg.device_id})")
    if cfg.verify.match_threshold is not None:
        print(f"note: verify.match_threshold = {cfg.verify.match_threshold} overrides the calibrated match policy "
              f"(verify.target_fmr = {cfg.verify.target_fmr:.0e} is not used; the false-match rate is then yours to state)")
    for note in config_mod.advice(cfg):
        print(f"note: {note}")
    return EXIT_OK


def cmd_config_example(args) -> int:
    print(config_mod.example())
    return EXIT_OK


# -- snapshot -------------------------------------------------------------------------
def cmd_snapshot(args) -> int:
    """One frame from the configured camera, saved locally (only when asked) with the
    detected faces boxed: for aiming and focusing the camera at installation."""
    import cv2

    from ..adapters.cameras import open_camera

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
        from ..pipeline import Timings

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
