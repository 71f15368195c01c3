#!/usr/bin/env python3
"""Evidence under faults, load and bad input: `facegate run` against a real Mosquitto.

    .venv/bin/python scripts/soak.py [--quick] [--data ../shared/data] [--out out/] [--seed 6]
                                     [--phases coldstart,broker,kill,camera,model,disk,fuzz,portraits,resources]

Every phase starts its own `facegate run` subprocess (video file camera: the replay of
../shared/data/replay/zubair/live.webm; portraits: frame 20 of it and an LFW stranger) and a
Mosquitto with TLS, passwords and an ACL (tests/broker.py), and checks what a backend sees:
every result verified on arrival with plain cbor2 + cryptography (no facegate code).

  coldstart  process start -> READY=1 on a notify socket owned here, and -> retained `online`
  broker     a stream of sessions; the broker SIGKILLed and restarted N times during it
  kill       the daemon SIGKILLed at random moments during sessions, restarted each time
  camera     the camera's frame folder removed and restored (outage lengths); a V4L2 device
             that does not exist
  model      one byte flipped in each model file the daemon loads
  disk       the state dir on a small tmpfs (root only): the min_free_mb rule, then truly full
  fuzz       malformed, unauthenticated and signed-but-bad commands over MQTT, image bombs
  portraits  corrupt / truncated / huge / wrong-format files through `facegate verify`
  resources  RSS and open fds over continuous sessions; latency p50/p95/p99; PNGs in out/

Definitions: lost = a session result (by request_id, and by seq: every seq the daemon
allocated) never delivered; reordered = a seq seen for the first time while a larger seq
was already seen; a duplicate is allowed only with the same seq and the same signed bytes.
Fast sessions: liveness "none", verify.fusion_frames = 2, camera realtime = false;
realtime where a fault needs sessions in progress. Ends with one line:
  soak: sessions=N lost=L reordered=R crashes=C fuzz_cases=M fuzz_failures=F rss_growth_pct=G
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test Mosquitto (TLS, passwords, ACL)

# the phases live in soak_common (what they share), soak_faults, soak_resources, soak_fuzz and
# soak_inputs; tests/test_soak.py takes these from here
from facegate import signing  # noqa: E402  (key files and command signing only)
from soak_common import (  # noqa: E402, F401
    FIELDS,
    REPLIES,
    Collector,
    Ctx,
    Daemon,
    Mosquitto,
    command,
    load_inputs,
    log,
    stream_checks,
)
from soak_faults import (  # noqa: E402, F401
    _outbox_after_kill,
    phase_broker,
    phase_camera,
    phase_coldstart,
    phase_kill,
    phase_model,
)
from soak_fuzz import (  # noqa: E402, F401
    AnswerOracle,
    Fuzzer,
    authentic,
    classify,
    phase_fuzz,
)
from soak_inputs import (  # noqa: E402, F401
    bomb_files,
    phase_portraits,
)
from soak_resources import (  # noqa: E402, F401
    _verify_child,
    phase_disk,
    phase_resources,
)

# -- main --------------------------------------------------------------------------------------
PHASES = {"coldstart": phase_coldstart, "broker": phase_broker, "kill": phase_kill, "camera": phase_camera,
          "model": phase_model, "disk": phase_disk, "fuzz": phase_fuzz, "portraits": phase_portraits,
          "resources": phase_resources}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "out")
    ap.add_argument("--quick", action="store_true", help="short run (about 3 minutes)")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of: " + ", ".join(PHASES))
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--broker-sessions", type=int, help="sessions in the broker-restart stream (500)")
    ap.add_argument("--broker-restarts", type=int, help="broker SIGKILLs during it (20)")
    ap.add_argument("--kill-sessions", type=int, help="completed sessions in the SIGKILL phase (100)")
    ap.add_argument("--kill-batch", type=int, default=10, help="commands sent per daemon life")
    ap.add_argument("--camera-outages", help="seconds the camera is gone, comma-separated (3,10,30)")
    ap.add_argument("--fuzz", type=int, help="fuzzed MQTT commands (10000)")
    ap.add_argument("--resource-sessions", type=int, help="sessions sampled for RSS / fds (1000)")
    ap.add_argument("--latency-sessions", type=int,
                    help="sessions timed on a broker without Nagle, with and without passive liveness (200 each)")
    ap.add_argument("--cold-starts", type=int, help="process starts timed (5)")
    ap.add_argument("--disk-commands", type=int, default=10)
    ap.add_argument("--mem-bound-mb", type=float, default=256.0,
                    help="largest peak-RSS growth a single bad input may cause, MB")
    ap.add_argument("--drain-s", type=float, default=180.0, help="longest wait for results after a phase")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, state dirs)")
    a = ap.parse_args(argv)
    full = dict(broker_sessions=500, broker_restarts=20, kill_sessions=100, camera_outages="3,10,30",
                fuzz=10_000, resource_sessions=1000, latency_sessions=200, cold_starts=5)
    quick = dict(broker_sessions=60, broker_restarts=3, kill_sessions=20, camera_outages="3",
                 fuzz=600, resource_sessions=150, latency_sessions=30, cold_starts=2)
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.camera_outages = [float(x) for x in str(a.camera_outages).split(",") if x]
    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        ap.error(f"unknown phase(s) {unknown}")
    if not (a.data / "replay" / "zubair" / "live.webm").is_file():
        ap.error(f"{a.data} does not hold replay/zubair/live.webm (use --data ../shared/data)")
    work = Path(tempfile.mkdtemp(prefix="facegate-soak-"))
    ctx = Ctx(a, work, load_inputs(a.data), signing.SigningKey.generate(), random.Random(a.seed))
    t0 = time.monotonic()
    log(f"soak: work dir {work}; phases {', '.join(phases)}")
    try:
        for name in phases:
            log(f"phase {name}")
            t = time.monotonic()
            try:
                PHASES[name](ctx)
            except Exception as exc:  # a phase that cannot finish is a failure, reported, not hidden
                traceback.print_exc()
                ctx.row(name, "phase aborted", f"{type(exc).__name__}: {str(exc)[:300]}", False)
            ctx.row(name, "phase wall time (s)", f"{time.monotonic() - t:.0f}", None)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t0
    print()
    print(f"facegate soak, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, mosquitto {_mosquitto_version()}; {elapsed / 60:.1f} min")
    w = max(len(r[1]) for r in ctx.rows)
    print(f"{'phase':10s} {'measure':{w}s} {'result':40s} check")
    for phase, measure, value, verdict in ctx.rows:
        print(f"{phase:10s} {measure:{w}s} {value:40s} {verdict}")
    t = ctx.totals
    g = "nan" if t["rss_growth_pct"] is None else f"{t['rss_growth_pct']:.1f}"
    print(f"soak: sessions={t['sessions']} lost={t['lost']} reordered={t['reordered']} crashes={t['crashes']} "
          f"fuzz_cases={t['fuzz_cases']} fuzz_failures={t['fuzz_failures']} rss_growth_pct={g}")
    bad = any(r[3] == "FAIL" for r in ctx.rows)
    return 1 if bad else 0


def _mosquitto_version() -> str:
    from broker import MOSQUITTO

    try:
        p = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5)
        first = (p.stdout or p.stderr).splitlines()[0]
        return first.split("version")[-1].strip().split()[0]
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
