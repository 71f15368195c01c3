"""Silencing C libraries that write straight to file descriptor 2 (libjpeg's "Corrupt JPEG
data" warnings, the TFLite runtime's INFO lines), so that the CLI's stderr holds only
facegate's own one-line messages. Python exceptions still propagate."""
from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def quiet_stderr():
    """Redirect fd 2 to /dev/null for the duration of the block (process-wide: use it
    around short C calls, not around code whose own logging matters)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
