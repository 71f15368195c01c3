"""`facegate demo`: the real daemon with a video file as its camera and no broker; each
printed result is checked here with an independent COSE verifier (plain cbor2 +
cryptography), against the device key and the result topic it was signed for."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading

import pytest
from cryptography.exceptions import InvalidSignature

from daemon_helpers import independent_verify
from facegate import demo
from timeouts import timeout_s

TOPIC = f"facegate/v1/{demo.DEMO_DEVICE_ID}/result"


def facegate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    if args[0] == "demo":  # each session's deadline follows the tests' knob (tests/timeouts.py)
        args = (*args, "--deadline-s", f"{timeout_s(demo.DEFAULT_TIMEOUT_S):g}")
    return subprocess.run([sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s(180), env={**os.environ, **(env or {})})


def test_builtin_demo_match_without_liveness_spoof_with_it(model_dir, tmp_path):
    """Inputs every install has (matplotlib's Grace Hopper photo): the clip is a still photo,
    so it matches on faces alone and is decided spoof (timeout) once liveness is asked."""
    r = facegate("demo", "--synthetic", "--workdir", str(tmp_path))
    out = r.stdout
    assert r.returncode == 0, r.stderr + out
    assert "Traceback" not in r.stderr
    assert (tmp_path / f"hopper_clip_v{demo.CLIP_VERSION}.mp4").is_file() and (tmp_path / "hopper_id.png").is_file()
    # progress from the daemon's state changes, in order
    for a, b in (("state waiting_face", "state deciding"), ("state challenge: step turn_right", "result: seq")):
        assert a in out and out.index(a) < out.rindex(b), (a, b, out)
    verified = re.findall(r"signature verified \(kid ([0-9a-f]{16}), device public key ([0-9a-f]{64})\)", out)
    assert len(verified) == 2 and verified[0] == verified[1]
    kid, pub = verified[0]
    assert (tmp_path / "device-signing.key").is_file()
    payloads = {}
    for mode in ("none", "both"):
        p = independent_verify((tmp_path / f"result-{mode}.cose").read_bytes(), bytes.fromhex(pub), TOPIC)
        with pytest.raises(InvalidSignature):  # signed for the result topic only
            independent_verify((tmp_path / f"result-{mode}.cose").read_bytes(), bytes.fromhex(pub),
                               f"facegate/v1/{demo.DEMO_DEVICE_ID}/event")
        assert p["dev"] == demo.DEMO_DEVICE_ID and f"request_id {p['request_id']}" in out
        assert f"nonce      {p['nonce'].hex()}" in out  # bytes printed as hex
        payloads[mode] = p
    assert hashlib.sha256(bytes.fromhex(pub)).hexdigest()[:16] == kid
    assert (payloads["none"]["decision"], payloads["none"]["reason"], payloads["none"]["liveness"]) == \
        ("match", None, {})
    assert (payloads["both"]["decision"], payloads["both"]["reason"]) == ("spoof", "timeout")
    assert payloads["both"]["liveness"] == {"steps": ["turn_right", "turn_left"], "active_pass": False,
                                            "passive_pass": False}
    assert payloads["both"]["seq"] == payloads["none"]["seq"] + 1
    assert "outcome: match" in out and "outcome: spoof (timeout)" in out
    # the printed check command agrees
    cmd = re.findall(r"check it yourself: facegate (verify-result .*)", out)[-1].split()
    ok = facegate(*cmd)
    assert ok.returncode == 0 and json.loads(ok.stdout)["payload"]["decision"] == "spoof"


def test_replay_demo_is_a_signed_match_with_liveness_both(model_dir, data_dir, tmp_path):
    """With the replay data beside the checkout: a real person, turn_right,turn_left."""
    r = facegate("demo", "--json", "--workdir", str(tmp_path), env={"FACEGATE_SHARED": str(data_dir.parent)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["video"].endswith("zubair/live.webm") and doc["liveness"] == "both"
    p = independent_verify(bytes.fromhex(doc["message"]), bytes.fromhex(doc["public_key"]), doc["topic"])
    assert doc["topic"] == TOPIC and p["request_id"] == doc["payload"]["request_id"]
    assert (p["decision"], p["reason"]) == ("match", None)
    assert p["liveness"] == {"steps": ["turn_right", "turn_left"], "active_pass": True, "passive_pass": True}
    assert "step turn_right seen" in r.stderr and "state challenge: step turn_left" in r.stderr


def test_bad_input_exits_2_with_one_line(tmp_path):
    img = tmp_path / "ref.png"
    img.write_bytes(b"not an image")
    for args in (["--video", str(tmp_path / "missing.mp4"), "--reference", str(img)],
                 ["--video", str(img)],
                 ["--video", str(img), "--reference", str(img)],
                 ["--challenge", "smile"],
                 ["--deadline-s", "0"], ["--deadline-s", "soon"], ["--deadline-s", "nan"]):
        r = facegate("demo", "--workdir", str(tmp_path), *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip()


def test_run_demo_never_hangs(model_dir, tmp_path):
    """No result in time: a clear error, and the daemon is stopped and joined anyway."""
    clip, portrait = demo.sample_inputs(tmp_path)
    lines: list[str] = []
    with pytest.raises(demo.DemoError, match="no result within 0 s"):
        demo.run_demo(clip, portrait, tmp_path, "none", None, lines.append, timeout_s=0.0)
    assert not [t for t in threading.enumerate() if t.name.startswith("facegate-demo")]
    assert any(line.startswith("daemon built") for line in lines)
    mtime = clip.stat().st_mtime_ns
    assert demo.sample_inputs(tmp_path) == (clip, portrait) and clip.stat().st_mtime_ns == mtime  # cached


def test_replay_data_only_from_an_explicit_mirror(monkeypatch, tmp_path):
    """Without $FACEGATE_SHARED the demo never guesses a data folder beside the package."""
    monkeypatch.delenv("FACEGATE_SHARED", raising=False)
    assert demo.shared_dir() is None and demo.replay_inputs(tmp_path) is None
    monkeypatch.setenv("FACEGATE_SHARED", str(tmp_path))
    assert demo.shared_dir() == tmp_path and demo.replay_inputs(tmp_path / "w") is None


def test_deadline_is_an_option(model_dir, tmp_path):
    """--deadline-s bounds each session (a slow, emulated CPU raises it instead of failing)."""
    r = subprocess.run([sys.executable, "-m", "facegate.cli", "demo", "--synthetic", "--workdir", str(tmp_path),
                        "--deadline-s", "0.001"], capture_output=True, text=True, timeout=timeout_s(180))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "demo failed: no result within 0.001 s" in r.stderr and "Traceback" not in r.stderr
