#!/usr/bin/env python3
"""A junk flood against `facegate run` on a real Mosquitto (TLS, passwords, ACL), with real
signed commands interleaved; how much junk the daemon sustains with no real command lost.

    .venv/bin/python scripts/flood.py [--seconds 30] [--flooders 2] [--corr-kib 1]
                                      [--command-every-s 0.5] [--data ../shared/data]

Junk (unauthenticated, each with an MQTT 5 response topic and --corr-kib of correlation
data): random bytes, unsigned maps carrying a victim's ids, COSE messages with the trusted
key's kid and a signature that does not verify, empty messages; published at QoS 1 as fast
as --flooders client processes can. Meanwhile a backend sends a real signed command every
--command-every-s and checks each result with plain cbor2 + cryptography. Measured: junk
messages the daemon handled per second (its health `ignored` counter, so what the daemon
really processed, not only what was sent), real commands answered exactly once / lost /
answered twice, anything published for the junk, how long the real commands waited, and
the state dir's size before, right after and (once the purge ran) after the flood. Ends with one line:
  flood: junk_per_s=N junk=J real=R answered_once=A lost=L extra_answers=X state_kib=B->P->F
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))  # the test Mosquitto (TLS, passwords, ACL)
import cbor2  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

import soak_common as soak  # noqa: E402  (the soak's daemon, backend, commands and inputs)
from broker import USERS, Mosquitto  # noqa: E402
from facegate import signing  # noqa: E402


def junk(i: int, kid: bytes, corr_bytes: int) -> tuple[bytes, Properties]:
    kind = i % 4
    if kind == 0:
        payload = os.urandom(1 + i % 64)
    elif kind == 1:
        payload = cbor2.dumps({"request_id": f"victim-{i}", "nonce": os.urandom(16)})
    elif kind == 2:  # the trusted key's kid; a signature that does not verify
        protected = cbor2.dumps({1: -8, 4: kid})
        body = cbor2.dumps({"request_id": f"forged-{i}", "nonce": os.urandom(16)})
        payload = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, body, os.urandom(64)]))
    else:
        payload = b""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"facegate/v1/replies/backend/junk-{i % 7}"
    if corr_bytes:
        props.CorrelationData = os.urandom(corr_bytes)
    return payload, props


def flooder(port: int, ca: str, kid: bytes, corr_bytes: int, until: float, counter) -> None:
    """One client process publishing junk at QoS 1 as fast as the broker takes it."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=f"flood-{os.getpid()}")
    c.username_pw_set("backend", USERS["backend"])
    c.tls_set(ca_certs=ca)
    c.max_inflight_messages_set(200)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    pool = [junk(i, kid, corr_bytes) for i in range(512)]  # made up front: the rate is the daemon's
    n = 0
    last = None
    while time.time() < until:
        payload, props = pool[n % len(pool)]
        last = c.publish(soak.CMD, payload, qos=1, properties=props)
        n += 1
        if n % 200 == 0:
            last.wait_for_publish(30)  # keep paho's queue short: the broker sets the pace
    if last is not None:
        last.wait_for_publish(30)
    with counter.get_lock():
        counter.value += n
    c.disconnect()
    c.loop_stop()


def state_kib(d: Path) -> float:
    return sum(p.stat().st_blocks * 512 for p in d.rglob("*") if p.is_file()) / 1024


def ignored(d: soak.Daemon) -> int:
    return sum(d.status().get("health", {}).get("ignored", {}).values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the flood")
    ap.add_argument("--flooders", type=int, default=2, help="junk publishing processes")
    ap.add_argument("--corr-kib", type=float, default=1.0, help="correlation data per junk message, KiB")
    ap.add_argument("--command-every-s", type=float, default=0.5, help="a real command this often")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, state dir)")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="facegate-flood-"))
    inputs = soak.load_inputs(a.data)
    key = signing.SigningKey.generate()
    (work / "broker").mkdir()
    b = Mosquitto(work / "broker").start()
    d = soak.Daemon(work / "daemon", b, key, inputs.video, health_interval_s=1.0, max_pending=30).start()
    be = soak.Collector(b, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 60)
        msg, warm = soak.command(key, inputs.ref)
        be.send(msg)
        be.wait(lambda: warm["request_id"] in be.by_request(), 60)
        time.sleep(2.0)
        before_kib, ignored0 = state_kib(d.state), ignored(d)
        until = time.time() + a.seconds
        counter = multiprocessing.Value("q", 0)
        procs = [multiprocessing.Process(target=flooder, args=(b.port, str(b.tls["ca"]), key.kid,
                                                              int(a.corr_kib * 1024), until, counter))
                 for _ in range(a.flooders)]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        sent: list[str] = []
        sent_at: dict[str, float] = {}
        while time.time() < until:
            msg, cmd = soak.command(key, inputs.ref if len(sent) % 2 == 0 else inputs.stranger)
            sent_at[cmd["request_id"]] = time.monotonic()
            be.send(msg)
            sent.append(cmd["request_id"])
            time.sleep(a.command_every_s)
        for p in procs:
            p.join(120)
        sent_junk = counter.value
        # the daemon works through what the broker still holds for it
        d.wait_status(lambda s: sum(s["health"].get("ignored", {}).values()) - ignored0 >= sent_junk,
                      max(60.0, a.seconds * 4), fresh_after=time.time())
        handled_s = time.monotonic() - t0
        peak_kib = state_kib(d.state)
        be.wait(lambda: all(r in be.by_request() for r in sent), 120)
        time.sleep(3.0)  # a purge or two (health_interval_s = 1)
        after_kib = state_kib(d.state)
        st = d.status()["health"]
        handled = sum(st.get("ignored", {}).values()) - ignored0
        by = be.by_request()
        once = sum(1 for r in sent if len({x.seq for x in by.get(r, [])}) == 1)
        lost = sum(1 for r in sent if r not in by)
        extra = sum(len(v) for k, v in by.items() if k not in sent and k != warm["request_id"]) + be.reply_count
        lat = sorted(by[r][0].t - sent_at[r] for r in sent if r in by)
        soak.log(f"flood: {sent_junk} junk messages sent by {a.flooders} client(s) in {a.seconds:.0f} s, "
                 f"{handled} handled by the daemon in {handled_s:.1f} s; ignored by reason {st.get('ignored')}; "
                 f"daemon alive {d.alive()}, crashes {d.crashes}; real commands answered after p50 / max "
                 f"{lat[len(lat) // 2] if lat else float('nan'):.1f} / {lat[-1] if lat else float('nan'):.1f} s "
                 "(they wait behind the junk the broker queued before them)")
        print(f"flood: junk_per_s={handled / handled_s:.0f} junk={handled} real={len(sent)} answered_once={once} "
              f"lost={lost} extra_answers={extra} state_kib={before_kib:.0f}->{peak_kib:.0f}->{after_kib:.0f}",
              flush=True)
        return 0 if lost == 0 and extra == 0 and once == len(sent) and handled == sent_junk else 1
    finally:
        be.close()
        d.stop()
        b.stop()
        if a.keep:
            soak.log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
