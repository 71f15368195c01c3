"""The daemon's MQTT side in process: the real daemon (models, camera file, outbox, signing)
with adapters.fake_mqtt.FakePublisher as its broker connection. Command in, signed result
out and acknowledged; results re-sent in seq order after the connection drops with their
PUBACKs outstanding. tests/test_daemon.py and test_delivery.py do the same over Mosquitto."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from daemon_helpers import command, independent_verify
from facegate import config as config_mod
from facegate import daemon as daemon_mod
from facegate.adapters.fake_mqtt import FakePublisher

DEV = "inproc-1"
ROOT = f"facegate/v1/{DEV}"
REPLY = "facegate/v1/replies/backend-9"


@contextmanager
def running(tmp_path, faces, backend_key, camera: str = "", daemon: str = 'liveness = "none"\nmax_pending = 8',
            more: str = "[verify]\nfusion_frames = 4"):
    """The real daemon on the replay video with FakePublisher as its broker connection,
    online (status, attest, state, health announced); `camera`, `daemon`: more lines of
    those sections, `more`: more sections. Yields (daemon, publisher); stopped afterwards."""
    cfg = config_mod.parse(f'''
device_id = "{DEV}"
[camera]
source = "file"
path = "{faces["video"]}"
realtime = false
{camera}
[daemon]
state_dir = "{tmp_path}"
{daemon}
{more}
[mqtt]
enabled = true
trusted_keys = ["{backend_key.public.hex()}"]
''')
    pub = FakePublisher()
    d = daemon_mod.build(cfg, publisher=pub)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        # on_connect announces status, attest, state, then health: wait for all of them
        pub.wait_for(lambda p: p.retained.get(f"{ROOT}/status") == b"online" and f"{ROOT}/health" in p.retained, 30)
        yield d, pub
    finally:
        d.request_stop()
        t.join(30)


@pytest.fixture
def terminal(tmp_path, faces, backend_key, model_dir):
    with running(tmp_path, faces, backend_key) as (d, pub):
        yield d, pub


def signed_results(pub: FakePublisher, public: bytes, topic: str = f"{ROOT}/result") -> list[dict]:
    return [independent_verify(m, public, topic) for m in pub.on(topic)]


def test_a_command_in_gives_one_signed_result_out_and_the_outbox_empties_on_its_ack(terminal, faces, backend_key):
    d, pub = terminal
    assert f"{ROOT}/cmd/verify" in pub.subscriptions
    attest = independent_verify(pub.retained[f"{ROOT}/attest"], d.key.public, f"{ROOT}/attest")
    assert attest["dev"] == DEV and attest["pub"] == d.key.public
    msg, cmd = command(backend_key, faces["ref"], topic=f"{ROOT}/cmd/verify")
    assert pub.receive(f"{ROOT}/cmd/verify", msg, response_topic=REPLY, correlation=b"corr-1")
    pub.wait_for(lambda p: p.on(REPLY), 60)
    (r,) = signed_results(pub, d.key.public)
    assert (r["request_id"], r["nonce"], r["decision"], r["seq"]) == (cmd["request_id"], cmd["nonce"], "match", 1)
    reply = next(s for s in pub.published if s.topic == REPLY)
    assert reply.correlation == b"corr-1" and independent_verify(reply.payload, d.key.public, REPLY) == r
    pub.wait_for(lambda p: d.outbox.depth() == 0, 10)  # acknowledged, so gone from the outbox
    pub.wait_for(lambda p: p.retained[f"{ROOT}/state"].split(b'"')[3] == b"idle", 10)  # after the result
    states = [s.split(b'"')[3] for s in pub.on(f"{ROOT}/state")]
    assert states[0] == b"idle" and b"waiting_face" in states and states[-1] == b"idle"


def test_results_whose_acks_a_dropped_connection_lost_come_again_in_seq_order(terminal, faces, backend_key):
    d, pub = terminal
    pub.ack_delay_s = None  # the broker takes the results but its PUBACKs do not come
    ids = []
    for ref in (faces["ref"], faces["stranger"], faces["ref"]):
        msg, cmd = command(backend_key, ref, topic=f"{ROOT}/cmd/verify")
        pub.receive(f"{ROOT}/cmd/verify", msg)
        ids.append(cmd["request_id"])
    pub.wait_for(lambda p: len(p.on(f"{ROOT}/result")) == 3, 90)
    assert d.outbox.depth() == 3
    pub.ack_delay_s = 0
    pub.disconnect()
    pub.connect()
    pub.wait_for(lambda p: d.outbox.depth() == 0, 30)
    rs = signed_results(pub, d.key.public)
    assert [r["seq"] for r in rs] == [1, 2, 3, 1, 2, 3]  # every one again, from the oldest
    assert [r["request_id"] for r in rs[3:]] == ids and [r["decision"] for r in rs[3:]] == ["match", "no_match", "match"]
    assert rs[:3] == rs[3:]  # a duplicate is the same signed result
    assert pub.on(f"{ROOT}/status").count(b"online") == 2  # announced again after the reconnect
    time.sleep(0.3)
    assert len(pub.on(f"{ROOT}/result")) == 6  # and nothing more


def test_a_replay_session_leaves_the_idle_feed_at_its_idle_rate(tmp_path, faces, backend_key, model_dir):
    """A file camera replays the file on a camera of its own for each session, so the idle
    feed (a second reader of the same file) keeps camera.idle_fps instead of decoding the
    file as fast as it can beside the session: that race took as much CPU as the session's
    own frames (scripts/screen_bench.py: 18.5 -> 9.0 CPU ms a frame without it). A session
    of the whole clip (its turns come at the end). Mutation: the feed's rate lifted for
    replay sessions too - fails (the feed reads dozens of frames)."""
    with running(tmp_path, faces, backend_key, camera="loop = true\nidle_fps = 5", daemon='liveness = "active"',
                 more="[liveness]\nstep_timeout_s = 10") as (d, pub):
        msg, cmd = command(backend_key, faces["ref"], topic=f"{ROOT}/cmd/verify", challenge=["turn_right", "turn_left"])
        t0 = time.monotonic()
        assert pub.receive(f"{ROOT}/cmd/verify", msg)
        pub.wait_for(lambda p: signed_results(p, d.key.public), 60)
        t1 = time.monotonic()
        assert signed_results(pub, d.key.public)[0]["decision"] == "match"
        read = [x for x in list(d.feed._times) if t0 <= x <= t1]  # the feed's frames while the session ran
        assert len(read) <= 5 * (t1 - t0) + 2, (len(read), t1 - t0)
