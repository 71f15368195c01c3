"""What the command groups share: exit codes, the error line, the configuration with the
command line's overrides, the model store, the model runner, the daemon's status file."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import config as config_mod
from .. import modelstore, status
from ..status import StatusDoc

EXIT_OK, EXIT_NEGATIVE, EXIT_BAD_INPUT = 0, 1, 2


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"facegate: {msg}", file=sys.stderr)
    return code


def _config(args) -> config_mod.Config:
    cfg = config_mod.load(getattr(args, "config", None))
    updates = {}
    if getattr(args, "precision", None):
        updates["precision"] = args.precision
    if getattr(args, "threads", None):
        updates["num_threads"] = args.threads
    if updates:
        cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update=updates)})
    return cfg


def _store(cfg: config_mod.Config, args=None) -> modelstore.ModelStore:
    d = getattr(args, "dir", None) or cfg.models.dir or None
    return modelstore.ModelStore(d)


def make_runner(path: Path, num_threads: int):
    from ..adapters.litert import make_runner as litert_runner

    return litert_runner(path, num_threads)


def build_verifier(cfg: config_mod.Config):
    from ..pipeline import Verifier

    return Verifier.from_store(_store(cfg), cfg, make_runner)


def build_liveness(cfg: config_mod.Config, args):
    """The LivenessPlan that --liveness asks for (None for `none`): the models are loaded
    here, only as needed, once; each session makes its own check from it (random
    challenges drawn from one generator seeded by --seed)."""
    import random

    from ..pipeline import build_liveness as load

    return load(_store(cfg), cfg, make_runner, getattr(args, "liveness", "none"), random.Random(args.seed))



def _status_doc(args) -> StatusDoc | None:
    return status.read(config_mod.load(args.config).daemon.state_dir)


def _daemon_pid(args, doc: StatusDoc | None = None) -> int | None:
    """The running daemon's pid from its status file (`doc` when already read), or None."""
    import os

    doc = doc if doc is not None else _status_doc(args)
    pid = doc.get("pid") if doc else None
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid



def _jsonable(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v

