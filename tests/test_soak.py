"""Short versions of scripts/soak.py: faults (broker and daemon killed, camera gone, a model
changed on disk, storage full), fuzzed commands over MQTT and in process, bad portraits
through `facegate verify`. Real Mosquitto, `facegate run` subprocesses, results verified
with plain cbor2 + cryptography."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import soak  # noqa: E402
from facegate import signing  # noqa: E402
from facegate.messages import CommandRejected, VerifyCommand, parse_verify  # noqa: E402
from facegate.vocab import Refusal  # noqa: E402

TOPIC = "facegate/v1/kiosk-1/cmd/verify"
LIMITS = dict(max_bytes=2_000_000, max_age_s=300.0, skew_s=30.0, max_pixels=4_000_000)


# -- parse_verify in process (hypothesis) ----------------------------------------------------
@pytest.fixture(scope="module")
def small_ref() -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".png", np.full((32, 32, 3), 90, np.uint8))[1].tobytes()


KEY = signing.SigningKey.generate()
KEYS = {KEY.kid: signing.public_from_hex(KEY.public.hex())}
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**2000)
    | st.floats() | st.text(max_size=40) | st.binary(max_size=80)
    | st.sampled_from(["blink", "turn_left", "turn_right"]),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=6),
    max_leaves=12)


def _parse(message: bytes, now: float | None = None):
    """parse_verify's answer: a VerifyCommand, or the documented reason it was refused."""
    try:
        return parse_verify(message, TOPIC, KEYS, time.time() if now is None else now, **LIMITS)
    except CommandRejected as rej:
        assert rej.reason in set(Refusal), rej.reason
        assert rej.request_id is None or isinstance(rej.request_id, str)
        assert rej.nonce is None or isinstance(rej.nonce, bytes)
        return rej.reason


def _good(ref: bytes, over: dict | None = None) -> dict:
    now = int(time.time())
    p = {"request_id": uuid.uuid4().hex, "nonce": os.urandom(16), "iat": now, "exp": now + 60, "reference": ref}
    p.update(over or {})
    return p


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.builds(lambda b: b"\xd2\x84" + b, st.binary(max_size=200)))
def test_random_bytes_are_refused_with_a_documented_reason(data):
    assert isinstance(_parse(data), str)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cbor_values, min_size=0, max_size=6), st.booleans())
def test_cose_shaped_garbage_is_refused(parts, tagged):
    try:
        msg = cbor2.dumps(cbor2.CBORTag(18, parts) if tagged else parts)
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
        return
    assert isinstance(_parse(msg), str)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(soak.FIELDS + ("challenge", "extra", 7)), cbor_values, max_size=4),
       st.sets(st.sampled_from(soak.FIELDS + ("challenge",)), max_size=2))
def test_signed_commands_with_bad_fields_are_refused_or_fully_valid(small_ref, over, drop):
    p = _good(small_ref, over)
    for name in drop:
        p.pop(name, None)
    try:
        msg = signing.sign(p, KEY, TOPIC)
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
        return
    got = _parse(msg)
    if isinstance(got, VerifyCommand):  # accepted: then every field really is fine
        assert set(p) <= {*soak.FIELDS, "challenge"}
        assert isinstance(p["request_id"], str) and isinstance(p["nonce"], bytes)
        assert got.iat <= time.time() + 30 and got.exp >= time.time() - 30 and 0 <= got.exp - got.iat <= 300
        assert got.challenge is None or all(s in ("blink", "turn_left", "turn_right") for s in got.challenge)
        assert got.reference.ndim == 3


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_bit_flipped_commands_start_nothing_unless_still_authentic(small_ref, flips):
    m = bytearray(signing.sign(_good(small_ref), KEY, TOPIC))
    for pos, value in flips:
        m[pos % len(m)] = value
    got = _parse(bytes(m))
    if isinstance(got, VerifyCommand):  # only if the signature still checks out independently
        assert soak.authentic(bytes(m), KEY.public)


@pytest.mark.parametrize("field,value,reason", [
    ("iat", 2**64, "not_yet_valid"),        # a float holds it: judged as a time
    ("iat", 10**400, "bad_iat"),            # beyond any float: a TypeError before the fix
    ("exp", -(10**400), "bad_exp"),
    ("exp", 2**1100, "bad_exp"),
    ("iat", float("nan"), "bad_iat"),
    ("exp", True, "bad_exp"),
])
def test_huge_integer_times_are_refused_not_raised(small_ref, field, value, reason):
    assert _parse(signing.sign(_good(small_ref, {field: value}), KEY, TOPIC)) == reason


# -- a running daemon ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(data_dir, lfw):
    return soak.load_inputs(data_dir)


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "broker").mkdir()
    b = soak.Mosquitto(tmp_path / "broker", persist=True).start()
    yield b
    b.stop()


def _daemon(tmp_path, broker, backend_key, inputs, **kw) -> soak.Daemon:
    return soak.Daemon(tmp_path / "daemon", broker, backend_key, inputs.video, **kw)


def _burst(be: soak.Collector, key, inputs, n: int) -> list[str]:
    ids = []
    for i in range(n):
        msg, c = soak.command(key, inputs.ref if i % 2 == 0 else inputs.stranger)
        be.send(msg)
        ids.append(c["request_id"])
    return ids


def test_broker_killed_during_a_stream_loses_and_reorders_nothing(tmp_path, broker, backend_key, inputs, model_dir):
    d = _daemon(tmp_path, broker, backend_key, inputs, realtime=True, max_pending=40).start()
    be = soak.Collector(broker, d.public)
    try:
        assert be.wait(lambda: be.online_after(0), 60), d.logtail()
        broker.wait_saved()  # the backend's session is one the broker keeps over a crash
        sent = []
        for _ in range(3):
            sent += _burst(be, backend_key, inputs, 8)
            time.sleep(0.3)          # sessions of ~0.1 s are running ...
            broker.stop(kill=True)   # ... when the broker dies
            time.sleep(1.0)
            broker.start()
            d.wait_status(lambda s: s["broker"]["connected"], 30)
            be.wait(be.connected, 30)
        ok = be.wait(lambda: {r.request_id for r in be.results} >= set(sent), 90)
        if not ok:
            got = {r.request_id for r in be.results}
            miss = [i for i, s in enumerate(sent) if s not in got]
            stt = d.wait_status(lambda s: True)
            raise AssertionError(f"missing burst idx {miss}; seqs {sorted(r.seq for r in be.results)}; "
                                 f"last_seq {stt['last_seq']} depth {stt['health']['outbox_depth']}\n" + d.logtail())
        st = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0)
        chk = soak.stream_checks(be.results)
        assert chk["seqs"] >= set(range(1, st["last_seq"] + 1))  # every seq ever allocated arrived
        assert chk["reordered"] == 0 and chk["dup_mismatch"] == 0, \
            (chk, [r.seq for r in be.results], d.logtail(6000))
        assert all(r.session for r in be.results) and be.bad == 0
    finally:
        be.close()
        assert d.stop() == 0


def test_kill9_during_sessions_keeps_the_outbox_and_seq_and_delivers_after_restart(
        tmp_path, broker, backend_key, inputs, model_dir):
    d = _daemon(tmp_path, broker, backend_key, inputs, realtime=True, max_pending=40)
    be = soak.Collector(broker, d.public)
    try:
        be.wait(be.connected, 10)
        last = 0
        for k in range(3):
            d.start()
            assert be.wait(lambda: be.online_after(d.started), 60), d.logtail()
            _burst(be, backend_key, inputs, 6)
            time.sleep(0.25 + 0.15 * k)
            if k == 1:
                broker.stop()        # results wait in the outbox when the daemon dies
                time.sleep(0.4)
            d.kill()
            ok, stored, now_last = soak._outbox_after_kill(d.state / "outbox.sqlite")
            assert ok == "ok" and now_last >= last
            assert stored == list(range(stored[0], now_last + 1)) if stored else True
            last = now_last
            if k == 1:
                assert stored, "the outage should have left results in the outbox"
                broker.start()
        d.start()
        st = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0 and s["broker"]["connected"], 60)
        assert be.wait(lambda: soak.stream_checks(be.results)["seqs"] >= set(range(1, st["last_seq"] + 1)), 60)
        chk = soak.stream_checks(be.results)
        assert chk["reordered"] == 0 and chk["dup_mismatch"] == 0
        spans = sorted((min(v), max(v)) for v in _by_boot(be.results).values())
        assert all(b[0] > a[1] for a, b in zip(spans, spans[1:])), spans  # seq grows across boots
    finally:
        be.close()
        d.stop()


def _by_boot(results) -> dict:
    out: dict = {}
    for r in results:
        out.setdefault(r.boot, []).append(r.seq)
    return out


def _frame_folder(tmp_path: Path, inputs) -> Path:
    """The replay's frames as a folder of JPEGs: a live-feed camera that can vanish."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, jpg in enumerate(inputs.frames):
        (folder / f"{i:03d}.jpg").write_bytes(jpg)
    return folder


def test_camera_frames_removed_and_restored(tmp_path, broker, backend_key, inputs, model_dir):
    folder = _frame_folder(tmp_path, inputs)
    cam = (f'source = "file"\npath = "{folder}"\nrealtime = true\nidle_fps = 5\nrestart_each_session = false\n'
           'frame_timeout_s = 2\n')
    d = _daemon(tmp_path, broker, backend_key, inputs, camera=cam, health_interval_s=0.25).start()
    be = soak.Collector(broker, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        folder.rename(tmp_path / "gone")
        d.wait_status(lambda s: not s["health"]["camera_ok"], 15)
        msg, c = soak.command(backend_key, inputs.ref)
        be.send(msg)
        during = be.wait(lambda: be.by_request().get(c["request_id"]), 30)
        assert during and (during[0].decision, during[0].reason) == ("error", "camera_failed")
        (tmp_path / "gone").rename(folder)
        t = time.monotonic()
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        msg, c = soak.command(backend_key, inputs.ref)
        be.send(msg)
        after = be.wait(lambda: be.by_request().get(c["request_id"]), 30)
        assert after and after[0].decision == "match"
        assert after[0].t - t < 15  # back within the first reopen back-off steps
    finally:
        be.close()
        assert d.stop() == 0


def test_a_live_feed_session_gets_the_cameras_frame_rate(tmp_path, broker, backend_key, inputs, model_dir):
    """A session reads every frame the camera gives (15 fps here), not the idle rate. No
    wall-clock bound: the idle rate is made so slow (one frame in 2 s) that a session held
    to it needs at least 14 x 2 = 28 s for its 15 frames (and runs into its own timeout),
    while the camera's rate gives them in about 1 s; the result is waited for 20 s, twenty
    times what it needs at the camera's rate. Mutation: the daemon not lifting the idle
    rate for sessions (`feed.max_fps = None` removed) - no match within the wait."""
    folder = _frame_folder(tmp_path, inputs)
    cam = (f'source = "file"\npath = "{folder}"\nrealtime = true\nfps = 15\nidle_fps = 0.5\n'
           'restart_each_session = false\n')
    d = _daemon(tmp_path, broker, backend_key, inputs, camera=cam, fusion_frames=15).start()
    be = soak.Collector(broker, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["camera_ok"], 30)
        msg, c = soak.command(backend_key, inputs.ref)
        be.send(msg)
        r = be.wait(lambda: be.by_request().get(c["request_id"]), 20)
        assert r and r[0].decision == "match"
    finally:
        be.close()
        d.stop()


def test_model_changed_on_disk_is_refused_at_start(tmp_path, broker, backend_key, inputs, model_dir):
    copy = tmp_path / "models"
    shutil.copytree(model_dir, copy)
    from facegate import modelstore

    name = modelstore.ModelStore(copy).resolve("embed", "auto").file
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 1
    (copy / name).write_bytes(bytes(data))
    d = _daemon(tmp_path, broker, backend_key, inputs, device="tamper", make_key=False,
                env={"FACEGATE_MODEL_DIR": str(copy)})
    be = soak.Collector(broker, b"", device="tamper")
    try:
        be.wait(be.connected, 10)
        t = time.monotonic()
        d.start()
        rc = d.proc.wait(30)
        assert rc == 2 and time.monotonic() - t < 10
        last = d.logtail().strip().splitlines()[-1]
        assert last.startswith("facegate: model ") and name in last and "changed on disk" in last, last
        time.sleep(0.5)
        assert not be.status, "nothing may be published"
        assert not d.state.exists() or not any(d.state.iterdir()), "nothing may be created"
    finally:
        be.close()


def test_min_free_mb_rule_refuses_new_sessions_with_storage_full(tmp_path, broker, backend_key, inputs, model_dir):
    d = _daemon(tmp_path, broker, backend_key, inputs, daemon_extra="min_free_mb = 100000000\n",
                health_interval_s=0.25).start()
    be = soak.Collector(broker, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        st = d.wait_status(lambda s: s["health"]["storage_ok"] is False, 10)
        assert be.wait(lambda: be.health.get("storage_ok") is False, 10)
        ids = _burst(be, backend_key, inputs, 3)
        assert be.wait(lambda: set(be.by_request()) >= set(ids), 20)
        got = be.by_request()
        assert {(got[i][0].decision, got[i][0].reason, got[i][0].session) for i in ids} == {
            ("rejected", "storage_full", None)}
        assert d.status()["health"]["sessions"] == st["health"]["sessions"] == 0
    finally:
        be.close()
        assert d.stop() == 0


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the state dir needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    filler = mnt / "filler"
    st = os.statvfs(mnt)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, max(1, st.f_bavail * st.f_frsize - leave))
        if leave == 0:
            for chunk in (4096, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError:
                    pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_state_dir_filling_up_refuses_sessions_and_says_so(tmp_path, tmpfs, broker, backend_key, inputs, model_dir):
    d = _daemon(tmp_path, broker, backend_key, inputs, state_dir=tmpfs / "state", daemon_extra="min_free_mb = 4\n",
                health_interval_s=0.25).start()
    be = soak.Collector(broker, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        filler = _fill(tmpfs, 2 * 2**20)  # 2 MiB free < 4
        d.wait_status(lambda s: s["health"]["storage_ok"] is False, 10)  # status says so
        assert be.wait(lambda: be.health.get("storage_ok") is False, 10)  # so does R/health
        ids = _burst(be, backend_key, inputs, 4)
        assert be.wait(lambda: set(be.by_request()) >= set(ids), 20)
        assert {be.by_request()[i][0].reason for i in ids} == {"storage_full"}
        filler.unlink()
        d.wait_status(lambda s: s["health"]["storage_ok"] is True, 10)
        ids = _burst(be, backend_key, inputs, 2)
        assert be.wait(lambda: set(be.by_request()) >= set(ids), 30)
        assert all(be.by_request()[i][0].session for i in ids)
        st = d.wait_status(lambda s: s["health"]["outbox_depth"] == 0, 20)
        assert soak.stream_checks(be.results)["seqs"] >= set(range(1, st["last_seq"] + 1))
        assert st["health"]["unstored"] == 0
    finally:
        be.close()
        assert d.stop() == 0


def test_results_of_running_sessions_survive_the_disk_filling_up(tmp_path, tmpfs, broker, backend_key, inputs,
                                                                  model_dir):
    d = _daemon(tmp_path, broker, backend_key, inputs, state_dir=tmpfs / "state", realtime=True, fusion_frames=6,
                daemon_extra="min_free_mb = 4\n", health_interval_s=0.25).start()
    be = soak.Collector(broker, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        ids = _burst(be, backend_key, inputs, 2)
        d.wait_status(lambda s: s["state"]["state"] != "idle", 10)
        filler = _fill(tmpfs, 0)
        time.sleep(1.5)
        filler.unlink()
        be.wait(lambda: set(be.by_request()) >= set(ids), 4)
        assert set(be.by_request()) >= set(ids), d.status().get("health")
    finally:
        be.close()
        d.stop()


def test_a_puback_the_full_disk_cannot_record_does_not_start_a_publish_storm(tmp_path, tmpfs, broker, backend_key,
                                                                            inputs, model_dir):
    d = _daemon(tmp_path, broker, backend_key, inputs, state_dir=tmpfs / "state", realtime=True,
                daemon_extra="min_free_mb = 4\n", health_interval_s=0.25).start()
    be = soak.Collector(broker, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        msg, c = soak.command(backend_key, inputs.ref)
        be.send(msg)
        d.wait_status(lambda s: s["state"]["state"] != "idle", 10)
        broker.stop()  # the result waits in the outbox ...
        d.wait_status(lambda s: s["health"]["outbox_depth"] >= 1, 20, fresh_after=time.time())
        filler = _fill(tmpfs, 0)  # ... the disk fills up, the broker comes back and acknowledges it
        try:
            broker.start()
            assert be.wait(lambda: c["request_id"] in be.by_request(), 20)
            time.sleep(2.0)
            copies = len(be.by_request()[c["request_id"]])
        finally:
            filler.unlink()
        assert copies <= 3, copies
    finally:
        be.close()
        d.stop()


# -- fuzzed commands over MQTT ----------------------------------------------------------------
def test_fuzzed_commands_over_mqtt_are_each_answered_or_counted_by_a_documented_rule(tmp_path, broker, backend_key,
                                                                                      inputs, model_dir):
    """Every authentic, identifiable, fresh command gets one answer; everything else
    (unauthenticated, replayed, without ids, below the replay floor) none, counted in health."""
    import random

    d = _daemon(tmp_path, broker, backend_key, inputs, max_pending=100).start()
    be = soak.Collector(broker, d.public)
    fz = soak.Fuzzer(random.Random(61), backend_key, inputs, tmp_path)
    fz.families = [(w, g) for w, g in fz.families if g != fz.oversized] + [(0.3, fz.oversized)]
    oracle = soak.AnswerOracle(backend_key.public)
    cases = []
    try:
        be.wait(lambda: be.online_after(0), 60)
        for i in range(300):
            c = fz.next()
            c.authentic = soak.authentic(c.payload, backend_key.public)
            c.answerable = oracle.expect(c.payload, c.family, time.time())
            c.sent = time.monotonic()
            cases.append(c)
            be.send(c.payload, response_topic=soak.REPLIES, corr=i.to_bytes(4, "big"))
        due = [i.to_bytes(4, "big") for i, c in enumerate(cases) if c.answerable is True]
        silent = sum(1 for c in cases if c.answerable is False)
        be.wait(lambda: all(k in be.replies for k in due), 60)
        try:
            d.wait_status(lambda s: sum(s["health"].get("ignored", {}).values()) >= silent, 30, fresh_after=time.time())
        except TimeoutError:
            pass  # judged below
        time.sleep(1.5)
        st = d.wait_status(lambda s: True, 10, fresh_after=time.time())
        for i, c in enumerate(cases):
            c.answer = be.replies.get(i.to_bytes(4, "big"))
        silent += sum(1 for c in cases if c.answerable is None and c.answer is None)  # below the replay floor
        problems = [(c.family, soak.classify(c, d.public)) for c in cases if soak.classify(c, d.public)]
        assert not problems, problems[:10]
        assert sum(st["health"]["ignored"].values()) == silent, (st["health"]["ignored"], silent, st["health"])
        assert any(c.answer.session for c in cases if c.answer) and 50 < silent < len(cases) - 20
        assert d.alive() and d.tracebacks() == 0, d.logtail()
    finally:
        be.close()
        assert d.stop() == 0


def test_wildcard_response_topic_does_not_hold_up_later_results(tmp_path, broker, backend_key, inputs, model_dir):
    d = _daemon(tmp_path, broker, backend_key, inputs).start()
    be = soak.Collector(broker, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        bad, _ = soak.command(backend_key, b"not an image")  # authentic: answered, but not on a wildcard
        be.send(bad, response_topic="facegate/v1/replies/+/x", corr=b"w")
        msg, c = soak.command(backend_key, inputs.ref)
        be.send(msg)
        assert be.wait(lambda: be.by_request().get(c["request_id"]), 5)
    finally:
        be.close()
        d.stop()


# -- bad portraits through `facegate verify` --------------------------------------------------
def _bad_files(d: Path, ref: bytes) -> dict[str, Path]:
    files = {
        "empty.jpg": b"", "truncated.jpg": ref[: len(ref) // 3], "random.jpg": os.urandom(5000),
        "text.png": b"not an image\n" * 20, "gif.gif": b"GIF89a" + os.urandom(200),
        "png_claims_60000x60000.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2
        + b"\x08\x02\x00\x00\x00" + os.urandom(64),
    }
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    with open(d / "huge.jpg", "wb") as f:  # 25 MB, sparse
        f.write(ref[:2])
        f.truncate(25_000_000)
    out["huge.jpg"] = d / "huge.jpg"
    (d / "dir.jpg").mkdir()
    out["dir.jpg"] = d / "dir.jpg"
    out["missing.jpg"] = d / "missing.jpg"
    return out


def test_bad_portraits_exit_2_with_one_line_and_bounded_memory(tmp_path, inputs, model_dir):
    good = tmp_path / "good.jpg"
    good.write_bytes(inputs.ref)
    for name, path in _bad_files(tmp_path, inputs.ref).items():
        rc, out, err, dt, peak = soak._verify_child(path, good)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("facegate: "), (name, rc, err)
        assert not out and peak < 250, (name, peak)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    return soak.bomb_files(tmp_path_factory.mktemp("bombs"))


@pytest.mark.parametrize("name", ["webp_16000x16000", "jpeg_12000x12000_ff00", "jpeg_12000x12000"])
def test_image_bombs_are_refused_before_decoding(tmp_path, inputs, model_dir, bombs, name):
    """A 10 KB WebP of 16000x16000 (1.5 GB decoded) and a JPEG whose frame header hides
    behind stray FF 00 bytes (libjpeg skips them, a naive header scan does not)."""
    good = tmp_path / "good.jpg"
    good.write_bytes(inputs.ref)
    rc, out, err, dt, peak = soak._verify_child(bombs[name], good)
    assert rc == 2 and peak < 250 and len(err.strip().splitlines()) == 1, (peak, err)


def test_corrupt_jpeg_prints_only_facegates_line(tmp_path, inputs, model_dir):
    good = tmp_path / "good.jpg"
    good.write_bytes(inputs.ref)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(bytes(b ^ 0x5A if 300 < i < 2000 else b for i, b in enumerate(inputs.ref)))
    rc, out, err, dt, peak = soak._verify_child(bad, good)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err


def test_unreadable_probe_video_prints_only_facegates_line(tmp_path, inputs, model_dir):
    good = tmp_path / "good.jpg"
    good.write_bytes(inputs.ref)
    bad = tmp_path / "random.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(20000))
    rc, out, err, dt, peak = soak._verify_child(good, bad)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err


def test_status_file_says_storage_is_full_on_a_full_disk(tmp_path, tmpfs, broker, backend_key, inputs, model_dir):
    d = _daemon(tmp_path, broker, backend_key, inputs, state_dir=tmpfs / "state", daemon_extra="min_free_mb = 4\n",
                health_interval_s=0.25).start()
    be = soak.Collector(broker, d.public)
    try:
        be.wait(lambda: be.online_after(0), 60)
        d.wait_status(lambda s: s["health"]["storage_ok"], 10)
        t = time.time()
        filler = _fill(tmpfs, 0)
        try:
            st = d.wait_status(lambda s: s["health"]["storage_ok"] is False, 5, fresh_after=t)
        finally:
            filler.unlink()
        assert st["health"]["storage_ok"] is False
    finally:
        be.close()
        d.stop()
