"""`facegate` as a user runs it: a subprocess, real files, real models, exit codes."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from timeouts import timeout_s

FACEGATE = [sys.executable, "-m", "facegate.cli"]


def run(*args, **kw):
    return subprocess.run([*FACEGATE, *map(str, args)], capture_output=True, text=True, timeout=timeout_s(120), **kw)


@pytest.fixture(scope="module")
def pair(lfw, model_dir):
    return lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg", lfw / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg"


def test_verify_match_prints_one_json_object_and_exits_0(pair):
    p = run("verify", "--reference", pair[0], "--probe", pair[1])
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["decision"] == "match" and out["precision"] in ("fp32", "int8", "dynint8")
    assert set(out["timings_ms"]) >= {"detect", "mesh", "align", "embed", "total"}
    assert p.stdout.count("\n") == 1


def test_verify_no_match_exits_1(pair, lfw):
    p = run("verify", "--reference", pair[0], "--probe", lfw / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg")
    assert p.returncode == 1 and json.loads(p.stdout)["decision"] == "no_match"


def test_verify_pairs_prints_one_line_per_pair_as_single_verify_does(tmp_path, pair, lfw):
    other = lfw / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg"
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(f"# reference<TAB>probe\n{pair[0]}\t{pair[1]}\n\n{pair[0]}\t{other}\n")
    p = run("verify", "--pairs", pairs)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [(x["reference"], x["probe"]) for x in lines] == [(str(pair[0]), str(pair[1])), (str(pair[0]), str(other))]
    assert [x["decision"] for x in lines] == ["match", "no_match"]
    single = json.loads(run("verify", "--reference", pair[0], "--probe", other).stdout)
    assert lines[1]["similarity"] == single["similarity"] and lines[1]["precision"] == single["precision"]


def test_verify_pairs_goes_on_after_a_bad_pair_and_exits_2(tmp_path, pair):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image at all")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(f"{pair[0]}\t{bad}\n{pair[0]}\t{pair[1]}\n")
    p = run("verify", "--pairs", pairs)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    first, second = (json.loads(x) for x in p.stdout.splitlines())
    assert first["decision"] == "error" and "not a JPEG" in first["error"]
    assert second["decision"] == "match"


@pytest.mark.parametrize("text,why", [
    ("only-one-column.jpg\n", "line 1: expected REFERENCE<TAB>PROBE"),
    ("# nothing\n\n", "lists no pairs"),
])
def test_verify_pairs_file_errors_exit_2_with_one_line(tmp_path, text, why):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(text)
    p = run("verify", "--pairs", pairs)
    assert p.returncode == 2 and why in p.stderr and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1
    p = run("verify", "--pairs", tmp_path / "missing.tsv")
    assert p.returncode == 2 and "cannot read pairs file" in p.stderr
    p = run("verify", "--pairs", pairs, "--reference", "x.jpg")
    assert p.returncode == 2 and "--pairs goes without" in p.stderr
    p = run("verify", "--probe", "x.jpg")
    assert p.returncode == 2 and "--reference and --probe, or --pairs" in p.stderr


@pytest.mark.parametrize("content,why", [
    (b"", "empty"),
    (b"this is not an image at all", "not a JPEG"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 200, "corrupt"),
])
def test_bad_reference_exits_2_with_one_line(tmp_path, pair, content, why):
    bad = tmp_path / "id.jpg"
    bad.write_bytes(content)
    p = run("verify", "--reference", bad, "--probe", pair[1])
    assert p.returncode == 2
    assert why in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stdout == ""


def test_truncated_photo_and_bad_video_exit_2(tmp_path, pair):
    trunc = tmp_path / "probe.jpg"
    trunc.write_bytes(pair[1].read_bytes()[:2000])
    p = run("verify", "--reference", pair[0], "--probe", trunc)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    vid = tmp_path / "probe.mp4"
    # fixed junk: fresh random bytes are, now and then, probed by FFmpeg as an H.263 stream
    # that decodes to noise (a readable video without a face: exit 1, not this test's case)
    vid.write_bytes(random.Random(0).randbytes(5000))
    p = run("verify", "--reference", pair[0], "--probe", vid)
    assert p.returncode == 2 and "not a readable image or video" in p.stderr
    p = run("verify", "--reference", pair[0], "--probe", tmp_path / "missing.jpg")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = run("verify", "--reference", tmp_path, "--probe", pair[1])
    assert p.returncode == 2 and "directory" in p.stderr


def test_config_check_reports_each_error_with_key_and_line(tmp_path):
    cfg = tmp_path / "facegate.toml"
    cfg.write_text('device_id = "kiosk-1"\n\n[verify]\nmatch_threshold = 3\nfusion_frame = 2\n[models]\nprecision = "fp64"\n')
    p = run("config", "check", cfg)
    assert p.returncode == 2
    err = p.stderr
    assert f"{cfg}:4: verify.match_threshold" in err
    assert f"{cfg}:5: verify.fusion_frame: unknown key (a misspelling, or in the wrong [section]?" in err
    assert "Extra inputs" not in err  # pydantic's words, which told a technician nothing
    assert f"{cfg}:7: models.precision" in err
    lines = [ln.split(":")[1] for ln in err.splitlines()]
    assert lines == sorted(lines, key=int), err  # in the order of the file


def test_config_check_on_a_backend_config_names_the_backend_check(tmp_path):
    cfg = tmp_path / "backend.toml"
    cfg.write_text('key_file = "backend.pem"\n[mqtt]\nhost = "b"\n')
    p = run("config", "check", cfg)
    assert p.returncode == 2 and f"facegate backend config check {cfg}" in p.stderr, p.stderr
    backend = run("backend", "config", "check", cfg)  # it validates; the key is still to be made
    assert backend.returncode == 2 and "no such file (make it: facegate keys init --path" in backend.stderr


def test_config_example_is_a_valid_config(tmp_path):
    p = run("config", "example")
    assert p.returncode == 0
    f = tmp_path / "example.toml"
    f.write_text(p.stdout)
    untouched = run("config", "check", f)  # a file camera without a file to play is not ok
    assert untouched.returncode == 2 and f"{f}:" in untouched.stderr and "camera.path: empty" in untouched.stderr
    f.write_text(p.stdout.replace('path = ""', 'path = "entrance.webm"', 1))
    ok = run("config", "check", f)
    assert ok.returncode == 0 and "note: mqtt.trusted_keys is empty: no verify command will be accepted" in ok.stdout
    assert "# Cosine similarity" in p.stdout


def test_config_check_notes_a_broker_user_that_is_not_the_device_id(tmp_path):
    f = tmp_path / "facegate.toml"
    f.write_text('device_id = "kiosk-7"\n[camera]\npath = "x.webm"\n[mqtt]\nusername = "kiosk-8"\n'
                 f'trusted_keys = ["{"ab" * 32}"]\n')
    r = run("config", "check", f)
    assert r.returncode == 0 and r.stdout.splitlines()[1:] == [
        "note: mqtt.username 'kiosk-8' is not device_id 'kiosk-7': with the broker's per-device ACL "
        "(scripts/broker-setup.sh) every publish of this terminal is refused"]


def test_models_verify_passes_on_the_installed_models(model_dir):
    p = run("models", "verify")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "models: ok" in p.stdout


@pytest.fixture(scope="module")
def zubair(data_dir, tmp_path_factory):
    """Reference: a frame of the live video (the same person), saved as a PNG portrait."""
    import cv2

    from facegate.adapters.files import FileCamera

    d = tmp_path_factory.mktemp("zubair")
    with FileCamera(data_dir / "replay" / "zubair" / "live.webm") as cam:
        for f in cam.frames():
            if f.seq == 20:
                cv2.imwrite(str(d / "ref.png"), f.image)
                break
    (d / "cfg.toml").write_text("[liveness]\nstep_timeout_s = 10.0\n")  # the video's turns come late
    return d, data_dir / "replay" / "zubair"


def test_printed_photo_of_the_right_person_is_a_spoof(data_dir, model_dir):
    live = sorted((data_dir / "nuaa" / "ClientRaw" / "0001").iterdir())[0]
    photo = sorted((data_dir / "nuaa" / "ImposterRaw" / "0001").iterdir())[0]
    plain = json.loads(run("verify", "--reference", live, "--probe", photo).stdout)
    assert plain["decision"] == "match"  # the face itself matches ...
    p = run("verify", "--reference", live, "--probe", photo, "--liveness", "passive")
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["decision"] == "spoof" and out["reason"] == "presentation_attack"
    assert out["liveness"] == {"mode": "passive", "passive_pass": False, "passive_frames": 1}
    assert "score" not in json.dumps(out["liveness"])


def test_live_video_passes_the_challenge_in_its_order_only(zubair):
    d, vids = zubair
    args = ["verify", "--config", d / "cfg.toml", "--reference", d / "ref.png", "--probe", vids / "live.webm",
            "--liveness", "both", "--challenge"]
    ok = run(*args, "turn_right,turn_left")
    out = json.loads(ok.stdout)
    assert ok.returncode == 0 and out["decision"] == "match", out
    assert out["liveness"]["steps_done"] == ["turn_right", "turn_left"] and out["liveness"]["passive_pass"]
    wrong = json.loads(run(*args, "turn_left,turn_right").stdout)
    assert wrong["decision"] == "spoof" and wrong["reason"] == "timeout"


def test_screen_replay_is_a_spoof(zubair):
    d, vids = zubair
    p = run("verify", "--reference", d / "ref.png", "--probe", vids / "screen_replay.webm", "--liveness", "passive")
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["decision"] == "spoof", out


def test_unknown_challenge_step_is_bad_input(pair):
    p = run("verify", "--reference", pair[0], "--probe", pair[1], "--liveness", "active", "--challenge", "smile")
    assert p.returncode == 2 and "unknown challenge step" in p.stderr


def test_blink_challenge_passes_on_the_annotated_blink_clip(data_dir, tmp_path, model_dir):
    """The whole CLI path (iris-model eye lids) finds the blink of the annotated clip, and a
    still frame of the same face never passes a blink step."""
    import cv2

    from facegate.adapters.files import FileCamera

    clip = data_dir / "eyeblink8" / "EyeBlink8_1" / "calibration18_video1.mp4"
    with FileCamera(clip) as cam:
        first = next(iter(cam.frames())).image
    cv2.imwrite(str(tmp_path / "ref.png"), first)
    p = run("verify", "--reference", tmp_path / "ref.png", "--probe", clip, "--liveness", "active",
            "--challenge", "blink")
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["liveness"]["steps_done"] == ["blink"], out
    still = run("verify", "--reference", tmp_path / "ref.png", "--probe", tmp_path / "ref.png",
                "--liveness", "active", "--challenge", "blink")
    assert json.loads(still.stdout)["decision"] == "spoof"


def test_keys_sign_command_and_verify_result_round_trip(tmp_path, pair):
    key = tmp_path / "backend.pem"
    assert run("keys", "init", "--path", key).returncode == 0
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert run("keys", "init", "--path", key).returncode == 1  # never overwrites
    shown = json.loads(run("keys", "show", "--path", key, "--json").stdout)
    assert len(shown["public_key"]) == 64 and len(shown["kid"]) == 16
    cmd = tmp_path / "cmd.cose"
    made = json.loads(run("sign-command", "--key", key, "--reference", pair[0], "--device", "k9",
                          "--challenge", "turn_left,blink", "-o", cmd).stdout)
    assert made["topic"] == "facegate/v1/k9/cmd/verify"
    ok = run("verify-result", "--pubkey", shown["public_key"], "--topic", made["topic"], cmd)
    payload = json.loads(ok.stdout)["payload"]
    assert ok.returncode == 0 and payload["challenge"] == ["turn_left", "blink"]
    assert payload["reference"] == Path(pair[0]).read_bytes().hex()
    data = bytearray(cmd.read_bytes())
    data[-5] ^= 1
    cmd.write_bytes(bytes(data))
    bad = run("verify-result", "--pubkey", key, "--topic", made["topic"], cmd)
    assert bad.returncode == 1 and "bad_signature" in bad.stderr
    garbage = run("verify-result", "--pubkey", "zz", "--topic", "t", cmd)
    assert garbage.returncode == 2 and "64 hex digits" in garbage.stderr


def test_keys_commands_point_to_the_credential_when_the_service_signs_with_one(tmp_path):
    """Under systemd the key is a credential copied at start: rotating the state-dir file
    would silently do nothing, so the CLI says what to do instead."""
    (tmp_path / "status.json").write_text(json.dumps({"pid": os.getpid(), "key": {
        "path": "/run/credentials/facegate.service/signing.key", "source": "credential"}}))
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n')
    p = run("keys", "rotate", "--config", cfg)
    assert p.returncode == 2 and "--path /etc/facegate/signing.key" in p.stderr
    assert not (tmp_path / "signing.key").exists()


@pytest.mark.parametrize("argv, user, why", [
    (["sleep", "60"], None, "pid {pid} is not a facegate daemon"),
    # a command line that reads `facegate run`, as another user than the state dir's owner
    # (sh stays while sleep runs; SIGHUP would end it)
    pytest.param(["/bin/sh", "-c", "sleep 60; exit 0", "/opt/facegate/venv/bin/facegate", "run"], 65534,
                 "pid {pid} runs as uid 65534, not the service user (uid 0)",
                 marks=pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")),
])
def test_keys_rotate_does_not_signal_a_pid_from_the_status_file_that_is_not_the_daemon(tmp_path, argv, user, why):
    """`keys rotate` as root used to SIGHUP whatever pid status.json named: a file the
    service user can write."""
    victim = subprocess.Popen(argv, user=user, group=user)
    try:
        (tmp_path / "status.json").write_text(json.dumps({"pid": victim.pid}))
        cfg = tmp_path / "cfg.toml"
        cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n')
        p = run("keys", "rotate", "--config", cfg, "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["kid"] and (tmp_path / "signing.key").exists()
        assert "did not signal the status file's pid: " + why.format(pid=victim.pid) in p.stderr
        with pytest.raises(subprocess.TimeoutExpired):
            victim.wait(0.5)  # still alive: not signalled
    finally:
        victim.kill()
        victim.wait()


def test_daemon_command_lines():
    from facegate.adapters.systemd import is_daemon_cmdline

    assert is_daemon_cmdline(["/opt/facegate/venv/bin/python3", "/opt/facegate/venv/bin/facegate", "run",
                              "--config", "/etc/facegate/facegate.toml"])
    assert is_daemon_cmdline([sys.executable, "-m", "facegate.cli", "run", "--config", "x.toml"])
    assert not is_daemon_cmdline(["sleep", "60"])
    assert not is_daemon_cmdline(["/usr/bin/facegate", "status"])
    assert not is_daemon_cmdline(["vim", "run", "facegate"])
