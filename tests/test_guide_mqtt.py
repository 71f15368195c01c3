"""Guidance in the contract: `facegate run` (a subprocess, the real models) on a copy of the
replay of a real person shrunk so the face starts too small, a real Mosquitto (TLS,
passwords, the per-device ACL), and a backend client reading R/guide: the person is told
to move closer, then to hold still, in order, with nothing but the documented words and
fractions, never retained. And the same words through the sinks on a fake publisher."""
from __future__ import annotations

import json

import pytest

import screen_videos
from broker import Backend, Mosquitto
from daemon_helpers import ROOT, DaemonProc, command, wait_online, wait_result
from facegate.adapters.fake_mqtt import FakePublisher
from facegate.announce import Announcer
from facegate.config import Config
from facegate.events import Answered, StateChanged, tell
from facegate.guidance import Guidance
from facegate.messages import GUIDE_KEYS, Topics
from facegate.signing import SigningKey
from facegate.sinks.mqtt import MqttSink
from facegate.vocab import Hint, State


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


def test_a_person_too_far_away_is_guided_on_r_guide(tmp_path, broker, faces, backend_key, data_dir, model_dir):
    frames = screen_videos.original_frames(data_dir / "replay" / "zubair" / "live.webm")
    small = screen_videos.small(frames, tmp_path / "small.mp4")
    # 30 good frames (2 s) to collect: long enough for hold_still to be shown once the face is near
    d = DaemonProc(tmp_path, broker, {"video": small}, backend_key,
                   extra="[screen]\nenabled = false\n[verify]\nfusion_frames = 30\n").start()
    be = Backend(broker)
    try:
        wait_online(be)
        msg, cmd = command(backend_key, faces["ref"])
        be.publish(f"{ROOT}/cmd/verify", msg)
        wait_result(be, d.public, cmd["request_id"], timeout_s=120)
        guides = be.on(f"{ROOT}/guide")
        docs = [json.loads(m.payload) for m in guides]
        assert docs, d.logtext()[-2000:]
        assert not any(m.retain for m in guides)
        assert all(list(g) == list(GUIDE_KEYS) for g in docs)  # nothing else: no box, score or image
        assert {g["session"] for g in docs} == {docs[0]["session"]}
        assert all(g["state"] == State.WAITING_FACE and g["step"] is None for g in docs)  # passive: no steps
        hints = [g["hint"] for g in docs]
        shown = [h for i, h in enumerate(hints) if i == 0 or hints[i - 1] != h]
        assert Hint.MOVE_CLOSER in shown and shown[-1] == Hint.HOLD_STILL, shown
        assert shown.index(Hint.MOVE_CLOSER) < len(shown) - 1
        progress = [g["progress"] for g in docs]
        assert progress == sorted(progress) and progress[0] < 0.1 and progress[-1] >= 0.8  # the last may fall between updates
        left = [g["seconds_left"] for g in docs]
        # frame time: at most one update every 0.25 s of the session's 20 s
        assert all(a - b >= 0.25 - 0.051 for a, b in zip(left, left[1:])), left
        assert left[0] <= 20.0 and left[-1] > 0
    finally:
        be.close()
        d.stop()


def test_the_mqtt_sink_sends_guidance_qos_0_not_retained_beside_the_retained_state():
    pub = FakePublisher()
    pub.start(lambda m: None, lambda: None, lambda: None)  # connected
    cfg = Config()
    topics = Topics.of(cfg.mqtt.prefix, "k1")
    announce = Announcer(pub, cfg, topics, SigningKey.generate, "boot", {}, lambda: 0.0)
    g = Guidance("s1", State.CHALLENGE, "blink", Hint.BLINK, 0.5, 0.4, 12.0, 3.0)
    tell([MqttSink(announce)], StateChanged(State.CHALLENGE, "blink", "s1"))
    tell([MqttSink(announce)], g)
    tell([MqttSink(announce)], Answered("s1", "r1", "match", None))
    sent = {s.topic: s for s in pub.published}
    assert (sent[topics.guide].qos, sent[topics.guide].retain) == (0, False)
    assert json.loads(sent[topics.guide].payload) == g.as_dict()
    assert (sent[topics.state].qos, sent[topics.state].retain) == (1, True)
    assert topics.guide not in pub.retained and json.loads(sent[topics.event].payload)["decision"] == "match"


def test_a_sink_that_fails_does_not_silence_the_others():
    heard = []

    def broken(event):
        raise RuntimeError("a screen that went away")

    tell([broken, heard.append], StateChanged(State.IDLE))
    assert heard == [StateChanged(State.IDLE)]
