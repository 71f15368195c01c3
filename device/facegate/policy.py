"""The match policy: the similarity threshold in force, named by its false-match rate.

`verify.target_fmr` picks a point of the calibration table shipped with the models
(models/calibration.toml, written by scripts/calibrate.py): per embedding model file, by its
sha256, a list of (FMR, threshold, FNMR) points measured over every cross-identity pair of
LFW folds 1-5 with ID-chip-like references. An embedding model without a row is refused
at load (never run with a guessed threshold) unless `verify.match_threshold` overrides the
table, which status, selftest, verify and every published result then say.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .config import VerifyConfig
from .errors import ModelError
from .modelstore import ModelStore, resource

CALIBRATION_NAME = "calibration.toml"


@dataclass(frozen=True)
class CalibrationPoint:
    fmr: float               # false-match rate over the calibration's impostor pairs
    threshold: float         # cosine similarity at or above which two faces match
    fnmr_chip3k: float       # false non-match rate with references <= 3 KB
    fnmr_chip1k5: float      # ... with references <= 1.5 KB
    fnmr_plain: float        # ... with the photo itself as the reference
    impostor_matches: int    # impostor pairs at or above the threshold behind this point


@dataclass(frozen=True)
class CalibrationRow:
    sha256: str
    variant: str
    method: str
    impostor_pairs: int
    genuine_pairs: int
    points: tuple[CalibrationPoint, ...]  # ordered from the highest FMR down


@dataclass(frozen=True)
class Calibration:
    version: str
    data: str
    rows: dict[str, CalibrationRow]  # by sha256


def parse_calibration(text: str) -> Calibration:
    """The calibration table from its TOML text; ModelError when it is malformed."""
    try:
        doc = tomllib.loads(text)
        rows = {}
        for r in doc["row"]:
            pts = tuple(sorted((CalibrationPoint(**p) for p in r["points"]), key=lambda p: -p.fmr))
            row = CalibrationRow(r["sha256"], r["variant"], r["method"], int(r["impostor_pairs"]),
                                 int(r["genuine_pairs"]), pts)
            rows[row.sha256] = row
        return Calibration(str(doc["version"]), str(doc.get("data", "")), rows)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"the match calibration table is malformed: {exc}") from None


def load_calibration(path: Path | None = None) -> Calibration:
    """The table shipped in the package (facegate.models/calibration.toml), or `path`."""
    try:
        text = path.read_text() if path is not None else resource(CALIBRATION_NAME).read_text()
    except (OSError, ModuleNotFoundError) as exc:
        raise ModelError(f"cannot read the match calibration table: {exc}") from None
    return parse_calibration(text)


@dataclass(frozen=True)
class MatchPolicy:
    """The threshold in force and why. target_fmr is None when the threshold is the
    operator's own (verify.match_threshold); expected_fnmr is the calibration's FNMR with
    <= 3 KB references at that point (None when overridden or not calibrated)."""

    threshold: float
    target_fmr: float | None
    table: str | None            # calibration version
    variant: str | None          # embedding model variant the point belongs to
    expected_fnmr: float | None
    point_fmr: float | None      # the table point used (<= target_fmr)

    @property
    def overridden(self) -> bool:
        return self.target_fmr is None

    def tag(self) -> str:
        """Its short name in every published result's `policy` (with the settings' hash)."""
        if self.overridden:
            return f"threshold={self.threshold:.4f} override"
        return f"fmr={self.target_fmr:.0e} table={self.table} {self.variant}"

    def describe(self) -> str:
        """One line for status, selftest and verify."""
        if self.overridden:
            return (f"threshold {self.threshold:.4f} set by verify.match_threshold (overrides the calibrated "
                    f"policy; its false-match rate is not stated by facegate)")
        fnmr = f", FNMR {100 * self.expected_fnmr:.2f}% with ID-chip references" if self.expected_fnmr is not None else ""
        point = "" if self.point_fmr == self.target_fmr else f" (table point {self.point_fmr:.0e})"
        return (f"threshold {self.threshold:.4f} for a false-match rate <= {self.target_fmr:.0e}{point} "
                f"({self.variant} embedding, calibration {self.table}{fnmr})")

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "target_fmr": self.target_fmr, "table": self.table,
                "variant": self.variant, "expected_fnmr": self.expected_fnmr, "overridden": self.overridden,
                "why": self.describe()}


def resolve(cfg: VerifyConfig, embed_sha256: str | None, method: str,
            calibration: Calibration | None = None) -> MatchPolicy:
    """The policy for the embedding model file `embed_sha256` compared by `method` (the
    pipeline's Embedder.METHOD) under `cfg`; ModelError when the model has no calibration
    for that method and no override, or the target is below what its table supports."""
    if cfg.match_threshold is not None:
        return MatchPolicy(cfg.match_threshold, None, None, ModelStore.variant_of(embed_sha256), None, None)
    cal = calibration if calibration is not None else load_calibration()
    row = cal.rows.get(embed_sha256 or "")
    if row is not None and row.method != method:
        raise ModelError(f"the match calibration of the {row.variant} embedding was measured with method "
                         f"{row.method!r}, the pipeline compares by {method!r}: re-run scripts/calibrate.py --write")
    if row is None:
        variant = ModelStore.variant_of(embed_sha256) or "unknown"
        raise ModelError(f"embedding model {variant} (sha256 {str(embed_sha256)[:16]}...) has no calibrated match "
                         f"policy in table {cal.version}: refused rather than run with a guessed threshold; "
                         "run scripts/calibrate.py --write, or set verify.match_threshold yourself")
    target = cfg.target_fmr
    usable = [p for p in row.points if p.fmr <= target * (1 + 1e-9)]
    if not usable:
        lowest = row.points[-1].fmr if row.points else math.nan
        raise ModelError(f"verify.target_fmr = {target:.0e} is below the lowest false-match rate the calibration "
                         f"supports for the {row.variant} embedding ({lowest:.0e}: at least 100 impostor matches "
                         f"among {row.impostor_pairs:,} pairs stand behind each point)")
    p = usable[0]
    return MatchPolicy(p.threshold, target, cal.version, row.variant, p.fnmr_chip3k, p.fmr)


def write_calibration(path: Path, rows: list[dict], version: str, data: str) -> None:
    """Write the table (scripts/calibrate.py --write): rows as the script computes them."""
    out = ["# facegate match calibration: written by scripts/calibrate.py --write; do not edit by hand.",
           "# Per embedding model file (sha256): (FMR, threshold, FNMR) points over every cross-identity",
           "# pair of the data below, with ID-chip-like references (docs/measurements.md).",
           f'version = "{version}"', f'data = "{data}"', ""]
    for r in rows:
        out += ["[[row]]", f'sha256 = "{r["sha256"]}"', f'variant = "{r["variant"]}"', f'method = "{r["method"]}"',
                f"impostor_pairs = {r['impostor_pairs']}", f"genuine_pairs = {r['genuine_pairs']}", "points = ["]
        for p in r["points"]:
            out.append(f"  {{ fmr = {p['fmr']:.0e}, threshold = {p['threshold']:.4f}, fnmr_chip3k = {p['fnmr_chip3k']:.5f}, "
                       f"fnmr_chip1k5 = {p['fnmr_chip1k5']:.5f}, fnmr_plain = {p['fnmr_plain']:.5f}, "
                       f"impostor_matches = {p['impostor_matches']} }},")
        out += ["]", ""]
    path.write_text("\n".join(out))
