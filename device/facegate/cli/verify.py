"""`facegate verify`: one verification on files, or many (--pairs) with the models loaded once."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import config as config_mod
from .. import modelstore
from ..errors import InputError
from ..vocab import LivenessMode, RunningMode, Verdict
from .common import EXIT_BAD_INPUT, EXIT_NEGATIVE, EXIT_OK, _config, _fail, build_liveness, build_verifier


class _Models:
    """The verifier and the liveness models, loaded on first use (after the inputs were
    read, so bad input fails fast) and then kept for every further verification."""

    def __init__(self, cfg: config_mod.Config, args):
        self.cfg, self.args = cfg, args
        self._verifier = self._liveness = None

    def verifier(self):
        if self._verifier is None:
            self._verifier = build_verifier(self.cfg)
        return self._verifier

    def liveness(self):
        """The liveness plan of --liveness (its models loaded once); None for `none`."""
        if self._liveness is None:
            self._liveness = build_liveness(self.cfg, self.args)
        return self._liveness


def _verify_one(models: _Models, cfg: config_mod.Config, args, reference_path: Path, probe_path: Path) -> dict:
    """One verification on files, as the JSON object `verify` prints; InputError on bad input."""
    from ..adapters.files import FileCamera
    from ..imageio import is_image_path, read_image

    lim = (cfg.verify.max_image_bytes, cfg.verify.max_image_pixels)
    # with liveness, even a single image is a (one-frame) video session through the camera path
    mode = RunningMode.IMAGE if args.liveness == LivenessMode.NONE and is_image_path(probe_path) else RunningMode.VIDEO
    reference = read_image(reference_path, *lim)
    if mode is RunningMode.VIDEO:
        from ..session import Session

        with FileCamera(probe_path, max_bytes=lim[0] * 10, max_pixels=lim[1]) as camera:
            verifier = models.verifier()
            steps = None if args.challenge is None else [s for s in args.challenge.split(",") if s]
            outcome = Session.planned(verifier, models.liveness(), steps, mode=mode).run(reference, camera.frames())
            decision, timings = outcome.decision, outcome.timings_ms
    else:
        probe = read_image(probe_path, *lim)
        verifier = models.verifier()
        decision, timings = verifier.verify(reference, probe, mode)
    out = {
        "decision": decision.decision,
        "reason": decision.reason,
        "similarity": None if decision.similarity is None else round(decision.similarity, 4),
        "threshold": verifier.policy.threshold,
        "policy": verifier.policy.describe(),
        "frames_used": decision.frames_used,
        "quality": decision.quality,
        "timings_ms": timings,
        "precision": modelstore.ModelStore.variant_of(verifier.models.get("embed")),
    }
    if decision.liveness:
        out["liveness"] = {"mode": args.liveness, **decision.liveness}
    return out


def _read_pairs_file(path: str) -> list[tuple[Path, Path]]:
    """`REFERENCE<TAB>PROBE` per line (blank lines and `#` comments skipped)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read pairs file {path}: {exc}") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not all(x.strip() for x in parts):
            raise InputError(f"{path} line {n}: expected REFERENCE<TAB>PROBE, got {line!r}")
        pairs.append((Path(parts[0].strip()), Path(parts[1].strip())))
    if not pairs:
        raise InputError(f"pairs file {path} lists no pairs")
    return pairs


def cmd_verify(args) -> int:
    if args.pairs is None and (args.reference is None or args.probe is None):
        return _fail("verify needs --reference and --probe, or --pairs FILE")
    if args.pairs is not None and (args.reference is not None or args.probe is not None):
        return _fail("--pairs goes without --reference and --probe")
    cfg = _config(args)
    models = _Models(cfg, args)
    if args.pairs is None:
        try:
            out = _verify_one(models, cfg, args, Path(args.reference), Path(args.probe))
        except InputError as exc:
            return _fail(str(exc))
        print(json.dumps(out))
        return EXIT_OK if out["decision"] == Verdict.MATCH else EXIT_NEGATIVE
    # batch: the models are loaded once; one JSON line per pair, in order; a pair with bad
    # input gets an `error` line and the batch goes on (exit 2 at the end)
    try:
        pairs = _read_pairs_file(args.pairs)
    except InputError as exc:
        return _fail(str(exc))
    bad = 0
    for reference, probe in pairs:
        try:
            out = _verify_one(models, cfg, args, reference, probe)
        except InputError as exc:
            bad += 1
            out = {"decision": "error", "reason": "bad_input", "error": str(exc)}
        print(json.dumps({"reference": str(reference), "probe": str(probe), **out}), flush=True)
    return EXIT_BAD_INPUT if bad else EXIT_OK

