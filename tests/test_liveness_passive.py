"""Passive presentation-attack detection with the real MiniFASNet models on real data."""
import pytest

from facegate import config as config_mod
from facegate import decide
from facegate.adapters.files import FileCamera
from facegate.cli import make_runner
from facegate.imageio import read_image
from facegate.liveness.passive import fuse
from facegate.modelstore import ModelStore
from facegate.pipeline import Timings, build_passive


@pytest.fixture(scope="module")
def passive(model_dir):
    return build_passive(ModelStore(model_dir), config_mod.Config(), make_runner)[0]


def _score(verifier, passive, img):
    det, reason = decide.choose_face(verifier.find_faces(img, False, Timings()), img.shape[1], img.shape[0], 2.0)
    assert det is not None, reason
    return passive.score(img, det)


def test_print_frame_rejected_and_live_frame_accepted(verifier, passive, data_dir):
    thr = config_mod.Config().liveness.passive_threshold
    live = read_image(data_dir / "nuaa" / "ClientRaw" / "0005" / sorted((data_dir / "nuaa" / "ClientRaw" / "0005").iterdir())[0].name)
    attack = read_image(data_dir / "nuaa" / "ImposterRaw" / "0005" / sorted((data_dir / "nuaa" / "ImposterRaw" / "0005").iterdir())[0].name)
    assert _score(verifier, passive, live) >= thr
    assert _score(verifier, passive, attack) < thr
    assert _score(verifier, passive, read_image(data_dir / "silent_face" / "image_F2.jpg")) < thr  # tablet screen


def test_screen_replay_video_fails_and_live_video_passes(verifier, passive, data_dir):
    cfg = config_mod.Config().liveness
    verdicts = {}
    for name in ("live.webm", "screen_replay.webm"):
        scores = []
        with FileCamera(data_dir / "replay" / "zubair" / name) as cam:
            for f in cam.frames():
                if f.seq % 4 == 0:
                    dets = verifier.find_faces(f.image, False, Timings())
                    if dets:
                        scores.append(passive.score(f.image, dets[0]))
        verdicts[name] = fuse(scores, cfg.passive_threshold, cfg.passive_min_frames)
    assert verdicts["live.webm"].live
    assert not verdicts["screen_replay.webm"].live and verdicts["screen_replay.webm"].reason == "presentation_attack"


def test_fuse_needs_frames():
    assert fuse([], 0.5, 1).reason == "too_few_frames"
    assert fuse([0.9, 0.1, 0.8], 0.5, 1).live
