"""soak phases coldstart, broker, kill, camera and model: process start to READY, the broker
SIGKILLed mid-stream, the daemon SIGKILLed, the camera gone, a model changed on disk."""
from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path

from soak_common import (
    Collector,
    Ctx,
    command,
    finish,
    new_daemon,
    stream_checks,
)


def phase_coldstart(ctx: Ctx) -> None:
    """Process start -> READY=1 (sd_notify datagram to a socket owned here) and -> `online`."""
    b = ctx.broker("cold-broker")
    sock_path = ctx.work / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    ready, online = [], []
    try:
        d = new_daemon(ctx, "cold", b, env={"NOTIFY_SOCKET": str(sock_path)})
        be = Collector(b, d.public)
        be.wait(be.connected, 10)
        for _ in range(ctx.args.cold_starts):
            d.start()
            t_ready = None
            sock.settimeout(30)
            while t_ready is None:
                data = sock.recv(4096)
                if b"READY=1" in data.split(b"\n"):
                    t_ready = time.monotonic() - d.started
            t_on = be.wait(lambda: be.online_after(d.started), 30)
            ready.append(t_ready)
            online.append((t_on - d.started) if t_on else float("nan"))
            rc = d.stop()
            ctx.totals["crashes"] += d.crashes
            if rc != 0:
                ctx.row("coldstart", "exit code", rc, False)
        be.close()
    finally:
        sock.close()
        b.stop()
    ctx.cold = (statistics.median(ready), max(ready), statistics.median(online))
    ctx.row("coldstart", f"start -> READY=1, median / max of {len(ready)} (s)",
            f"{statistics.median(ready):.2f} / {max(ready):.2f}", None)
    ctx.row("coldstart", "start -> retained online, median (s)", f"{statistics.median(online):.2f}", None)


def phase_broker(ctx: Ctx) -> None:
    """A stream of sessions with the broker SIGKILLed and restarted during it."""
    a = ctx.args
    b = ctx.broker("broker-broker")
    d = new_daemon(ctx, "broker", b, realtime=True, max_pending=60).start()
    be = Collector(b, d.public)
    t0 = time.monotonic()
    sent: list[str] = []
    max_depth = 0
    downs = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        b.wait_saved()  # the backend's session is one the broker keeps over a crash
        per = max(1, a.broker_sessions // max(1, a.broker_restarts))
        restarts = 0
        while len(sent) < a.broker_sessions:
            n = min(per, a.broker_sessions - len(sent))
            for _ in range(n):
                msg, c = command(ctx.key, ctx.inputs.ref if (len(sent) % 2 == 0) else ctx.inputs.stranger)
                be.send(msg)
                sent.append(c["request_id"])
            if restarts < a.broker_restarts:
                time.sleep(ctx.rng.uniform(0.1, 0.1 * n))  # sessions last ~0.1 s: die mid-batch
                b.stop(kill=True)
                down = ctx.rng.uniform(0.5, 3.0)
                time.sleep(down)
                max_depth = max(max_depth, d.status().get("health", {}).get("outbox_depth", 0))
                b.start()
                restarts += 1
                downs.append(down)
                # commands go out again once both ends are back (a command PUBACKed by a broker
                # that is then SIGKILLed before it forwarded it is the broker's loss, not ours)
                d.wait_status(lambda s: s["broker"]["connected"], 60)
                be.wait(be.connected, 30)
        want = set(sent)
        be.wait(lambda: {r.request_id for r in be.results} >= want, a.drain_s)
        st = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0, 60)
        elapsed = time.monotonic() - t0
        got = be.by_request()
        chk = stream_checks(be.results)
        lost_req = len(want - set(got))
        last_seq = st["last_seq"]
        lost_seq = len(set(range(1, last_seq + 1)) - chk["seqs"])
        sessions = sum(1 for rid in want if any(r.session for r in got.get(rid, [])))
        rejected = sum(1 for rid in want if rid in got and all(r.session is None for r in got[rid]))
        ctx.totals["sessions"] += sessions
        ctx.totals["lost"] += lost_req + lost_seq
        ctx.totals["reordered"] += chk["reordered"]
        ctx.row("broker", "commands sent / sessions run / rejected", f"{len(want)} / {sessions} / {rejected}",
                sessions == len(want))
        ctx.row("broker", "broker SIGKILLs (down 0.5-3 s each)", f"{restarts}", restarts == a.broker_restarts)
        ctx.row("broker", "lost (by request_id / seq gaps)", f"{lost_req} / {lost_seq}", lost_req == lost_seq == 0)
        ctx.row("broker", "reordered", chk["reordered"], chk["reordered"] == 0)
        ctx.row("broker", "duplicates (same seq) / with different bytes", f"{chk['duplicates']} / {chk['dup_mismatch']}",
                chk["dup_mismatch"] == 0)
        ctx.row("broker", "bad signatures at the backend", be.bad, be.bad == 0)
        ctx.row("broker", "largest outbox depth seen during an outage", max_depth, None)
        ctx.row("broker", "wall time (s)", f"{elapsed:.0f}", None)
    finally:
        be.close()
        finish(ctx, "broker", d)
        b.stop()


def _outbox_after_kill(path: Path) -> tuple[str, list[int], int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        seqs = [s for (s,) in db.execute("SELECT DISTINCT seq FROM results WHERE acked IS NULL ORDER BY seq")]
        row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        return ok, seqs, int(row[0]) if row else 0
    finally:
        db.close()


def phase_kill(ctx: Ctx) -> None:
    """SIGKILL of the daemon at random moments during sessions, restarted each time."""
    a = ctx.args
    b = ctx.broker("kill-broker")
    d = new_daemon(ctx, "kill", b, realtime=True, max_pending=60)
    be = Collector(b, d.public)
    sent: list[str] = []
    kills = 0
    integrity_bad = seq_back = gaps_in_outbox = waiting = 0
    last_seqs = [0]
    try:
        be.wait(be.connected, 10)
        batch = a.kill_batch
        while True:
            done = sum(1 for rs in be.by_request().values() if any(r.session for r in rs))
            if done >= a.kill_sessions:
                break
            d.start()
            if not be.wait(lambda: be.online_after(d.started), 60):
                raise RuntimeError(f"daemon not online after restart:\n{d.logtail()}")
            for i in range(batch):
                msg, c = command(ctx.key, ctx.inputs.ref if i % 2 == 0 else ctx.inputs.stranger)
                be.send(msg)
                sent.append(c["request_id"])
            time.sleep(ctx.rng.uniform(0.05, 0.1 * batch))
            broker_down = kills % 2 == 1  # every other kill: results wait in the outbox when it dies
            if broker_down:
                b.stop()
                time.sleep(ctx.rng.uniform(0.2, 0.1 * batch))
            if not d.alive():
                d.crashes += 1
            d.kill()
            kills += 1
            ok, stored, last = _outbox_after_kill(d.state / "outbox.sqlite")
            waiting += len(stored)
            if broker_down:
                b.start()
            integrity_bad += ok != "ok"
            seq_back += last < last_seqs[-1]
            gaps_in_outbox += bool(stored) and stored != list(range(stored[0], stored[-1] + 1))
            gaps_in_outbox += bool(stored) and stored[-1] != last
            last_seqs.append(last)
        d.start()  # the last restart: everything completed must now arrive
        be.wait(lambda: be.online_after(d.started), 60)
        st = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0, 60)
        last = st["last_seq"]
        be.wait(lambda: stream_checks(be.results)["seqs"] >= set(range(1, last + 1)), a.drain_s)
        chk = stream_checks(be.results)
        got = be.by_request()
        lost_seq = len(set(range(1, last + 1)) - chk["seqs"])
        completed = sum(1 for rid in sent if any(r.session for r in got.get(rid, [])))
        interrupted = sum(1 for rid in sent if rid not in got)
        # seq strictly increasing across boots: each boot's seqs above the previous boot's
        boots: dict[str, list[int]] = {}
        for r in be.results:
            boots.setdefault(r.boot, []).append(r.seq)
        spans = sorted((min(v), max(v)) for v in boots.values())
        overlap = sum(1 for x, y in zip(spans, spans[1:]) if y[0] <= x[1])
        ctx.totals["sessions"] += completed
        ctx.totals["lost"] += lost_seq
        ctx.totals["reordered"] += chk["reordered"]
        ctx.row("kill", "SIGKILLs / process starts", f"{kills} / {kills + 1}", None)
        ctx.row("kill", "commands sent / sessions completed / interrupted (no result, never stored)",
                f"{len(sent)} / {completed} / {interrupted}", completed >= a.kill_sessions)
        ctx.row("kill", "results waiting in the outbox at the kills (every other one with the broker down)",
                waiting, None)
        ctx.row("kill", "outbox integrity_check failures after a kill", integrity_bad, integrity_bad == 0)
        ctx.row("kill", "last_seq went back / outbox rows not contiguous", f"{seq_back} / {gaps_in_outbox}",
                seq_back == gaps_in_outbox == 0)
        ctx.row("kill", "seq ranges of different boots overlapping", overlap, overlap == 0)
        ctx.row("kill", f"lost (seq 1..{last} not delivered)", lost_seq, lost_seq == 0)
        ctx.row("kill", "reordered / duplicates with different bytes", f"{chk['reordered']} / {chk['dup_mismatch']}",
                chk["reordered"] == chk["dup_mismatch"] == 0)
    finally:
        be.close()
        finish(ctx, "kill", d)
        b.stop()


def phase_camera(ctx: Ctx) -> None:
    """The camera's frames vanish and come back; a V4L2 device that does not exist."""
    a = ctx.args
    b = ctx.broker("camera-broker")
    folder = ctx.work / "camera-frames"
    folder.mkdir(parents=True, exist_ok=True)
    for i, jpg in enumerate(ctx.inputs.frames):
        (folder / f"{i:03d}.jpg").write_bytes(jpg)
    gone = folder.with_name("camera-frames.gone")
    cam = (f'source = "file"\npath = "{folder}"\nrealtime = true\nfps = 15\nidle_fps = 5\n'
           'restart_each_session = false\n')
    d = new_daemon(ctx, "camera", b, camera=cam, health_interval_s=0.25)
    d.start()
    be = Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        for outage in a.camera_outages:
            msg, c = command(ctx.key, ctx.inputs.ref)
            be.send(msg)
            r = be.wait(lambda c=c: be.by_request().get(c["request_id"]), 60)
            ok_before = bool(r) and r[0].decision == "match"
            t_gone = time.monotonic()
            os.rename(folder, gone)
            st = d.wait_status(lambda s: not s["health"]["camera_ok"], 60)
            t_detect = time.monotonic() - t_gone
            msg, c = command(ctx.key, ctx.inputs.ref)
            be.send(msg)
            during = be.wait(lambda c=c: be.by_request().get(c["request_id"]), 60)
            answer = f"{during[0].decision}/{during[0].reason}" if during else "none"
            time.sleep(max(0.0, t_gone + outage - time.monotonic()))
            os.rename(gone, folder)
            t_back = time.monotonic()
            d.wait_status(lambda s: s["health"]["camera_ok"], 120)
            t_cam = time.monotonic() - t_back
            t_session = None
            while t_session is None and time.monotonic() - t_back < 120:
                msg, c = command(ctx.key, ctx.inputs.ref)
                be.send(msg)
                r = be.wait(lambda c=c: be.by_request().get(c["request_id"]), 60)
                if r and r[0].decision == "match":
                    t_session = r[0].t - t_back
            ctx.row("camera", f"folder gone {outage:g} s: gone noticed / camera_ok again / first match (s)",
                    f"{t_detect:.1f} / {t_cam:.1f} / {t_session:.1f}" if t_session is not None else "no recovery",
                    ok_before and t_session is not None)
            ctx.row("camera", f"folder gone {outage:g} s: command during the outage answered", answer,
                    during is not None and during[0].decision == "error")
            ctx.camera_recovery = getattr(ctx, "camera_recovery", []) + [(outage, t_cam, t_session)]
    finally:
        if gone.exists():
            os.rename(gone, folder)
        be.close()
        finish(ctx, "camera", d)
    # the frame rate a session on a live feed sees: the camera runs at 15 fps, idle_fps is 5
    d = new_daemon(ctx, "camera-rate", b, camera=cam, fusion_frames=30)
    d.start()
    be = Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        msg, c = command(ctx.key, ctx.inputs.ref)
        t = time.monotonic()
        be.send(msg)
        r = be.wait(lambda c=c: be.by_request().get(c["request_id"]), 60)
        # the frame loop's span: the session's total less the 30 embeddings fused after it
        # (at least 30 frames were read; end to end, command to result, is shown beside)
        lat = d.wait_status(lambda s: "total" in s["health"]["latency_ms"], 10)["health"]["latency_ms"]
        loop_s = (lat["total"] - lat.get("embed", 0.0)) / 1000
        rate = 30 / loop_s if r and loop_s > 0 else 0.0
        ctx.row("camera", "frames a live-feed session gets (30 fused; camera 15 fps, idle_fps 5)",
                f"{rate:.1f} per s over the frame loop ({r[0].decision if r else 'no answer'}; "
                f"command to result {r[0].t - t if r else float('nan'):.2f} s incl. 30 embeddings "
                f"{lat.get('embed', 0.0):.0f} ms)", rate >= 0.8 * 15)
    finally:
        be.close()
        finish(ctx, "camera", d)
    # a V4L2 device that is not there: answered, reported, READY never sent
    sock_path = ctx.work / "notify-v4l2.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    cam = 'source = "v4l2"\ndevice = "/dev/video57"\nframe_timeout_s = 2\nreopen_max_s = 2\n'
    d = new_daemon(ctx, "camera-v4l2", b, camera=cam, health_interval_s=0.25, env={"NOTIFY_SOCKET": str(sock_path)})
    d.start()
    be = Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        msg, c = command(ctx.key, ctx.inputs.ref)
        t = time.monotonic()
        be.send(msg)
        r = be.wait(lambda c=c: be.by_request().get(c["request_id"]), 60)
        st = d.status()
        cam_err = st.get("camera", {}).get("last_error", "")
        notes = []
        try:
            while True:
                notes.append(sock.recv(4096))
        except OSError:
            pass
        ready = any(b"READY=1" in n for n in notes)
        ctx.row("camera", "v4l2 /dev/video57 missing: command answered (s)",
                f"{r[0].decision}/{r[0].reason} after {r[0].t - t:.1f}" if r else "none",
                bool(r) and r[0].decision == "error")
        ctx.row("camera", "v4l2 missing: status camera_ok / READY=1 sent",
                f"{st.get('health', {}).get('camera_ok')} / {ready}", st.get("health", {}).get("camera_ok") is False
                and not ready)
        ctx.row("camera", "v4l2 missing: camera.last_error", cam_err[:70], "does not exist" in cam_err)
        ctx.row("camera", "v4l2 device back", "not measured (no V4L2 device or v4l2loopback here)", None)
    finally:
        sock.close()
        be.close()
        finish(ctx, "camera", d)
        b.stop()


def phase_model(ctx: Ctx) -> None:
    """One byte flipped in each model file the daemon loads: refused at start, nothing runs."""
    from facegate import modelstore

    src = modelstore.default_model_dir()
    store = modelstore.ModelStore(src)
    files = sorted({store.resolve(t, "auto").file for t in ("detect_short", "detect_full", "mesh", "embed",
                                                             "pad_v2", "pad_v1se")} | {store.resolve("iris", "fp32").file})
    copy = ctx.work / "models-copy"
    shutil.copytree(src, copy)
    b = ctx.broker("model-broker")
    worst = 0.0
    all_ok = True
    try:
        for i, name in enumerate(files):
            f = copy / name
            orig = f.read_bytes()
            flipped = bytearray(orig)
            pos = len(orig) // 2
            flipped[pos] ^= 0x01
            f.write_bytes(bytes(flipped))
            dev = f"tamper-{i}"
            d = new_daemon(ctx, f"model-{i}", b, device=dev, liveness="both", make_key=False,
                           env={"FACEGATE_MODEL_DIR": str(copy)})
            be = Collector(b, b"", device=dev)
            be.wait(be.connected, 10)
            t = time.monotonic()
            d.start()
            try:
                rc = d.proc.wait(60)
            except subprocess.TimeoutExpired:
                d.kill()
                rc = None
            dt = time.monotonic() - t
            time.sleep(0.5)
            online = any(p == b"online" for _, p in be.status)
            be.close()
            f.write_bytes(orig)
            text = d.logtail(4000).strip().splitlines()
            last = text[-1] if text else ""
            made = sorted(p.name for p in d.state.iterdir()) if d.state.exists() else []
            ok = (rc not in (0, None) and name in last and "changed on disk" in last and not online and not made
                  and "Traceback" not in "\n".join(text))
            all_ok &= ok
            worst = max(worst, dt)
            ctx.row("model", f"{name}: one byte flipped",
                    f"exit {rc} in {dt:.2f} s; online {'published' if online else 'never'}; "
                    f"{len(made)} state files", ok)
            message = last.replace(str(copy) + "/", "")
    finally:
        b.stop()
    ctx.row("model", "the message (last one)", message[:100], None)
    ctx.row("model", "all tampered files refused at start; slowest refusal (s)", f"{all_ok}; {worst:.2f}", all_ok)
