"""The Session room in process: real models, frames of the real replay clip, no daemon.
Its timeout policy (frame time), a cancel, a failing source, progress through the one
callback and the closing of its frame source."""
from __future__ import annotations

import numpy as np
import pytest

from facegate.adapters.files import FileCamera
from facegate.config import LivenessConfig
from facegate.errors import CameraError
from facegate.liveness.check import LivenessPlan
from facegate.session import Ended, Session
from facegate.types import Frame
from facegate.vocab import FaceReason, Failure, LivenessMode, LivenessReason, State, Step, Verdict


@pytest.fixture(scope="module")
def clip(data_dir) -> list[Frame]:
    with FileCamera(data_dir / "replay" / "zubair" / "live.webm") as cam:
        return list(cam.frames())


def grey(n: int, dt: float = 0.1) -> list[Frame]:
    return [Frame(np.full((240, 320, 3), 90, np.uint8), i * dt, i) for i in range(n)]


class Counted:
    """A frame source that counts what was read and knows whether it was closed."""

    def __init__(self, frames):
        self.frames, self.read, self.closed = frames, 0, False

    def __iter__(self):
        try:
            for f in self.frames:
                self.read += 1
                yield f
        finally:
            self.closed = True


def test_no_face_until_the_timeout_is_a_timeout(verifier, clip):
    seen = []
    src = Counted(grey(100))
    out = Session(verifier, timeout_s=2.0, on_progress=lambda s, step: seen.append((s, step))).run(
        clip[20].image, iter(src))
    assert (out.decision.decision, out.decision.reason) == (Verdict.TIMEOUT, FaceReason.NO_FACE_IN_TIME)
    assert out.ended is Ended.TIMEOUT and src.read == 22  # 0.0 .. 2.1 s: the first past the timeout ends it
    assert seen == [(State.WAITING_FACE, None), (State.DECIDING, None)]
    # without a timeout the same frames are simply no face
    out = Session(verifier).run(clip[20].image, grey(30))
    assert (out.decision.decision, out.decision.reason, out.ended) == (Verdict.NO_FACE, FaceReason.NO_FACE, None)


def test_a_cancel_ends_the_session_as_cancelled(verifier, clip):
    src = Counted(clip)
    out = Session(verifier, timeout_s=60, cancelled=lambda: src.read > 2).run(clip[20].image, iter(src))
    assert (out.decision.decision, out.decision.reason) == (Verdict.ERROR, Failure.CANCELLED)
    assert out.ended is Ended.CANCELLED and src.read == 3 and src.closed


def test_an_unfinished_challenge_at_the_timeout_is_a_timeout(verifier, clip):
    """The person in the clip turns only at its end: a turn asked at once is not done in 2 s."""
    seen = []
    plan = LivenessPlan(LivenessMode.ACTIVE, LivenessConfig(step_timeout_s=30.0))
    run = Session.planned(verifier, plan, [Step.TURN_LEFT], timeout_s=2.0,
                          on_progress=lambda s, step: seen.append((s, step)))
    out = run.run(clip[20].image, clip)
    d = out.decision
    assert (d.decision, d.reason, out.ended) == (Verdict.TIMEOUT, LivenessReason.CHALLENGE_INCOMPLETE, Ended.TIMEOUT)
    assert d.liveness["steps"] == [Step.TURN_LEFT] and d.liveness["active_pass"] is False
    assert seen[0] == (State.WAITING_FACE, None) and (State.CHALLENGE, Step.TURN_LEFT) in seen
    assert seen[-1] == (State.DECIDING, None)


def test_a_live_session_stops_reading_once_decided_and_closes_its_source(verifier, clip):
    src = Counted(clip)
    out = Session(verifier, timeout_s=60).run(clip[20].image, iter(src))
    assert out.decision.decision == Verdict.MATCH and out.ended is None
    assert src.closed and src.read < len(clip) // 2
    assert out.timings_ms["total"] > 0 and out.ms > 0


def test_a_failing_source_is_an_error_outcome_when_contained(verifier, clip):
    def broken():
        yield from clip[:3]
        raise CameraError("unplugged")

    seen = []
    run = Session(verifier, timeout_s=60, on_progress=lambda s, step: seen.append(s))
    out = run.run_contained(clip[20].image, broken(), "s1")
    assert (out.decision.decision, out.decision.reason) == (Verdict.ERROR, Failure.CAMERA_FAILED)
    assert seen == [State.WAITING_FACE, State.DECIDING]
    with pytest.raises(CameraError):
        Session(verifier).run(clip[20].image, broken())


def test_the_work_after_the_last_frame_reports_progress(verifier, clip):
    """The daemon's watchdog is fed per frame; the reference's analysis and the fused
    embeddings come after the last frame and took longer than WatchdogSec on a slow CPU
    (vm-check under TCG: killed mid-session). Each step of it calls on_work, after the last
    frame was read."""
    src = Counted(clip)
    work: list[int] = []
    out = Session(verifier, timeout_s=60, on_work=lambda: work.append(src.read)).run(clip[20].image, iter(src))
    assert out.decision.decision == Verdict.MATCH
    fused = out.decision.frames_used
    assert fused == verifier.cfg.fusion_frames
    assert len(work) == 1 + fused  # the reference, then each fused embedding
    assert set(work) == {src.read}  # all of it after the frames
