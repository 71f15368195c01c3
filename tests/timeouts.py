"""One knob for the time limits of tests that drive the CLI in a subprocess (and of the
demo sessions they run): FACEGATE_TEST_TIMEOUT_S=SECONDS raises every such limit to at
least that, so a slow or emulated CPU (qemu-user: a demo session takes minutes) makes the
tests slow, not failing. Unset, each limit is its default. And the one polling wait the
tests share."""
from __future__ import annotations

import os
import time


def timeout_s(default: float) -> float:
    env = os.environ.get("FACEGATE_TEST_TIMEOUT_S", "").strip()
    if not env:
        return default
    try:
        value = float(env)
    except ValueError:
        raise ValueError(f"FACEGATE_TEST_TIMEOUT_S={env!r} is not a number of seconds") from None
    return max(default, value)


def wait_until(pred, timeout_s: float, what: str = "the condition", interval_s: float = 0.1):
    """Poll pred() every interval_s until it returns something truthy, and return that;
    AssertionError naming `what` once timeout_s has passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
