"""`facegate backend ...`: the backend's commands (registered by facegate.cli; the only
module of the backend that prints).

  facegate backend devices [--json]                 every terminal: key, online, last seen, outbox, last decision
  facegate backend devices --stale / --problems     only the terminals offline or silent / with a health problem
  facegate backend devices pending [--scan S]       keys waiting for approval (--scan: read R/attest first)
  facegate backend devices approve DEV [--kid K]    trust DEV's pending key (a rotation retires the old one)
  facegate backend devices revoke DEV [--kid K]     refuse DEV's keys from now on
  facegate backend devices enrol FILE [--device D]  trust the key in `facegate keys show` output
  facegate backend verify --device D --reference F  one verification, answer verified
  facegate backend serve [--metrics-listen H:P]     a fleet consumer worker (Prometheus /metrics on H:P)
Exit codes: 0 success / match, 1 a negative decision, a rejection or a timeout, 2 bad input.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..vocab import Verdict

EXIT_OK, EXIT_NEGATIVE, EXIT_BAD_INPUT = 0, 1, 2


def _config(args):
    from .config import load

    return load(args.config)


def _store(cfg):
    from .store import Store

    return Store.open(cfg.store)


def _shown(text) -> str:
    """A string a terminal supplied (sw, a device id), printable: control characters and
    other unprintable ones escaped (\\r, \\x1b, \\u202e), so it cannot rewrite the operator's screen."""
    if text is None:
        return "-"
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _age(t, now) -> str:
    if t is None:
        return "-"
    s = max(0.0, now - t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def cmd_devices(args) -> int:
    cfg = _config(args)
    store = _store(cfg)
    try:
        keys = store.keys()
        status = {d["dev"]: d for d in store.devices()}
    finally:
        store.close()
    now = time.time()
    rows = []
    from .fleet import classify

    for dev in sorted({k.dev for k in keys} | set(status)):
        mine = [k for k in keys if k.dev == dev]
        active = [k.kid for k in mine if k.state == "active"]
        st = status.get(dev, {})
        key = active[0] if active else ("revoked" if any(k.state == "revoked" for k in mine) else "none")
        rows.append({"device": dev, "key": key, "pending": [k.kid for k in mine if k.state == "pending"],
                     "status": st.get("status") or "unknown", "last_seen": st.get("last_seen"),
                     "outbox_depth": st.get("outbox_depth"), "last_decision": st.get("last_decision"),
                     "last_seq": st.get("last_seq"), "sw": st.get("sw"),
                     "keys_dropped": st.get("keys_dropped") or 0})
        if active:  # an enrolled terminal: its state (online / stale / offline / stopped / unknown) and problems
            t = classify(dev, st or None, now, cfg.metrics.stale_after_s)
            rows[-1].update(state=t.state, problems=list(t.problems))
    if args.stale or args.problems:  # what needs a look: enrolled terminals not online (--stale), with a problem
        rows = [r for r in rows if (args.stale and r.get("state", "online") != "online")
                or (args.problems and r.get("problems"))]
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    if not rows and (args.stale or args.problems):
        print("no enrolled terminal is " + " or ".join(w for w, on in (("stale, offline, stopped or unknown", args.stale),
                                                                      ("reporting a problem", args.problems)) if on))
    elif not rows:
        print("no devices (enrol one with 'facegate backend devices enrol FILE --device DEV')")
    print(f"{'device':20s} {'key':16s} {'status':8s} {'last seen':10s} {'outbox':>6s}  last decision")
    for r in rows:
        key = r["key"] + (f" +{len(r['pending'])} pending" if r["pending"] else "")
        if r["keys_dropped"]:  # an attestation flood: only the newest pending keys were kept
            key += f" ({r['keys_dropped']} dropped)"
        depth = "-" if r["outbox_depth"] is None else str(r["outbox_depth"])
        last = "-" if r["last_decision"] is None else f"{r['last_decision']} (seq {r['last_seq']})"
        if r["key"] == "revoked":  # what it decided before is history: its results now go to quarantine
            last = f"revoked; before: {last}"
        state = r.get("state", r["status"])
        shown = (args.stale or args.problems) and r.get("problems")  # the plain list keeps its columns
        problems = f"  problems: {', '.join(r['problems'])}" if shown else ""
        print(f"{_shown(r['device']):20s} {key:16s} {state:8s} {_age(r['last_seen'], now):10s} {depth:>6s}  {last}{problems}")
    return EXIT_OK


def cmd_pending(args) -> int:
    from .registry import Registry
    from .worker import scan_attestations

    cfg = _config(args)
    store = _store(cfg)
    try:
        if args.scan:
            n = scan_attestations(cfg, store, args.scan)
            print(f"read {n} attestation(s) from {cfg.mqtt.host}:{cfg.mqtt.port}", file=sys.stderr)
        pend = Registry(store).pending()
    finally:
        store.close()
    if args.json:
        print(json.dumps([{"device": p.key.dev, "kid": p.key.kid, "public_key": p.key.pub.hex(), "sw": p.key.sw,
                           "first_seen": p.key.first_seen, "rotation": p.rotation} for p in pend]))
        return EXIT_OK
    if not pend:
        print("no pending keys")
    for p in pend:
        what = "key rotation" if p.rotation else "new device"
        print(f"{_shown(p.key.dev):20s} kid {p.key.kid}  {what:12s} sw {_shown(p.key.sw)}  seen {_age(p.key.first_seen, time.time())}"
              f"  public_key {p.key.pub.hex()}")
    return EXIT_OK


def _show_key(verb: str, row, state: str | None = None) -> None:
    print(f"{verb} {row.dev}: kid {row.kid} public_key {row.pub.hex()} ({state or row.state})")


def _recheck(store, cfg, dev: str) -> None:
    from .worker import recheck_quarantine

    n = recheck_quarantine(store, cfg.mqtt.prefix, dev)
    if n:
        print(f"{n} quarantined result(s) of {dev} verify now: stored")


def cmd_approve(args) -> int:
    from .registry import Registry

    cfg = _config(args)
    store = _store(cfg)
    try:
        _show_key("approved", Registry(store).approve(args.device, time.time(), args.kid))
        _recheck(store, cfg, args.device)
    finally:
        store.close()
    return EXIT_OK


def cmd_revoke(args) -> int:
    from .registry import Registry

    store = _store(_config(args))
    try:
        for row in Registry(store).revoke(args.device, time.time(), args.kid):
            _show_key("revoked", row, "was " + row.state + ", now revoked")
    finally:
        store.close()
    return EXIT_OK


def cmd_enrol(args) -> int:
    from .registry import Registry, RegistryError, parse_key_show

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise RegistryError(f"cannot read {args.file}: {exc.strerror}") from None
    pub, shown = parse_key_show(text)
    if args.device and shown and args.device != shown:
        raise RegistryError(f"{args.file} is the key of {shown} (its 'device' line), not of {args.device}: "
                            f"enrolled as {args.device} it would let {shown} speak for {args.device}; check --device")
    dev = args.device or shown
    if not dev:
        raise RegistryError("which device? give --device DEV ('facegate keys show' does not print it)")
    cfg = _config(args)
    store = _store(cfg)
    try:
        _show_key("enrolled", Registry(store).enrol(dev, pub, time.time(), replace=args.replace))
        _recheck(store, cfg, dev)
    finally:
        store.close()
    return EXIT_OK


def cmd_verify(args) -> int:
    from .client import BackendClient, ReferenceRefused, VerifyRejected, VerifyTimeout

    cfg = _config(args)
    try:
        reference = Path(args.reference).read_bytes()
    except OSError as exc:
        print(f"facegate: cannot read {args.reference}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    steps = None if args.challenge is None else [s for s in args.challenge.split(",") if s]
    detail = ""
    with BackendClient(cfg) as client:
        try:
            r = client.verify(args.device, reference, steps, args.timeout_s)
        except VerifyRejected as exc:
            r, detail = exc.result, exc.detail
        except VerifyTimeout as exc:
            if args.json:
                print(json.dumps({"device": args.device, "error": "timeout", "request_id": exc.request_id,
                                  "refused": exc.refused, "hint": exc.hint}))
            print(f"facegate: {exc}", file=sys.stderr)
            return EXIT_NEGATIVE
        except ReferenceRefused as exc:
            print(f"facegate: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps({**r.payload(), "kid": r.kid, "topic": r.topic, "message": r.message.hex(),
                          **({"detail": detail} if detail else {})}))
    else:
        print(f"{r.device}: {r.decision}" + (f" ({r.reason}{': ' + detail if detail else ''})" if r.reason else "")
              + f"  request {r.request_id}  seq {r.seq}  signature verified (kid {r.kid}, topic {r.topic})")
    return EXIT_OK if r.decision == Verdict.MATCH else EXIT_NEGATIVE


def cmd_serve(args) -> int:
    import logging
    import signal
    import threading

    from .worker import Worker

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = _config(args)
    serve = {k: v for k, v in (("worker", args.worker), ("journal", args.journal or None)) if v is not None}
    if serve:
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update=serve)})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    listen = cfg.metrics.listen if args.metrics_listen is None else args.metrics_listen
    metrics = None
    if listen:
        from .metrics import WorkerMetrics

        metrics = WorkerMetrics(cfg)
    w = Worker(cfg, metrics=metrics)
    try:
        lock = _lock_worker(cfg, w.client_id)
    except OSError as exc:
        print(f"facegate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if metrics:
        metrics.worker = w
        metrics.serve(listen)
    try:
        s = w.run(stop)
    finally:
        os.close(lock)
        if metrics:
            metrics.close()
    logging.getLogger("facegate.backend").info("worker %s stopped: %s", cfg.serve.worker, s)
    return EXIT_OK


def _lock_worker(cfg, client_id: str) -> int:
    """One worker per client id on this machine: a second under the same --worker name
    took the first one's session over and both flapped every ~2 s ('Unspecified error')
    forever. An flock in the temp dir, keyed on broker and client id, held while it runs;
    raises OSError naming the pid that holds it."""
    import hashlib
    import tempfile

    from .. import pidlock

    key = hashlib.sha256(f"{cfg.mqtt.host}:{cfg.mqtt.port}/{client_id}".encode()).hexdigest()[:16]
    try:
        return pidlock.take(Path(tempfile.gettempdir()) / f"facegate-serve-{key}.lock")
    except pidlock.Busy as busy:
        raise OSError(f"worker {cfg.serve.worker} (client id {client_id}) already runs here (pid {busy.holder}): "
                      "give this one another --worker name (two workers under one name push each other off the "
                      "broker)") from None


def cmd_config_check(args) -> int:
    """Every error with its key and line; then the files the config names, as resolved."""
    from ..errors import ConfigError
    from .config import load

    try:
        cfg = load(args.file)
    except ConfigError as exc:  # every error on its own line, in the file's order
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    fixes = {"key_file": f" (make it: facegate keys init --path {cfg.key_file})",
             "mqtt.password_file": " (the backend user's password, first line; broker-setup.sh add-user writes one)",
             "mqtt.ca_file": " (the broker's CA certificate: ca.pem of broker-setup.sh init)"}
    missing = [f"{name} = {value}: no such file{fixes[name]}" for name, value in
               (("key_file", cfg.key_file), ("mqtt.password_file", cfg.mqtt.password_file),
                ("mqtt.ca_file", cfg.mqtt.ca_file)) if value and not Path(value).is_file()]
    store = cfg.store.dsn.split("@")[-1] if cfg.store.dsn else cfg.store.sqlite
    print(f"{args.file}: ok (broker {cfg.mqtt.host}:{cfg.mqtt.port}{' TLS' if cfg.mqtt.tls else ''}, "
          f"store {'postgresql ' if cfg.store.dsn else 'sqlite '}{store}, key {cfg.key_file})")
    for m in missing:
        print(f"{args.file}: {m}", file=sys.stderr)
    return EXIT_BAD_INPUT if missing else EXIT_OK


def _needs_extra(fn):
    """A command whose libraries are missing says which extra to install."""
    def run(args) -> int:
        try:
            return fn(args)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("paho", "cbor2", "cryptography", "psycopg", "prometheus_client"):
                print(f"facegate: 'facegate backend' needs {exc.name.split('.')[0]}: pip install 'facegate[backend]'",
                      file=sys.stderr)
                return EXIT_BAD_INPUT
            raise
    return run


def add_parser(sub) -> None:
    """Register `facegate backend ...` on the top-level subparsers."""
    b = sub.add_parser("backend", help="the backend side: device registry, verify requests, fleet consumer")
    bsub = b.add_subparsers(dest="backend_cmd", required=True)

    def common(p):
        p.add_argument("--config", help="backend TOML file (default: every default; SQLite facegate-backend.db)")
        return p

    d = common(bsub.add_parser("devices", help="the terminals: status, keys; pending / approve / revoke / enrol"))
    d.add_argument("--json", action="store_true")
    d.add_argument("--stale", action="store_true", help="only enrolled terminals not online (stale, offline, stopped, never seen)")
    d.add_argument("--problems", action="store_true", help="only enrolled terminals whose last health reports a problem (clock, camera, models, storage, outbox)")
    d.set_defaults(func=_needs_extra(cmd_devices))
    dsub = d.add_subparsers(dest="devices_cmd")
    p = common(dsub.add_parser("pending", help="keys seen in R/attest and not yet approved"))
    p.add_argument("--scan", type=float, metavar="S", help="first read the retained attestations for S seconds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_needs_extra(cmd_pending))
    for name, fn, hlp in (("approve", _needs_extra(cmd_approve), "trust the device's pending key"),
                          ("revoke", _needs_extra(cmd_revoke), "refuse the device's keys from now on")):
        a = common(dsub.add_parser(name, help=hlp))
        a.add_argument("device")
        a.add_argument("--kid", help="only this key (16 hex digits)")
        a.set_defaults(func=fn)
    e = common(dsub.add_parser("enrol", help="trust the key in 'facegate keys show' output (file, '-' = stdin)"))
    e.add_argument("file")
    e.add_argument("--device", help="the terminal's device_id")
    e.add_argument("--replace", action="store_true", help="retire the device's current key")
    e.set_defaults(func=_needs_extra(cmd_enrol))

    c = bsub.add_parser("config", help="the backend's config: check")
    csub = c.add_subparsers(dest="config_cmd", required=True)
    cc = csub.add_parser("check", help="every error with its key and line; the files it names, resolved")
    cc.add_argument("file")
    cc.set_defaults(func=cmd_config_check, config=None)

    v = common(bsub.add_parser("verify", help="one verification on a terminal; its signed answer verified"))
    v.add_argument("--device", required=True)
    v.add_argument("--reference", required=True, help="ID portrait (JPEG/PNG)")
    v.add_argument("--challenge", help="fixed steps, e.g. turn_left,blink ('' = none; default: the terminal draws)")
    v.add_argument("--timeout-s", type=float, default=60.0)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_needs_extra(cmd_verify))

    s = common(bsub.add_parser("serve", help="a fleet consumer worker (run several: one per --worker name)"))
    s.add_argument("--worker", help="this worker's name (default: serve.worker)")
    s.add_argument("--journal", action="store_true", help="hold the journal session too (see serve.journal)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (default: metrics.listen, 127.0.0.1:9464; '' = not served)")
    s.set_defaults(func=_needs_extra(cmd_serve))
