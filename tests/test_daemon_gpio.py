"""The daemon in-process with MQTT off and GPIO on gpiozero's MockFactory: the relay
pulses once per match and never on a spoof or no-match; LEDs follow the sessions; results
wait in the outbox, signed, while there is no broker."""
from __future__ import annotations

import os
import time

import pytest

from daemon_helpers import ask, in_process, local_config, outbox_payloads
from facegate import signing
from facegate.ports import Inbound

RELAY, READY, BUSY, PASS, FAIL = 17, 5, 6, 13, 19


@pytest.fixture
def terminal(tmp_path, faces, backend_key, model_dir):
    with in_process(local_config(
            "gpio-1", tmp_path, faces["video"], backend_key, camera="realtime = false\n",
            daemon='liveness = "both"\n', liveness="step_timeout_s = 10.0\n",
            gpio=f"led_ready = {READY}\nled_busy = {BUSY}\nled_pass = {PASS}\nled_fail = {FAIL}\n"
                 f"relay_pin = {RELAY}\nrelay_pulse_ms = 50\nresult_show_s = 0\n")) as d:
        yield d


def decisions(d) -> dict:
    return {rid: p["decision"] for rid, p in outbox_payloads(d).items()}


def test_relay_pulses_once_per_match_and_never_otherwise(terminal, faces, backend_key):
    d = terminal
    relay = d.indicators.factory.pin(RELAY)
    ids = [ask(d, backend_key, faces["ref"], ["turn_right", "turn_left"]),   # the person, doing the challenge
           ask(d, backend_key, faces["stranger"], ["turn_right", "turn_left"]),  # someone else's card
           ask(d, backend_key, faces["ref"], ["blink", "turn_left"])]           # a step never done in the clip
    deadline = time.monotonic() + 120
    while len(decisions(d)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    got = decisions(d)
    assert [got.get(i) for i in ids][:2] == ["match", "no_match"], got
    assert got[ids[2]] in ("spoof", "timeout"), got
    time.sleep(0.2)
    rises = sum(1 for a, b in zip(relay.states, relay.states[1:]) if not a.state and b.state)
    assert rises == 1, [s.state for s in relay.states]
    assert d.indicators.factory.pin(FAIL).state  # the last decision stays shown (result_show_s = 0)
    assert d.outbox.depth() == 3  # kept, signed, for a broker that is not there


def test_a_command_the_broker_delivers_again_is_taken_once(terminal, faces, backend_key):
    """MQTT QoS 1 is at least once: a broker that restarts before it saw the PUBACK sends the
    command again with the DUP flag. That copy is ignored; a new publish of the same bytes
    is a replay: counted, never answered."""
    d = terminal
    topic = d.topics.cmd_verify
    now = int(time.time())
    msg = signing.sign({"request_id": "twice", "nonce": os.urandom(16), "iat": now, "exp": now + 120,
                        "reference": faces["stranger"], "challenge": ["turn_right"]}, backend_key, topic)
    d.handle_inbound(Inbound(topic, msg))
    d.handle_inbound(Inbound(topic, msg, redelivered=True))
    d.handle_inbound(Inbound(topic, msg))

    def answers():
        out = []
        for row in d.outbox.pending(1000):
            p = signing.verify(row.message, signing.public_from_hex(d.key.public.hex()), row.topic).payload
            if p["request_id"] == "twice":
                out.append((p["decision"], p["reason"]))
        return out
    deadline = time.monotonic() + 60
    while len(answers()) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    got = answers()
    assert len(got) == 1 and got[0][0] != "rejected", got  # the one session that ran, and nothing else
    assert d.health.ignored_counts() == {"redelivered": 1, "replayed_request_id": 1}
