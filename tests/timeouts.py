"""One knob for the time limits of tests that drive the CLI in a subprocess (and of the
demo sessions they run): FACEGATE_TEST_TIMEOUT_S=SECONDS raises every such limit to at
least that, so a slow or emulated CPU (qemu-user: a demo session takes minutes) makes the
tests slow, not failing. Unset, each limit is its default."""
from __future__ import annotations

import os


def timeout_s(default: float) -> float:
    env = os.environ.get("FACEGATE_TEST_TIMEOUT_S", "").strip()
    if not env:
        return default
    try:
        value = float(env)
    except ValueError:
        raise ValueError(f"FACEGATE_TEST_TIMEOUT_S={env!r} is not a number of seconds") from None
    return max(default, value)
