"""Shared fixtures: real models from the installed model directory, real data from
../shared/data. Data-dependent tests fail (not skip) in CI when the data is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from backendkit import broker, postgres, rig, store, store_cfg  # noqa: F401 (the backend tests' fixtures)
from facegate import config as config_mod
from facegate import modelstore, signing

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEGATE_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
LFW = DATA / "lfw" / "images"


def _need(path: Path) -> Path:
    if not path.exists():
        msg = f"{path} is absent (the real evaluation data lives beside the repo in ../shared)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def lfw(data_dir) -> Path:
    return _need(LFW)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    d = modelstore.default_model_dir()
    missing = modelstore.missing_required(modelstore.verify(d))
    if missing:
        pytest.fail(f"models not installed in {d} ({', '.join(missing)}): run scripts/dev.sh setup")
    return d


@pytest.fixture(scope="session")
def verifier(model_dir):
    from facegate.cli import build_verifier

    return build_verifier(config_mod.Config())


@pytest.fixture(scope="session")
def faces(data_dir, lfw, tmp_path_factory):
    """The camera video, a matching portrait (frame 20 of it) and a stranger's portrait."""
    import cv2

    from facegate.adapters.files import FileCamera

    d = tmp_path_factory.mktemp("faces")
    video = data_dir / "replay" / "zubair" / "live.webm"
    with FileCamera(video) as cam:
        for f in cam.frames():
            if f.seq == 20:
                ok, jpg = cv2.imencode(".jpg", f.image)
                (d / "ref.jpg").write_bytes(jpg.tobytes())
                break
    stranger = (lfw / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg").read_bytes()
    return {"video": video, "ref": (d / "ref.jpg").read_bytes(), "stranger": stranger}


@pytest.fixture(scope="session")
def backend_key():
    return signing.SigningKey.generate()
