"""One verification: reference portrait + probe frames -> Decision. No I/O here.

frame -> detect faces -> face mesh on the chosen face -> 5-point alignment ->
embedding (L2-normalised) -> cosine similarity -> decision.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import decide, kat
from .config import Config, VerifyConfig
from .liveness.challenge import EyeLids
from .liveness.check import LivenessCheck, LivenessPlan
from .liveness.passive import V1SE_SCALE, V2_SCALE, PassiveLiveness
from .modelstore import Choice, ModelStore
from .policy import MatchPolicy
from .policy import resolve as resolve_policy
from .ports import Runner
from .types import Decision, Detection, FaceAnalysis, Frame, Glimpse
from .vision.align import align, five_points
from .vision.detect import FULL_RANGE, SHORT_RANGE, FaceDetector
from .vision.embed import Embedder, cosine
from .vision.geometry import iou
from .vision.mesh import FaceMesh, roi_from_detection
from .vision.pad import PadModel
from .vision.quality import measure
from .vocab import FaceReason, LivenessMode, RunningMode

RunnerFactory = Callable[[Path, int], Runner]


@dataclass
class Timings:
    """Milliseconds per stage, accumulated over one verification."""

    ms: dict = field(default_factory=dict)

    def add(self, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (t1 - t0) * 1000.0
        return t1

    def merge(self, other: Timings) -> None:
        for k, v in other.ms.items():
            self.ms[k] = self.ms.get(k, 0.0) + v

    def rounded(self) -> dict:
        return {k: round(v, 2) for k, v in self.ms.items()}


def lanes_and_threads(config: Config) -> tuple[int, int]:
    """(verifier lanes, inference threads per lane) for the configured thread budget:
    models.lanes, or 2 lanes from 2 threads on; the threads shared between the lanes."""
    lanes = config.models.lanes or (2 if config.models.num_threads >= 2 else 1)
    return lanes, max(1, config.models.num_threads // lanes)


VERIFIER_TASKS = ("detect_short", "detect_full", "mesh", "embed")
PASSIVE_TASKS = ("pad_v2", "pad_v1se")
ACTIVE_TASKS = ("iris",)


def model_plan(config: Config, liveness: str = LivenessMode.NONE) -> dict[str, tuple[str, int]]:
    """The one answer to "which models does this configuration load": task -> (precision
    asked, inference threads) for the verifier, the MiniFASNet pair when `liveness` is a
    passive mode, the eye-lid model when it is an active one. kat.load turns each into the
    variant that passes its known-answer self-test here (precision auto: the fastest such);
    `loaded_models` then names the files loaded, by sha256."""
    _, per_lane = lanes_and_threads(config)
    p, nt = config.models.precision, config.models.num_threads
    plan = {"detect_short": ("fp32", per_lane), "detect_full": ("fp32", per_lane), "mesh": ("fp32", per_lane),
            "embed": (p, per_lane)}
    mode = LivenessMode(liveness)
    if mode.passive:
        plan.update({"pad_v2": (p, nt), "pad_v1se": (p, nt)})
    if mode.active:
        plan["iris"] = ("fp32", nt)  # float only: its lid points must resolve a blink
    return plan


def _load(store: ModelStore, config: Config, make_runner: RunnerFactory, task: str) -> tuple[Runner, Choice]:
    precision, threads = model_plan(config, LivenessMode.BOTH)[task]
    return kat.load(store, task, precision, make_runner, threads)


def loaded_models(chosen: dict[str, Choice]) -> dict[str, str]:
    """task -> sha256 of every model file loaded (the self-tests' choice of variant, as
    Verifier.chosen and LivenessPlan.chosen return it): what the attestation, each result
    and the status file name."""
    return {task: c.entry.sha256 for task, c in chosen.items()}


def build_passive(store: ModelStore, config: Config,
                  make_runner: RunnerFactory) -> tuple[PassiveLiveness, dict[str, Choice]]:
    """Both MiniFASNet models at the configured precision (verified files that passed their
    known-answer self-test here: facegate.kat.load; raises ModelError), and the choices."""
    (v2, c2), (v1, c1) = (_load(store, config, make_runner, t) for t in ("pad_v2", "pad_v1se"))
    return PassiveLiveness(PadModel(v2, V2_SCALE), PadModel(v1, V1SE_SCALE)), {"pad_v2": c2, "pad_v1se": c1}


def build_eyes(store: ModelStore, config: Config, make_runner: RunnerFactory) -> tuple[EyeLids, dict[str, Choice]]:
    """The iris-landmark model whose eye contours follow the lids (blinks), self-tested."""
    runner, choice = _load(store, config, make_runner, "iris")
    return EyeLids(runner), {"iris": choice}


def build_liveness(store: ModelStore, config: Config, make_runner: RunnerFactory, mode: str,
                   rng: random.Random | None = None) -> LivenessPlan | None:
    """The LivenessPlan of `mode` with the models it needs loaded (None for mode none);
    rng: where random challenges come from (the system's by default)."""
    m = LivenessMode(mode)
    if m == LivenessMode.NONE:
        return None
    passive, c1 = build_passive(store, config, make_runner) if m.passive else (None, {})
    eyes, c2 = build_eyes(store, config, make_runner) if m.active else (None, {})
    return LivenessPlan(m, config.liveness, passive, eyes, rng or random.SystemRandom(), {**c1, **c2})


@dataclass(frozen=True)
class Probe:
    """The outcome of analysing one image: a face (maybe gated) or a reason."""

    face: FaceAnalysis | None
    reason: str | None


def pad_portrait(image: np.ndarray, ratio: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad a tightly cropped portrait by `ratio` of its size on every side (replicated
    border), so that detectors trained on wider views find the face; also the (x, y) padding
    in pixels."""
    h, w = image.shape[:2]
    py, px = int(h * ratio), int(w * ratio)
    return cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_REPLICATE), (px, py)


class Verifier:
    """Holds the models of the verification pipeline (built once, used per request) and the
    match policy in force for its embedding model (facegate.policy)."""

    def __init__(self, short: FaceDetector, full: FaceDetector, mesh: FaceMesh,
                 embedder: Embedder, cfg: VerifyConfig, models: dict[str, str], policy: MatchPolicy):
        self.short, self.full, self.mesh, self.embedder = short, full, mesh, embedder
        self.cfg = cfg
        self.models = models
        self.policy = policy
        self.chosen: dict[str, Choice] = {}  # task -> the variant loaded and why (from_store)
        self.peer: Verifier | None = None  # a second lane: its own models, its own thread
        self._pool: ThreadPoolExecutor | None = None

    def with_peer(self, peer: Verifier) -> Verifier:
        """Give this verifier a second lane; model invocations release the GIL, so two
        lanes run on two cores (reference and probe analysed at the same time)."""
        self.peer = peer
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="facegate-lane")
        return self

    def _analyze_reference(self, reference: np.ndarray):
        """Start the reference analysis: on the peer lane when there is one.
        Returns a callable giving (Probe, Timings)."""
        t = Timings()
        if self._pool is None:
            probe = self.analyze(reference, reference=True, t=t)
            return lambda: (probe, t)
        assert self.peer is not None  # with_peer() sets both
        fut = self._pool.submit(self.peer.analyze, reference, True, t)
        return lambda: (fut.result(), t)

    @classmethod
    def from_store(cls, store: ModelStore, config: Config, make_runner: RunnerFactory) -> Verifier:
        """Load the verified model files named by the config, each of which passed its
        known-answer self-test on this CPU (facegate.kat.load; raises ModelError), with the
        match policy of the embedding model loaded (raises ModelError when it has no
        calibration and the config sets no threshold of its own). The second lane's runners
        are more interpreters of the same files."""
        lanes, nt = lanes_and_threads(config)
        runners, chosen = {}, {}
        for task in VERIFIER_TASKS:
            runners[task], chosen[task] = _load(store, config, make_runner, task)
        entries = {task: c.entry for task, c in chosen.items()}
        models = loaded_models(chosen)
        policy = resolve_policy(config.verify, models["embed"], Embedder.METHOD)

        def lane(r: dict) -> Verifier:
            return cls(FaceDetector(r["detect_short"], SHORT_RANGE), FaceDetector(r["detect_full"], FULL_RANGE),
                       FaceMesh(r["mesh"]), Embedder(r["embed"]), config.verify, models, policy)

        main = lane(runners)
        main.chosen = chosen
        if lanes == 2:
            main.with_peer(lane({t: make_runner(store.model_dir / e.file, nt) for t, e in entries.items()}))
        return main

    # -- stages --------------------------------------------------------------------
    def find_faces(self, image: np.ndarray, reference: bool, t: Timings) -> list[Detection]:
        """Short-range detector; for a reference portrait also padded, then full-range."""
        t0 = time.perf_counter()
        dets = self.short.detect(image)
        if not dets and reference:
            padded, (px, py) = pad_portrait(image, self.cfg.reference_pad_ratio)
            dets = self.short.detect(padded) or self.full.detect(padded)
            dets = [Detection((d.box[0] - px, d.box[1] - py, d.box[2] - px, d.box[3] - py),
                              d.keypoints - np.asarray([px, py], np.float32), d.score) for d in dets]
        elif not dets:
            dets = self.full.detect(image)
        t.add("detect", t0)
        return dets

    def find_frame_faces(self, frame: Frame, t: Timings) -> list[Detection]:
        """Faces of a camera frame in `frame.image` pixels; detected on the small `lores`
        stream when the camera gives one (picamera2), then scaled to the main image."""
        if frame.lores is None:
            return self.find_faces(frame.image, False, t)
        sy = frame.image.shape[0] / frame.lores.shape[0]
        sx = frame.image.shape[1] / frame.lores.shape[1]
        return [Detection((d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy),
                          (d.keypoints * np.asarray([sx, sy], np.float32)).astype(np.float32), d.score)
                for d in self.find_faces(frame.lores, False, t)]

    def examine(self, image: np.ndarray, det: Detection, t: Timings, n_faces: int = 1,
                embed: bool = True) -> FaceAnalysis:
        """Mesh, alignment, quality and (optionally) the embedding of one detected face."""
        t0 = time.perf_counter()
        mesh = self.mesh.estimate(image, roi_from_detection(det))
        t0 = t.add("mesh", t0)
        crop = align(image, five_points(mesh.points))
        q = measure(mesh.points, crop)
        t0 = t.add("align", t0)
        emb = self.embedder.embed_mirrored(crop) if embed else np.zeros(0, np.float32)
        if embed:
            t.add("embed", t0)
        return FaceAnalysis(det, mesh, crop, emb, q, decide.gate(q, mesh.presence, self.cfg), n_faces)

    def analyze(self, image: np.ndarray, reference: bool = False, t: Timings | None = None,
                embed: bool = True) -> Probe:
        """Find, check and (unless embed is False: an empty embedding) embed the one face
        of a still image."""
        t = t if t is not None else Timings()
        dets = self.find_faces(image, reference, t)
        h, w = image.shape[:2]
        det, reason = decide.choose_face(dets, w, h, self.cfg.dominant_face_ratio)
        if det is None:
            return Probe(None, reason)
        face = self.examine(image, det, t, len(dets), embed=embed)
        return Probe(face, face.reason)

    # -- the one verification entry ---------------------------------------------------
    def verify(self, reference: np.ndarray, probe: np.ndarray | Iterable[Frame],
               mode: RunningMode = RunningMode.IMAGE, *, liveness: LivenessCheck | None = None,
               on_frame: Callable[[Glimpse], None] | None = None,
               on_work: Callable[[], None] | None = None) -> tuple[Decision, dict]:
        """Reference portrait (HxWx3 uint8 BGR) vs the probe -> (Decision, ms per stage).

        mode (MediaPipe Tasks' running modes): IMAGE: `probe` is one still image, decided on
        its one face. VIDEO: `probe` is frames (a file's), read to their end (at most
        verify.max_frames); LIVE_STREAM: frames of a camera, read until `fusion_frames` good
        frames are kept and `liveness` is settled (or failed) -- a live camera never ends by
        itself. With frames, one face is followed, its best frames' embeddings fused and
        decided once; with `liveness`, a session that fails it is a spoof whatever the
        similarity. on_frame(Glimpse) after every frame (what it showed, for guidance);
        on_work() after each step of the work that follows the frames (the reference's
        analysis, each fused embedding): the daemon's watchdog sees progress there too."""
        mode = RunningMode(mode)
        if (mode is RunningMode.IMAGE) != isinstance(probe, np.ndarray) or (mode is RunningMode.IMAGE and liveness):
            raise ValueError(f"RunningMode.{mode.name} does not take a {type(probe).__name__} probe"
                             f"{' with liveness' if liveness else ''}: one image is IMAGE (no liveness), "
                             "frames are VIDEO or LIVE_STREAM")
        t = Timings()
        t_start = time.perf_counter()
        pending = self._analyze_reference(reference)
        if isinstance(probe, np.ndarray):
            seen: Probe | _Track = self.analyze(probe, t=t)
        else:
            seen = self._follow(probe, t, liveness, mode is RunningMode.LIVE_STREAM, on_frame)
        ref, t_ref = pending()
        work = on_work or (lambda: None)
        if isinstance(seen, _Track):
            work()
        t.merge(t_ref)
        if ref.face is None or ref.reason:  # the portrait has no usable face: whatever the probe showed
            # (a still image's result has always named the portrait's quality, a session's not)
            keep = ref.face is not None and mode is RunningMode.IMAGE
            d = Decision(decide.NO_FACE, f"reference_{ref.reason}", None,
                         {"reference": ref.face.quality.as_dict()} if keep and ref.face else {})
        elif isinstance(seen, Probe):
            d = self._decide_image(ref.face, seen)
        else:
            d = self._decide_frames(ref.face, seen, liveness, t, work)
        t.add("total", t_start)
        return d, t.rounded()

    def _decide_image(self, ref: FaceAnalysis, pr: Probe) -> Decision:
        quality = {"reference": ref.quality.as_dict()}
        if pr.face is not None:
            quality["probe"] = pr.face.quality.as_dict()
        if pr.face is None or pr.reason:
            return Decision(decide.NO_FACE, pr.reason, None, quality)
        return decide.decide_match(cosine(ref.embedding, pr.face.embedding), self.policy.threshold, quality, 1)

    def _follow(self, frames: Iterable[Frame], t: Timings, liveness: LivenessCheck | None, live: bool,
                on_frame: Callable[[Glimpse], None] | None) -> _Track:
        """Follow one face through `frames`, keeping its best frames (not yet embedded)."""
        track = _Track()
        best, reasons = track.best, track.reasons
        last_box = None
        for frame in frames:
            track.seen += 1
            if track.seen > self.cfg.max_frames:
                break
            dets = self.find_frame_faces(frame, t)
            h, w = frame.image.shape[:2]
            det, reason = decide.choose_face(dets, w, h, self.cfg.dominant_face_ratio)
            if det is not None and last_box is not None and iou(det.box, last_box) < 0.1:
                reason, det = FaceReason.FACE_CHANGED, None
                if liveness:
                    liveness.face_changed()
            if det is None:
                reason = reason or FaceReason.NO_FACE
                reasons[reason] = reasons.get(reason, 0) + 1
                if liveness:
                    liveness.observe(frame.t_mono_s, None, frame.image)
                if on_frame:
                    on_frame(Glimpse(frame.t_mono_s, False, reason, None, (w, h)))
                if live and liveness and liveness.failed:
                    break
                continue
            face = self.examine(frame.image, det, t, len(dets), embed=False)
            last_box = det.box
            if liveness:
                t0 = time.perf_counter()
                liveness.observe(frame.t_mono_s, face, frame.image)
                t.add("liveness", t0)
            if on_frame:
                on_frame(Glimpse(frame.t_mono_s, True, face.reason, det.box, (w, h)))
            if face.reason:
                reasons[face.reason] = reasons.get(face.reason, 0) + 1
            else:
                best.append((decide.quality_score(face.quality), face))
                best.sort(key=lambda x: -x[0])
                del best[self.cfg.fusion_frames:]
            if live and len(best) >= self.cfg.fusion_frames and (
                    liveness is None or liveness.settled(self.cfg.fusion_frames)):
                break
            if live and liveness and liveness.failed:
                break
        return track

    def _decide_frames(self, ref: FaceAnalysis, track: _Track, liveness: LivenessCheck | None, t: Timings,
                       work: Callable[[], None]) -> Decision:
        quality = {"reference": ref.quality.as_dict(), "frames": track.seen}
        if not track.best:
            reasons = track.reasons
            reason = max(reasons, key=lambda r: reasons[r]) if reasons else FaceReason.NO_FRAMES
            return Decision(decide.NO_FACE, reason, None, quality)
        t0 = time.perf_counter()
        embs = []
        for _, f in track.best:
            embs.append(self.embedder.embed_mirrored(f.crop))
            work()
        t.add("embed", t0)
        quality["probe"] = track.best[0][1].quality.as_dict()
        d = decide.decide_match(cosine(ref.embedding, decide.fuse(embs)), self.policy.threshold, quality, len(embs))
        if liveness:
            spoof, summary = liveness.verdict()
            d = Decision(decide.SPOOF if spoof else d.decision, spoof or d.reason, d.similarity,
                         quality, len(embs), summary)
        return d


@dataclass
class _Track:
    """One followed face: its best frames (quality score, analysis), best first; how many
    frames were seen; why the others were not kept (reason -> frames)."""

    best: list[tuple[float, FaceAnalysis]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    seen: int = 0
