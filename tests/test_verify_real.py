"""The real pipeline on real faces: real models, real LFW / NUAA / replay data."""
import cv2
import numpy as np

from facegate.adapters.files import FileCamera
from facegate.imageio import read_image
from facegate.vocab import RunningMode


def img(lfw, name, i):
    return read_image(lfw / name / f"{name}_{i:04d}.jpg")


def test_same_person_pair_matches(verifier, lfw):
    d, t = verifier.verify(img(lfw, "Abel_Pacheco", 1), img(lfw, "Abel_Pacheco", 4), RunningMode.IMAGE)
    assert d.decision == "match", d
    assert d.similarity > verifier.policy.threshold
    assert {"detect", "mesh", "align", "embed", "total"} <= set(t)


def test_different_person_pair_does_not_match(verifier, lfw):
    d, _ = verifier.verify(img(lfw, "Abel_Pacheco", 1), img(lfw, "Akhmed_Zakayev", 1), RunningMode.IMAGE)
    assert d.decision == "no_match" and d.reason == "different_person"
    assert d.similarity < verifier.policy.threshold


def test_tight_id_card_portrait_is_found_and_matches(verifier, lfw):
    """A 102x126 chip-sized crop, face filling the frame, against another photo."""
    ref = img(lfw, "Abel_Pacheco", 1)[70:200, 75:180]
    ref = cv2.resize(ref, (102, 126), interpolation=cv2.INTER_AREA)
    d, _ = verifier.verify(ref, img(lfw, "Abel_Pacheco", 4), RunningMode.IMAGE)
    assert d.decision == "match", d


def test_printed_photo_frame_still_yields_a_face(verifier, data_dir):
    frame = read_image(data_dir / "nuaa" / "ImposterRaw" / "0001" / sorted(
        p.name for p in (data_dir / "nuaa" / "ImposterRaw" / "0001").iterdir())[0])
    probe = verifier.analyze(frame)
    assert probe.face is not None, probe.reason
    assert probe.face.embedding.shape == (128,) and np.isclose(np.linalg.norm(probe.face.embedding), 1.0, atol=1e-4)
    assert probe.face.crop.shape == (112, 112, 3) and probe.face.crop.dtype == np.uint8


def test_blank_image_has_no_face(verifier):
    grey = np.full((200, 200, 3), 90, np.uint8)
    d, _ = verifier.verify(grey, grey, RunningMode.IMAGE)
    assert d.decision == "no_face" and d.reason == "reference_no_face"


def test_video_probe_fuses_frames_of_one_face(verifier, data_dir):
    """A frame of the live video as the reference; the whole video as the probe."""
    video = data_dir / "replay" / "zubair" / "live.webm"
    with FileCamera(video) as cam:
        frames = list(cam.frames())
    assert len(frames) > 100
    assert all(b.t_mono_s > a.t_mono_s for a, b in zip(frames, frames[1:]))
    d, _ = verifier.verify(frames[20].image, iter(frames), RunningMode.VIDEO)
    assert d.decision == "match", d
    assert d.frames_used == verifier.cfg.fusion_frames
    # and someone else's portrait against the same video does not match
    other = read_image(data_dir / "lfw" / "images" / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg")
    d2, _ = verifier.verify(other, iter(frames), RunningMode.VIDEO)
    assert d2.decision == "no_match"


def test_one_entry_three_running_modes(verifier, data_dir):
    """Verifier.verify is the one entry: VIDEO reads a file's frames to their end (up to
    max_frames), LIVE_STREAM stops as soon as fusion_frames good frames are kept; a face-less
    reference is no_face / reference_no_face in every mode (the one branch); a probe that does
    not fit the mode is a ValueError, never a silent guess."""
    import pytest

    with FileCamera(data_dir / "replay" / "zubair" / "live.webm") as cam:
        frames = list(cam.frames())[:40]
    read = {}

    def counted(mode):
        read[mode] = 0
        for f in frames:
            read[mode] += 1
            yield f
    ref = frames[20].image
    video, _ = verifier.verify(ref, counted("video"), RunningMode.VIDEO)
    live, _ = verifier.verify(ref, counted("live"), RunningMode.LIVE_STREAM)
    assert video.decision == live.decision == "match"
    assert read["video"] == 40 and video.quality["frames"] == 40
    assert read["live"] == live.quality["frames"] < 40 and live.frames_used == verifier.cfg.fusion_frames
    grey = np.full((200, 200, 3), 90, np.uint8)
    for mode, probe in ((RunningMode.IMAGE, ref), (RunningMode.VIDEO, iter(frames)),
                        (RunningMode.LIVE_STREAM, iter(frames))):
        d, t = verifier.verify(grey, probe, mode)
        assert (d.decision, d.reason, d.similarity) == ("no_face", "reference_no_face", None), mode
        assert t["total"] > 0
    with pytest.raises(ValueError, match="IMAGE"):
        verifier.verify(ref, iter(frames), RunningMode.IMAGE)
    with pytest.raises(ValueError, match="VIDEO"):
        verifier.verify(ref, ref, RunningMode.VIDEO)
    with pytest.raises(ValueError):
        verifier.verify(ref, ref, RunningMode.IMAGE, liveness=object())  # type: ignore[arg-type]


def test_two_lanes_give_the_same_result_as_one(verifier, lfw, model_dir):
    """num_threads=2 analyses reference and probe on two lanes at once; same answer."""
    from facegate import config as config_mod
    from facegate.cli import build_verifier

    cfg = config_mod.Config()
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"num_threads": 2})})
    v2 = build_verifier(cfg)
    assert v2.peer is not None and verifier.peer is None
    a, b = img(lfw, "Abel_Pacheco", 1), img(lfw, "Abel_Pacheco", 4)
    d1, _ = verifier.verify(a, b, RunningMode.IMAGE)
    d2, t2 = v2.verify(a, b, RunningMode.IMAGE)
    assert d2.decision == d1.decision == "match"
    assert abs(d2.similarity - d1.similarity) < 1e-5
    assert t2["embed"] > 0 and t2["total"] < t2["detect"] + t2["mesh"] + t2["align"] + t2["embed"] + 5


def test_faces_found_on_the_lores_stream_land_on_the_main_image(verifier, data_dir):
    """picamera2 gives a small lores copy of each capture: detection runs there and the
    boxes are scaled to the main image, where mesh and crops are taken."""
    import cv2

    from facegate.adapters.files import FileCamera
    from facegate.pipeline import Timings
    from facegate.types import Frame

    with FileCamera(data_dir / "replay" / "zubair" / "live.webm") as cam:
        img = next(iter(cam.frames())).image
    big = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2))
    lores = cv2.resize(big, (big.shape[1] // 4, big.shape[0] // 4))
    direct = verifier.find_faces(big, False, Timings())
    via = verifier.find_frame_faces(Frame(big, 0.0, 0, lores), Timings())
    assert len(direct) == len(via) == 1
    a, b = np.array(direct[0].box), np.array(via[0].box)
    assert np.abs(a - b).max() < 0.05 * (a[2] - a[0])  # the same face, within 5 % of its width
    assert np.abs(direct[0].keypoints - via[0].keypoints).max() < 0.08 * (a[2] - a[0])
