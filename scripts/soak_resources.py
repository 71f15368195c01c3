"""soak phases disk (the state dir on a small tmpfs, then full) and resources (RSS, open
fds and latency over continuous sessions; plots)."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from soak_common import (
    Collector,
    Ctx,
    Res,
    command,
    finish,
    new_daemon,
    proc_status,
    quantiles,
    stream_checks,
)


def phase_disk(ctx: Ctx) -> None:
    """State dir on a tmpfs: the min_free_mb rule, then a disk that fills up completely
    while sessions run, and space coming back."""
    if os.geteuid() != 0:
        ctx.row("disk", "tmpfs state dir", "SKIPPED: needs root to mount a tmpfs", None)
        return
    mnt = ctx.work / "disk-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    b = ctx.broker("disk-broker")
    filler = mnt / "filler"
    n = ctx.args.disk_commands
    d = None
    try:
        d = new_daemon(ctx, "disk", b, state_dir=mnt / "state", realtime=True, fusion_frames=6,
                       daemon_extra="min_free_mb = 8\n", health_interval_s=0.25).start()
        be = Collector(b, d.public)
        be.wait(lambda: be.online_after(0), 60)

        def burst(k: int) -> list[str]:
            ids = []
            for _ in range(k):
                msg, c = command(ctx.key, ctx.inputs.ref)
                be.send(msg)
                ids.append(c["request_id"])
            return ids

        def answers(ids: list[str], timeout_s: float) -> dict[str, Res]:
            be.wait(lambda: set(be.by_request()) >= set(ids), timeout_s)
            got = be.by_request()
            return {i: got[i][0] for i in ids if i in got}

        def fill_to(free_bytes: int) -> None:
            st = os.statvfs(mnt)
            have = st.f_bavail * st.f_frsize
            size = filler.stat().st_size if filler.exists() else 0
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                try:
                    os.posix_fallocate(fd, 0, size + max(0, have - free_bytes))
                except OSError:
                    pass
                if free_bytes == 0:  # whatever fallocate left, in ever smaller writes until ENOSPC
                    os.lseek(fd, 0, os.SEEK_END)
                    for chunk in (65536, 4096, 512, 1):
                        try:
                            while True:
                                os.write(fd, b"\0" * chunk)
                        except OSError:
                            pass
            finally:
                os.close(fd)

        warm = answers(burst(2), 30)
        ok_warm = len(warm) == 2 and all(r.decision == "match" for r in warm.values())
        ctx.row("disk", "warm-up sessions", ", ".join(r.decision for r in warm.values()), ok_warm)
        # 1. below min_free_mb (4 of 32 MiB free, the rule asks for 8)
        t = time.time()
        fill_to(4 * 2**20)
        st = d.wait_status(lambda s: s["health"]["storage_ok"] is False, 10, fresh_after=t)
        mqtt_ok = be.wait(lambda: be.health.get("storage_ok") is False, 10)
        ids = burst(n)
        got = answers(ids, 30)
        refused = sum(1 for r in got.values() if (r.decision, r.reason) == ("rejected", "storage_full"))
        st2 = d.wait_status(lambda s: True, 10, fresh_after=time.time())
        ctx.row("disk", "4 MiB free < min_free_mb 8: status.json / R/health storage_ok",
                f"{st['health']['storage_ok']} / {be.health.get('storage_ok')}",
                st["health"]["storage_ok"] is False and bool(mqtt_ok))
        ctx.row("disk", "  commands answered rejected/storage_full; sessions started",
                f"{refused}/{n}; {st2['health']['sessions'] - st['health']['sessions']}",
                refused == n and st2["health"]["sessions"] == st["health"]["sessions"])
        # 2. space again, then the disk fills up completely while sessions run
        filler.unlink()
        d.wait_status(lambda s: s["health"]["storage_ok"], 10, fresh_after=time.time())
        mid = burst(3)
        d.wait_status(lambda s: s["state"]["state"] != "idle", 10)
        t_fill = time.time()
        n_before = len(be.results)
        fill_to(0)
        time.sleep(3.0)
        health_full = dict(be.health)
        st_full = d.status()
        full_ids = burst(n)
        during = answers(full_ids, 5)
        ctx.row("disk", "0 bytes free: R/health storage_ok / results held in memory (unstored)",
                f"{health_full.get('storage_ok')} / {health_full.get('unstored')}",
                health_full.get("storage_ok") is False)
        ctx.row("disk", "0 bytes free: status.json written since the disk filled / its storage_ok",
                f"{'yes' if st_full.get('ts', 0) > t_fill else 'no, stale'} / {st_full.get('health', {}).get('storage_ok')}",
                st_full.get("ts", 0) > t_fill and st_full.get("health", {}).get("storage_ok") is False)
        ctx.row("disk", "0 bytes free: commands answered while full", f"{len(during)}/{n}", None)
        # 3. space back: everything held arrives, new sessions run
        t_free = time.monotonic()
        full_msgs = be.results[n_before:]
        full_dups = len(full_msgs) - len({r.seq for r in full_msgs})
        filler.unlink()
        d.wait_status(lambda s: s["health"]["storage_ok"] and s["health"]["unstored"] == 0, 20,
                      fresh_after=time.time())
        got_mid = answers(mid, 30)
        got_full = answers(full_ids, 30)
        late = max([r.t for r in list(got_mid.values()) + list(got_full.values())], default=t_free) - t_free
        after = answers(burst(3), 30)
        st_end = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0, 30)
        chk = stream_checks(be.results)
        lost_seq = len(set(range(1, st_end["last_seq"] + 1)) - chk["seqs"])
        mid_lost = sum(1 for i in mid if i not in got_mid)
        mid_run = sum(1 for r in got_mid.values() if r.session)
        full_refused = sum(1 for r in got_full.values() if r.reason == "storage_full")
        ctx.row("disk", "0 bytes free: R/result messages / duplicates of an already delivered seq",
                f"{len(full_msgs)} / {full_dups} in {time.monotonic() - t_free + 3.0 + 5.0:.0f} s",
                full_dups <= 3 * len({r.seq for r in full_msgs}) + 3)
        ctx.row("disk", "space back: 3 commands sent as it filled: session results / refused / lost",
                f"{mid_run} / {len(got_mid) - mid_run} / {mid_lost}", mid_lost == 0)
        ctx.row("disk", "space back: commands sent while full answered storage_full / last one after (s)",
                f"{full_refused}/{n} / {late:.1f}", full_refused == n)
        ctx.row("disk", "space back: new commands -> sessions; seq gaps",
                f"{sum(1 for r in after.values() if r.session)}/3; {lost_seq}",
                all(r.session for r in after.values()) and len(after) == 3 and lost_seq == 0)
        # 4. a result waits in the outbox (broker down), the disk fills, the broker returns:
        #    the broker's PUBACK cannot be recorded (DELETE on a full disk)
        msg, c = command(ctx.key, ctx.inputs.ref)
        be.send(msg)
        d.wait_status(lambda s: s["state"]["state"] != "idle", 10)
        b.stop()
        d.wait_status(lambda s: s["health"]["outbox_depth"] >= 1, 20, fresh_after=time.time())
        fill_to(0)
        n0 = len(be.results)
        b.start()
        be.wait(lambda: c["request_id"] in be.by_request(), 20)
        time.sleep(3.0)
        storm = [r for r in be.results[n0:] if r.request_id == c["request_id"]]
        filler.unlink()
        d.wait_status(lambda s: s["health"]["outbox_depth"] == 0 and s["health"]["storage_ok"], 30,
                      fresh_after=time.time())
        ctx.row("disk", "result acknowledged while the disk is full: copies delivered in 3 s",
                f"{len(storm)} (same seq {storm[0].seq if storm else '-'})", 1 <= len(storm) <= 3)
        chk = stream_checks(be.results)
        ctx.row("disk", "whole phase: reordered / duplicates with different bytes",
                f"{chk['reordered']} / {chk['dup_mismatch']}", chk["reordered"] == chk["dup_mismatch"] == 0)
        ctx.totals["lost"] += mid_lost + lost_seq
        ctx.totals["reordered"] += chk["reordered"]
        ctx.totals["sessions"] += sum(1 for r in [*warm.values(), *got_mid.values(), *after.values()] if r.session)
        ctx.totals["sessions"] += 1 if storm else 0
        be.close()
    finally:
        if d is not None:
            if filler.exists():
                filler.unlink()
            finish(ctx, "disk", d)
        b.stop()
        subprocess.run(["umount", str(mnt)], check=False)


VERIFY_CHILD = """\
import atexit, sys
report, sys.argv = sys.argv[1], ["facegate"] + sys.argv[2:]
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            open(report, "w").write(line.split()[1])
atexit.register(_hwm)
from facegate.cli import main
sys.exit(main())
"""


def _verify_child(ref: Path, probe: Path) -> tuple[int, str, str, float, float]:
    """rc, stdout, stderr, wall s, peak RSS MB of one `facegate verify` (VmHWM of the
    process itself, reported at exit: ru_maxrss would include the pre-exec fork of us)."""
    with tempfile.NamedTemporaryFile(suffix=".hwm") as hwm:
        t = time.monotonic()
        try:
            p = subprocess.run([sys.executable, "-c", VERIFY_CHILD, hwm.name, "verify", "--reference", str(ref),
                                "--probe", str(probe)], capture_output=True, timeout=120)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out, err = None, exc.stdout or b"", exc.stderr or b""
        dt = time.monotonic() - t
        text = Path(hwm.name).read_text().strip()
        peak = int(text) / 1024 if text else float("inf")
    return rc, out.decode(errors="replace"), err.decode(errors="replace"), dt, peak


# -- resources ---------------------------------------------------------------------------------
def phase_resources(ctx: Ctx) -> None:
    a = ctx.args
    b = ctx.broker("res-broker")
    d = new_daemon(ctx, "resources", b).start()
    be = Collector(b, d.public)
    samples = []  # (session index, rss MB, fds, threads)
    lat = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        t0 = time.monotonic()
        every = max(1, a.resource_sessions // 100)
        for i in range(a.resource_sessions):
            if i % every == 0:
                s = proc_status(d.pid)
                samples.append((i, s.get("VmRSS", 0) / 1024, s.get("fds", 0), s.get("Threads", 0)))
            msg, c = command(ctx.key, ctx.inputs.ref if i % 2 == 0 else ctx.inputs.stranger)
            t = time.monotonic()
            be.send(msg)
            r = be.wait(lambda c=c: be.by_request().get(c["request_id"]), 60)
            if not r:
                raise RuntimeError(f"session {i} not answered:\n{d.logtail()}")
            lat.append(r[0].t - t)
        s = proc_status(d.pid)
        samples.append((a.resource_sessions, s.get("VmRSS", 0) / 1024, s.get("fds", 0), s.get("Threads", 0)))
        elapsed = time.monotonic() - t0
        got = be.by_request()
        sessions = sum(1 for rs in got.values() if rs[0].session)
        decisions: dict[str, int] = {}
        for rs in got.values():
            decisions[rs[0].decision] = decisions.get(rs[0].decision, 0) + 1
        warm = [x for x in samples if x[0] >= a.resource_sessions * 0.1]
        k = max(1, len(warm) // 10)
        base_rss = statistics.mean(x[1] for x in warm[:k])
        end_rss = statistics.mean(x[1] for x in warm[-k:])
        growth = (end_rss - base_rss) / base_rss * 100
        max_growth = (max(x[1] for x in warm) - base_rss) / base_rss * 100
        base_fd, end_fd = warm[0][2], warm[-1][2]
        p50, p95, p99 = quantiles(lat)
        ctx.totals["sessions"] += sessions
        ctx.totals["rss_growth_pct"] = growth
        ctx.lat = (p50, p95, p99, len(lat))
        ctx.row("resources", "sessions back to back (one outstanding) / wall time (s)",
                f"{sessions} ({', '.join(f'{k} {v}' for k, v in sorted(decisions.items()))}) / {elapsed:.0f}",
                sessions == a.resource_sessions)
        ctx.row("resources", "RSS after warm-up (10 %) -> end, MB (growth %)",
                f"{base_rss:.0f} -> {end_rss:.0f} ({growth:+.1f} %, max {max_growth:+.1f} %)", growth <= 10)
        ctx.row("resources", "open fds after warm-up -> end / threads",
                f"{base_fd} -> {end_fd} / {warm[0][3]} -> {warm[-1][3]}", end_fd <= base_fd * 1.1)
        total = d.wait_status(lambda s: True)["health"]["latency_ms"].get("total")
        ctx.row("resources", f"latency, liveness none, Mosquitto defaults ({len(lat)}): p50 / p95 / p99 (ms)",
                f"{p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f} (models {total} ms)", None)
        plot_resources(ctx, samples, lat)
    finally:
        be.close()
        finish(ctx, "resources", d)
        b.stop()
    if a.latency_sessions:
        phase_latency(ctx, "none", True, a.latency_sessions)
        phase_latency(ctx, "passive", True, a.latency_sessions)


def phase_latency(ctx: Ctx, liveness: str, nodelay: bool, n: int) -> None:
    """Command -> signed result, one command outstanding, on a broker with or without Nagle."""
    b = ctx.broker(f"lat-{liveness}-{nodelay}", nodelay=nodelay)
    d = new_daemon(ctx, f"lat-{liveness}-{nodelay}", b, liveness=liveness).start()
    be = Collector(b, d.public)
    lat = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        for i in range(n):
            msg, c = command(ctx.key, ctx.inputs.ref if i % 2 == 0 else ctx.inputs.stranger)
            t = time.monotonic()
            be.send(msg)
            r = be.wait(lambda c=c: be.by_request().get(c["request_id"]), 60)
            if r:
                lat.append(r[0].t - t)
        total = d.wait_status(lambda s: True)["health"]["latency_ms"].get("total")
        p50, p95, p99 = quantiles(lat)
        ctx.totals["sessions"] += len(lat)
        broker = "Mosquitto set_tcp_nodelay true" if nodelay else "Mosquitto defaults"
        ctx.row("resources", f"latency, liveness {liveness}, {broker} ({len(lat)}): p50 / p95 / p99 (ms)",
                f"{p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f} (models {total} ms)", len(lat) == n)
    finally:
        be.close()
        finish(ctx, "resources", d)
        b.stop()


def plot_resources(ctx: Ctx, samples, lat) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ctx.args.out
    out.mkdir(parents=True, exist_ok=True)
    xs = [s[0] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(xs, [s[1] for s in samples], color="tab:blue", label="RSS (MB)")
    ax.set_xlabel("sessions")
    ax.set_ylabel("RSS (MB)", color="tab:blue")
    ax.set_ylim(0, max(s[1] for s in samples) * 1.2)
    ax.axvline(ctx.args.resource_sessions * 0.1, color="grey", ls=":", label="end of warm-up")
    ax2 = ax.twinx()
    ax2.plot(xs, [s[2] for s in samples], color="tab:red", label="open fds")
    ax2.set_ylabel("open file descriptors", color="tab:red")
    ax2.set_ylim(0, max(s[2] for s in samples) * 1.5)
    ax.set_title(f"facegate run: RSS and fds over {ctx.args.resource_sessions} sessions ({platform.machine()})")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "soak_resources.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.hist(np.asarray(lat) * 1000, bins=60, color="tab:green")
    for q, ls in zip(quantiles(lat), ("-", "--", ":")):
        ax.axvline(q * 1000, color="black", ls=ls)
    ax.set_xlabel("command -> signed result at the backend (ms); lines: p50, p95, p99")
    ax.set_ylabel("sessions")
    fig.tight_layout()
    fig.savefig(out / "soak_latency.png", dpi=110)
    plt.close(fig)
    ctx.row("resources", "plots", f"{out / 'soak_resources.png'}, {out / 'soak_latency.png'}", None)
