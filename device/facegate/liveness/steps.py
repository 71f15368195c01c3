"""The challenge's step detectors, each registered under the steps it sees (registry.STEPS).

A detector is built once per challenge with its `ChallengeOptions`, is fed every
observation of the tracked face (`observe` returns the steps it saw done on that frame, in
order), and is told when the challenge moves to the next step (`advanced`). It records
every step it sees, asked or not: the challenge's `blinks` / `turns` (what
scripts/eval_liveness.py scores). A new step is one more class here or in a module of its
own, with its `@STEPS.register(...)` line (docs/design.md, "Adding a camera or a step").
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..registry import STEPS
from ..vocab import Step

if TYPE_CHECKING:
    from .challenge import ChallengeOptions, Observation


class StepDetector(Protocol):
    """What the challenge needs of a step's detector (its class is the registered factory,
    called with the challenge's ChallengeOptions)."""

    def observe(self, o: Observation) -> list[str]: ...  # the steps seen done on this frame

    def advanced(self) -> None: ...  # the challenge moved on: forget a half-seen step

    def progress(self, step: str) -> float: ...  # how far the asked `step` has come, 0-1


@STEPS.register(Step.BLINK)
class BlinkDetector:
    """A blink: eye openness below blink_close_ratio x the person's own open-eye baseline
    (the 75th percentile of recent open frames), then back above blink_open_ratio x within
    blink_max_closed_s; judged on near-frontal frames only."""

    def __init__(self, opts: ChallengeOptions):
        self.opts = opts
        self.seen: list[float] = []  # every blink, t_s of reopening
        self._open: list[float] = []
        self._closed_t: float | None = None

    def observe(self, o: Observation) -> list[str]:
        if abs(o.yaw_deg) > self.opts.blink_max_yaw_deg:
            return []
        base = float(np.percentile(self._open, 75)) if len(self._open) >= 3 else None
        if base is None or o.openness >= self.opts.blink_open_ratio * base:
            self._open = (self._open + [o.openness])[-30:]
        if base is None:
            return []
        if o.openness < self.opts.blink_close_ratio * base:
            if self._closed_t is None:
                self._closed_t = o.t_s
        elif self._closed_t is not None and o.openness >= self.opts.blink_open_ratio * base:
            closed_for = o.t_s - self._closed_t
            self._closed_t = None
            if closed_for <= self.opts.blink_max_closed_s:
                self.seen.append(o.t_s)
                return [Step.BLINK]
        return []

    def advanced(self) -> None:
        self._closed_t = None

    def progress(self, step: str) -> float:
        return 0.5 if self._closed_t is not None else 0.0


@STEPS.register(Step.TURN_LEFT)
@STEPS.register(Step.TURN_RIGHT)
class TurnDetector:
    """A turn: yaw at least turn_min_deg away from the frontal baseline (the median of
    recent near-baseline frames), then back within turn_return_deg of it. yaw > 0 is the
    subject's left (vision.quality.head_pose)."""

    def __init__(self, opts: ChallengeOptions):
        self.opts = opts
        self.seen: list[tuple[str, float]] = []  # every turn, (direction, t_s of return)
        self._yaw_base: list[float] = []
        self._turned: str | None = None  # the direction of an excursion not yet returned from
        self._yaw_off = 0.0  # the last frame's yaw away from the frontal baseline, degrees

    def observe(self, o: Observation) -> list[str]:
        base = float(np.median(self._yaw_base)) if self._yaw_base else None
        if base is None or abs(o.yaw_deg - base) < self.opts.turn_return_deg:
            self._yaw_base = (self._yaw_base + [o.yaw_deg])[-15:]
        if base is None:
            return []
        d = self._yaw_off = o.yaw_deg - base
        if abs(d) >= self.opts.turn_min_deg:
            self._turned = Step.TURN_LEFT if d > 0 else Step.TURN_RIGHT
        elif self._turned and abs(d) <= self.opts.turn_return_deg:
            done, self._turned = self._turned, None
            self.seen.append((done, o.t_s))
            return [done]
        return []

    def advanced(self) -> None:
        self._turned = None
        self._yaw_base = self._yaw_base[-5:]

    def progress(self, step: str) -> float:
        """3/4 done at turn_min_deg towards the asked side, whole once back to frontal."""
        if self._turned == step:
            back = (abs(self._yaw_off) - self.opts.turn_return_deg) / max(
                self.opts.turn_min_deg - self.opts.turn_return_deg, 1e-6)
            return 0.75 + 0.25 * (1.0 - min(max(back, 0.0), 1.0))
        toward = self._yaw_off if step == Step.TURN_LEFT else -self._yaw_off
        return 0.75 * min(max(toward / self.opts.turn_min_deg, 0.0), 1.0)
