"""Blinks and turns of the active challenge on real frames through the real models, against
the hand annotations in tests/fixtures/liveness_annotations.json (see its "method")."""
import csv
import json
from pathlib import Path

import pytest

from facegate import decide
from facegate.adapters.files import FileCamera
from facegate.cli import make_runner
from facegate.imageio import read_image
from facegate.liveness.challenge import Challenge, ChallengeOptions, EyeLids, Observation, eye_openness
from facegate.modelstore import ModelStore
from facegate.pipeline import Timings

NOTES = json.loads((Path(__file__).parent / "fixtures" / "liveness_annotations.json").read_text())
LIVE = "replay/zubair/live.webm"
BLINK_CLIP = "eyeblink8/EyeBlink8_1/calibration18_video1.mp4"
TOL = 3  # frames after an annotated end within which the event may be reported (as eval_liveness.py)


@pytest.fixture(scope="module")
def lids(model_dir):
    return EyeLids(make_runner(ModelStore(model_dir).path("iris", "fp32")[0], 1))


def observe(verifier, lids, image, t):
    """(Observation or None, mesh openness) of one frame, as liveness.check.LivenessCheck sees
    it: the chosen face, only when its mesh presence is >= 0.5; None = no face chosen."""
    dets = verifier.find_faces(image, False, Timings())
    det, _ = decide.choose_face(dets, image.shape[1], image.shape[0], verifier.cfg.dominant_face_ratio)
    if det is None:
        return Observation(t, False), None
    fa = verifier.examine(image, det, Timings(), embed=False)
    if fa.mesh.presence < 0.5:
        return None, None
    return Observation(t, True, fa.quality.yaw_deg, lids.openness(image, fa.mesh.points)), eye_openness(fa.mesh.points)


def video_obs(verifier, lids, path, frames=None):
    """{frame index: (Observation or None, mesh openness)} of a video's frames (all, or `frames`)."""
    out = {}
    with FileCamera(path) as cam:
        for f in cam.frames():
            if frames is None or f.seq in frames:
                out[f.seq] = observe(verifier, lids, f.image, f.t_mono_s)
    return out


def run(ch, obs):
    """Feed observations in frame order; returns {t_s: frame index}."""
    at = {}
    for seq in sorted(obs):
        o = obs[seq][0]
        if o is not None:
            at[o.t_s] = seq
            ch.update(o)
    return at


def test_blink_clip_yields_one_blink(verifier, lids, data_dir):
    """The one EyeBlink8 clip confirmed by eye to hold a whole blink (open, shut, open)."""
    (blink,) = NOTES["blink_clips"][BLINK_CLIP]["blinks"]
    obs = video_obs(verifier, lids, data_dir / BLINK_CLIP)
    ch = Challenge(["blink"])
    at = run(ch, obs)
    assert ch.status == "passed" and len(ch.blinks) == 1, (ch.status, ch.blinks)
    assert blink["closing"] <= at[ch.blinks[0]] <= blink["reopened"] + TOL
    # the mesh's own lid points do not follow this blink; the iris model's do
    mesh = [m for _, m in obs.values()]
    iris = [o.openness for o, _ in obs.values()]
    closed = range(blink["closed"][0], blink["closed"][1] + 1)
    assert min(mesh[i] for i in closed) > 0.85 * max(mesh[:blink["closing"]])
    assert max(iris[i] for i in closed) < 0.5 * min(iris[:blink["closing"]])


def test_printed_photo_sequences_yield_no_blink(verifier, lids, data_dir):
    """Each NUAA subject's 30 printed-photo frames (held, bent and moved in front of the
    webcam) in labels.csv order at 10 fps: a photo cannot blink."""
    seqs: dict[str, list] = {}
    with open(data_dir / "nuaa" / "labels.csv") as f:
        for row in csv.DictReader(f):
            if row["label"] == "print_attack":
                seqs.setdefault(row["subject"], []).append(row["path"])
    assert len(seqs) == 8
    for subject, paths in seqs.items():
        ch = Challenge(["blink"], ChallengeOptions(step_timeout_s=60.0, face_lost_s=60.0))
        for i, p in enumerate(paths):
            o, _ = observe(verifier, lids, read_image(data_dir / "nuaa" / p), i / 10.0)
            if o is not None:
                ch.update(o)
        assert ch.status == "running" and ch.blinks == [], (subject, ch.blinks)


def test_annotated_turns_give_turn_events_in_order(verifier, lids, data_dir):
    """The annotated right then left turn of the live video, from before the first to after
    the second: a turn_right, turn_left challenge passes, each step at its annotated turn."""
    right, left = NOTES["live_videos"][LIVE]["turns"]
    assert (right["direction"], left["direction"]) == ("turn_right", "turn_left")
    frames = range(right["away"] - 20, left["back"] + 10)
    obs = video_obs(verifier, lids, data_dir / LIVE, set(frames))
    ch = Challenge(["turn_right", "turn_left"])
    at = run(ch, obs)
    assert ch.status == "passed", (ch.reason, ch.events)
    assert [e for e, _ in ch.events] == ["turn_right", "turn_left"]
    (_, t_right), (_, t_left) = ch.events
    assert right["away"] <= at[t_right] <= right["back"] + TOL
    assert left["away"] <= at[t_left] <= left["back"] + TOL
    assert ch.blinks == []  # none annotated: no blink reported through the turns and motion blur


def test_turn_the_wrong_way_is_not_the_step(verifier, lids, data_dir):
    """Asked to turn left, the person turns right and back: recorded, but the step stays."""
    right = NOTES["live_videos"][LIVE]["turns"][0]
    obs = video_obs(verifier, lids, data_dir / LIVE, set(range(right["away"] - 20, right["back"] + 10)))
    ch = Challenge(["turn_left"])
    run(ch, obs)
    assert [d for d, _ in ch.turns] == ["turn_right"] and ch.events == [] and ch.status == "running"
