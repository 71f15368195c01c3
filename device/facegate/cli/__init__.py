"""The `facegate` command line: argument parsing and all printing (the only room that prints,
and nothing imports it). Here the parser and main(); one module per command group: verify,
models, device (run, keys, status, signed commands and results, selftest, config, snapshot),
demo; common holds what they share.

Exit codes: 0 success / match, 1 a negative decision or failed check, 2 bad input or
configuration.
"""
from __future__ import annotations

import argparse

from .. import __version__
from ..errors import FacegateError
from ..registry import CAMERAS, STEPS
from ..vocab import LivenessMode
from .common import EXIT_BAD_INPUT, EXIT_NEGATIVE, EXIT_OK, _fail, build_liveness, build_verifier, make_runner
from .demo import cmd_demo
from .device import (
    cmd_config_check,
    cmd_config_example,
    cmd_keys_init,
    cmd_keys_rotate,
    cmd_keys_show,
    cmd_run,
    cmd_selftest,
    cmd_sign_command,
    cmd_snapshot,
    cmd_status,
    cmd_verify_result,
)
from .models import cmd_models_bench, cmd_models_fetch, cmd_models_list, cmd_models_verify, time_runner
from .verify import cmd_verify

__all__ = ["EXIT_BAD_INPUT", "EXIT_NEGATIVE", "EXIT_OK", "build_liveness", "build_parser", "build_verifier", "main",
           "make_runner", "time_runner"]


def _steps(text: str) -> str:
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
    v.add_argument("--liveness", choices=list(LivenessMode), default=LivenessMode.NONE,
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
    dm.add_argument("--liveness", choices=list(LivenessMode),
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
    dm.add_argument("--screen", nargs="?", const="127.0.0.1:8080", metavar="ADDR",
                    help="serve the kiosk page (preview, hints, result) on this loopback address (default "
                         "127.0.0.1:8080), print its URL, play the video in real time")
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
    sn.add_argument("--source", choices=CAMERAS.names(), help="camera source (default: camera.source)")
    sn.add_argument("--path", help="file: image / video; v4l2: device path or index; picamera2: camera number")
    sn.add_argument("--warmup", type=int, help="frames skipped first (default 10 for live cameras, 0 for files)")
    sn.add_argument("--no-faces", action="store_true", help="do not run face detection (no models needed)")
    sn.set_defaults(func=cmd_snapshot)

    from ..backend.cli import add_parser as add_backend_parser

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
