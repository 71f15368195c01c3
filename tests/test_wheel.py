"""The package as a terminal gets it: a wheel built from this tree, installed into a fresh
venv outside the tree (no system site packages, not editable), then run from another
working directory -- `models fetch --from`, `verify` (same person -> 0, different -> 1) and
`demo --synthetic`. Nothing of the checkout may be needed at run time.

The dependency wheels are downloaded once per dependency set into
~/.cache/facegate/wheel-test/ (pip's normal index and configuration); the venv itself is
new on every run. Set FACEGATE_TEST_TIMEOUT_S on a slow or emulated CPU."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from timeouts import timeout_s

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = "daemon"
SAME = ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg")
DIFFERENT = ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg")
TIMINGS: dict[str, float] = {}


def _run(label: str, cmd: list, *, cwd: Path, env: dict | None = None,
         limit: float = 120) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout_s(limit))
    TIMINGS[label] = time.monotonic() - t0
    return r


def _clean_env(**extra: str) -> dict:
    """The environment of a user's shell: nothing pointing into this checkout or its venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "FACEGATE_SHARED", "FACEGATE_MODEL_DIR")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not p.startswith(str(ROOT)))
    return {**env, **extra}


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(project["dependencies"] + project["optional-dependencies"][EXTRAS])


def _wheelhouse() -> Path:
    """Wheels of every dependency (runtime + daemon extra) for this Python and machine,
    downloaded once per requirement set; a lock keeps concurrent runs apart."""
    reqs = _requirements()
    key = hashlib.sha256(json.dumps([reqs, sys.version_info[:2], platform.machine()]).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facegate" / "wheel-test"
    base.mkdir(parents=True, exist_ok=True)
    house = base / f"deps-{key}"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (house / ".complete").is_file():
            shutil.rmtree(house, ignore_errors=True)
            r = _run("download deps", [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                      "--only-binary=:all:", "-d", house, *reqs], cwd=base, limit=600)
            assert r.returncode == 0, f"cannot download the dependency wheels:\n{r.stderr[-2000:]}"
            (house / ".complete").write_text("\n".join(reqs) + "\n")
    return house


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of what the wheel is made of, so the build leaves nothing in the tree
    and the wheel cannot lean on files beside it."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("device", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    r = _run("build wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
              "-w", tmp / "dist", src], cwd=tmp, limit=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("facegate-*.whl")
    return wheel


@pytest.fixture(scope="module")
def shared_models(data_dir) -> Path:
    """The model mirror beside the evaluation data (../shared/models)."""
    d = data_dir.parent / "models"
    assert d.is_dir(), f"{d} is absent"
    return d


@pytest.fixture(scope="module")
def installed(tmp_path_factory, data_dir):
    """(facegate console script, a working directory outside the tree, the model dir)."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    venv = tmp / "venv"
    r = _run("venv", [sys.executable, "-m", "venv", venv], cwd=tmp, limit=120)
    assert r.returncode == 0, r.stderr
    house = _wheelhouse()
    r = _run("pip install", [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                             "--no-index", "--find-links", house, f"{wheel}[{EXTRAS}]"],
             cwd=tmp, env=_clean_env(), limit=300)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp / "elsewhere"
    work.mkdir()
    return venv / "bin" / "facegate", work, tmp / "models"


def test_installed_package_is_the_wheel_and_carries_its_models(installed):
    exe, work, _ = installed
    code = ("import facegate, json; from facegate import modelstore as m; "
            "print(json.dumps([facegate.__file__, str(m.resource('manifest.toml')), "
            "[e.file for e in m.load_manifest() if e.source == 'package' and m.resource(e.resource).is_file()]]))")
    r = _run("import", [exe.parent / "python", "-c", code], cwd=work, env=_clean_env())
    assert r.returncode == 0, r.stderr
    module, manifest, shipped = json.loads(r.stdout)
    venv = exe.parent.parent
    assert Path(module).is_relative_to(venv) and Path(manifest).is_relative_to(venv), (module, manifest)
    assert {"sface_int8.tflite", "minifasnet_v2_s2.7_int8.tflite", "minifasnet_v1se_s4.0_int8.tflite"} <= set(shipped)


def test_the_installed_wheel_serves_the_kiosk_page(installed):
    """The page's HTML / CSS / JS and string table are package resources: an installed wheel
    serves them (a missing package-data line would leave a page without its parts)."""
    exe, work, _ = installed
    code = ("import urllib.request as u; from facegate.config import ScreenConfig; "
            "from facegate.screen import KioskScreen; s = KioskScreen(ScreenConfig(listen='127.0.0.1:0'), 'b'); "
            "s.start(); print(*[len(u.urlopen(s.url + p).read()) for p in "
            "('', 'static/app.js', 'static/style.css', 'static/strings.json')]); s.stop()")
    r = _run("kiosk page", [exe.parent / "python", "-c", code], cwd=work, env=_clean_env())
    assert r.returncode == 0, r.stderr
    assert all(int(n) > 500 for n in r.stdout.split()), r.stdout


def test_fetch_verify_and_demo_from_the_installed_wheel(installed, data_dir, shared_models):
    exe, work, models = installed
    env = _clean_env(FACEGATE_MODEL_DIR=str(models))
    lfw = data_dir / "lfw" / "images"

    r = _run("models fetch", [exe, "models", "fetch", "--from", shared_models], cwd=work, env=env, limit=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run("models verify", [exe, "models", "verify"], cwd=work, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    installed_files = {p.name for p in models.glob("*.tflite")}
    assert {"sface_int8.tflite", "face_detection_short_range.tflite", "sface_fp32.tflite"} <= installed_files

    same = _run("verify same", [exe, "verify", "--reference", lfw / SAME[0], "--probe", lfw / SAME[1]],
                cwd=work, env=env)
    assert same.returncode == 0, same.stdout + same.stderr
    assert json.loads(same.stdout)["decision"] == "match"
    diff = _run("verify different", [exe, "verify", "--reference", lfw / DIFFERENT[0], "--probe", lfw / DIFFERENT[1]],
                cwd=work, env=env)
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert (json.loads(diff.stdout)["decision"], json.loads(diff.stdout)["reason"]) == ("no_match", "different_person")

    demo = _run("demo --synthetic", [exe, "demo", "--synthetic", "--workdir", work / "demo",
                 "--deadline-s", f"{timeout_s(120):g}"], cwd=work, env=env, limit=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.count("signature verified (kid") == 2, demo.stdout
    assert "Traceback" not in demo.stderr
    sims = [json.loads(r.stdout).get("similarity") for r in (same, diff)]
    print(f"\nwheel test: similarity same {sims[0]}, different {sims[1]}; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))
