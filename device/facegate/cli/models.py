"""`facegate models`: install, check, list and time the models."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import modelstore
from .common import EXIT_NEGATIVE, EXIT_OK, _config, _fail, _store, make_runner


def cmd_models_fetch(args) -> int:
    cfg = _config(args)
    store = _store(cfg, args)
    mirror = Path(args.mirror) if args.mirror else None
    if mirror is not None and not mirror.is_dir():
        return _fail(f"mirror directory {mirror} does not exist")
    results = modelstore.fetch(store.model_dir, mirror, include_optional=args.all)
    for r in results:
        print(f"{r.status:9s} {r.entry.task:12s} {r.entry.variant:8s} {r.entry.file:36s} {r.detail}")
    refused = [r for r in results if r.status == "refused"]
    missing = modelstore.missing_required(results)
    print(f"model dir: {store.model_dir}")
    if refused:
        return _fail(f"{len(refused)} file(s) refused: contents differ from the manifest", EXIT_NEGATIVE)
    if missing:
        return _fail("no usable model for: " + ", ".join(missing), EXIT_NEGATIVE)
    return EXIT_OK


def cmd_models_verify(args) -> int:
    cfg = _config(args)
    store = _store(cfg, args)
    results = modelstore.verify(store.model_dir)
    for r in results:
        print(f"{r.status:9s} {r.entry.task:12s} {r.entry.variant:8s} {r.entry.file:36s} {r.detail}")
    bad = [r for r in results if r.status == "tampered"]
    missing = modelstore.missing_required(results)
    if bad:
        return _fail(f"{len(bad)} installed model(s) differ from the manifest: refused", EXIT_NEGATIVE)
    if missing:
        return _fail("not installed: " + ", ".join(missing), EXIT_NEGATIVE)
    print("models: ok")
    return EXIT_OK


def cmd_models_list(args) -> int:
    for e in modelstore.load_manifest():
        print(f"{e.task:12s} {e.variant:8s} {e.file:36s} {e.sha256[:16]}  {e.input}  [{e.license}]")
    return EXIT_OK


def time_runner(runner, runs: int) -> float:
    """Median milliseconds of `runs` invocations on zero-valued inputs (after warm-up)."""
    xs = [np.zeros(s.shape, s.dtype) for s in runner.inputs]
    for _ in range(3):
        runner.run(*xs)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(*xs)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1000)


def cmd_models_bench(args) -> int:
    import platform

    cfg = _config(args)
    store = _store(cfg, args)
    rows = []
    for e in store.manifest:
        if not (store.model_dir / e.file).is_file():
            continue
        path, _ = store.path(e.task, e.variant)
        cells = []
        for nt in args.threads_list:
            r = make_runner(path, nt)
            cells.append(time_runner(r, args.runs))
        rep = r.delegate_report()
        rows.append((e, cells, rep))
    heads = " ".join(f"{nt}t_ms".rjust(7) for nt in args.threads_list)
    print(f"{'task':12s} {'variant':8s} {heads} delegated partitions")
    for e, cells, rep in rows:
        print(f"{e.task:12s} {e.variant:8s} " + " ".join(f"{c:7.2f}" for c in cells)
              + f" {rep.delegated:4d}/{rep.nodes:<4d} {rep.partitions:10d}")
    for task in ("embed", "pad_v2", "pad_v1se"):
        timed = [(cells[0], e.variant) for e, cells, _ in rows if e.task == task]
        if timed:
            print(f"fastest {task} on {platform.machine()}: {min(timed)[1]}")
    return EXIT_OK

