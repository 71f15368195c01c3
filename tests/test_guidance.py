"""Guidance for the person at the terminal (facegate.guidance): which hint a frame asks
for, and the hysteresis that keeps the shown hint from flickering. Pure: frame time only."""
from __future__ import annotations

import pytest

from facegate.guidance import GATE_HINTS, Guide, GuideOptions, raw_hint
from facegate.types import Glimpse
from facegate.vocab import FaceReason, Hint, State, Step

W, H = 640, 480
CENTRE = (240.0, 140.0, 400.0, 340.0)  # a 160x200 face in the middle of a 640x480 frame
FPS = 15


def glimpse(t: float, reason: str | None = None, box=CENTRE, tracked: bool = True) -> Glimpse:
    return Glimpse(t, tracked and box is not None, reason, box if tracked else None, (W, H))


@pytest.mark.parametrize("reason, hint", [
    (FaceReason.NO_FACE, Hint.LOOK_AT_CAMERA), (FaceReason.MULTIPLE_FACES, Hint.ONE_FACE_ONLY),
    (FaceReason.FACE_TOO_SMALL, Hint.MOVE_CLOSER), (FaceReason.TOO_DARK, Hint.MORE_LIGHT),
    (FaceReason.TOO_BRIGHT, Hint.LESS_LIGHT), (FaceReason.TOO_BLURRY, Hint.HOLD_STILL),
    (FaceReason.POSE_OUT_OF_RANGE, Hint.LOOK_AT_CAMERA), (FaceReason.FACE_CHANGED, Hint.ONE_FACE_ONLY)])
def test_each_unusable_frame_asks_for_its_fix(reason, hint):
    assert raw_hint(glimpse(0, reason), None) == hint == GATE_HINTS[reason]


def test_a_usable_face_too_large_or_off_centre_is_told_so_else_the_step_or_hold_still():
    assert raw_hint(glimpse(0, box=(200, 10, 440, 470)), None) == Hint.MOVE_BACK  # 96 % of the height
    assert raw_hint(glimpse(0, box=(10, 140, 170, 340)), None) == Hint.CENTER_FACE  # at the left edge
    assert raw_hint(glimpse(0, box=(240, 0, 400, 120)), None) == Hint.CENTER_FACE  # at the top
    assert raw_hint(glimpse(0), None) == Hint.HOLD_STILL
    assert raw_hint(glimpse(0), Step.TURN_LEFT) == Hint.TURN_LEFT
    # a turning head fails the pose gate and blurs by itself: the prompt stays; a dark one does not
    assert raw_hint(glimpse(0, FaceReason.POSE_OUT_OF_RANGE), Step.TURN_LEFT) == Hint.TURN_LEFT
    assert raw_hint(glimpse(0, FaceReason.TOO_BLURRY), Step.BLINK) == Hint.BLINK
    assert raw_hint(glimpse(0, FaceReason.TOO_DARK), Step.BLINK) == Hint.MORE_LIGHT
    assert raw_hint(glimpse(0, FaceReason.MULTIPLE_FACES, tracked=False), Step.BLINK) == Hint.ONE_FACE_ONLY


def run(guide: Guide, frames: list[tuple[Glimpse, str | None]], state=State.WAITING_FACE):
    """Feed (glimpse, step) pairs; (t, hint shown) after each, and the updates sent."""
    shown, sent = [], []
    for g, step in frames:
        out = guide.update(g, state, step)
        shown.append((g.t_s, guide.shown))
        if out is not None:
            sent.append((g.t_s, out))
    return shown, sent


def changes(shown):
    return [(t, h) for i, (t, h) in enumerate(shown) if i == 0 or shown[i - 1][1] != h]


def test_a_hint_that_comes_and_goes_every_other_frame_does_not_flicker():
    """A face at the size limit: too small on every other frame. Shown hints change at
    most once a hold_s (1 s), never 15 times a second."""
    g = Guide("s", timeout_s=30, step_timeout_s=None, needed_frames=5)
    frames = [(glimpse(i / FPS, FaceReason.FACE_TOO_SMALL if i % 2 else None), None) for i in range(FPS * 4)]
    shown, _ = run(g, frames)
    ch = changes(shown)
    assert len(ch) <= 2, ch
    assert all(b[0] - a[0] >= 1.0 for a, b in zip(ch, ch[1:]))


def test_a_one_frame_blip_is_never_shown_but_a_steady_urgent_hint_wins_at_once():
    g = Guide("s", timeout_s=30, step_timeout_s=None, needed_frames=5)
    frames = [(glimpse(i / FPS), None) for i in range(10)]
    frames[5] = (glimpse(5 / FPS, FaceReason.MULTIPLE_FACES, tracked=False), None)  # a passer-by for 1 frame
    shown, _ = run(g, frames)
    assert {h for _, h in shown} == {Hint.HOLD_STILL}
    # steady: a second person stays; shown after confirm_s (0.3 s), before hold_s ran out
    frames = [(glimpse((10 + i) / FPS, FaceReason.MULTIPLE_FACES, tracked=False), None) for i in range(10)]
    shown, _ = run(g, frames)
    first = next(t for t, h in shown if h == Hint.ONE_FACE_ONLY)
    assert 0.3 <= first - 10 / FPS <= 0.3 + 1.5 / FPS


def test_a_less_urgent_hint_waits_until_the_shown_one_held_its_moment():
    g = Guide("s", timeout_s=30, step_timeout_s=None, needed_frames=5)
    run(g, [(glimpse(0, FaceReason.FACE_TOO_SMALL), None)])  # move_closer at t=0
    shown, _ = run(g, [(glimpse(i / FPS), None) for i in range(1, 30)])  # then good frames
    first = next(t for t, h in shown if h == Hint.HOLD_STILL)
    assert first >= 1.0  # hold_s after move_closer was shown, although good since 0.07 s


def test_the_next_step_is_shown_at_once_and_its_countdown_restarts():
    g = Guide("s", timeout_s=30, step_timeout_s=6, needed_frames=1)
    frames = [(glimpse(i / FPS), Step.TURN_LEFT if i < 20 else Step.BLINK) for i in range(30)]
    shown, sent = [], []
    for gl, step in frames:
        out = g.update(gl, State.CHALLENGE, step, (0 if step == Step.TURN_LEFT else 1, 2, 0.0))
        shown.append((gl.t_s, g.shown))
        if out:
            sent.append(out)
    assert dict(shown)[20 / FPS] == Hint.BLINK
    blink = [s for s in sent if s.step == Step.BLINK]
    assert blink[0].hint == Hint.BLINK and blink[0].step_seconds_left == 6.0
    assert [s.progress for s in sent] == sorted(s.progress for s in sent)  # never goes back
    assert sent[-1].progress == pytest.approx(2 / 3, abs=0.01)  # 1 of 2 steps, the frames collected


def test_updates_come_a_few_times_a_second_at_most_and_count_down():
    g = Guide("s", timeout_s=10, step_timeout_s=None, needed_frames=100, opts=GuideOptions(min_interval_s=0.25))
    frames = [(glimpse(i / 30, FaceReason.FACE_TOO_SMALL if (i // 40) % 2 else None), None) for i in range(300)]
    _, sent = run(g, frames)
    times = [t for t, _ in sent]
    assert all(b - a >= 0.25 - 1e-9 for a, b in zip(times, times[1:]))
    assert len(sent) >= 10  # it does tell: progress and the seconds left change
    left = [s.seconds_left for _, s in sent]
    assert left == sorted(left, reverse=True) and left[0] == 10.0 and left[-1] < 1.0
    assert set(sent[0][1].as_dict()) == {"session", "state", "step", "hint", "step_progress", "progress",
                                         "seconds_left", "step_seconds_left"}


def test_a_turn_step_shows_how_far_the_head_has_come():
    """Challenge.step_progress: 3/4 at turn_min_deg towards the asked side, whole when back
    (then the next step starts at 0); the other side does not count."""
    from facegate.liveness.challenge import Challenge, Observation

    ch = Challenge([Step.TURN_LEFT, Step.BLINK])
    seen = []
    for i, yaw in enumerate([0.0] * 5 + [-20.0, 10.0, 20.0, 26.0, 18.0, 5.0]):
        ch.update(Observation(i / 10, True, yaw, 0.3))
        seen.append((ch.step, round(ch.step_progress, 2)))
    assert seen[4] == (Step.TURN_LEFT, 0.0)
    assert seen[5] == (Step.TURN_LEFT, 0.0)  # turned right: not the asked side
    assert seen[6][1] == pytest.approx(0.3) and seen[7][1] == pytest.approx(0.6)
    assert seen[8][1] == 0.75 and 0.75 < seen[9][1] < 1.0  # turned far enough, coming back
    assert seen[10] == (Step.BLINK, 0.0)  # back: the turn is done, the blink asked
