"""One contract for every camera (ports.Camera), gpiozero's way: each adapter -- the file
camera on an image and on a video, OpenCV through the V4L2 adapter (on a video file when
there is no device here; on /dev/video0 when there is), picamera2 (the real library where
importable, else skipped; and the adapter driven by a fake Picamera2), and FakeCamera --
passes the same tests: frames are HxWx3 uint8 BGR with rising times and seq 0, 1, 2...;
close() is idempotent and ends the frames; a camera that goes away raises its defined
error (CameraError; the file camera, which is also `facegate verify`'s input, InputError
naming the file) and never a raw OSError / cv2.error; a source that is not there is a
CameraError at open. A newly registered camera source must add its case here."""
from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from facegate.adapters.cameras import open_camera
from facegate.adapters.fake_camera import FakeCamera
from facegate.adapters.opencv_camera import OpenCVCamera
from facegate.adapters.picamera2_camera import Picamera2Camera
from facegate.config import CameraConfig
from facegate.errors import CameraError, FacegateError, InputError
from facegate.registry import CAMERAS
from facegate.vocab import CameraSource


def _image(h=48, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _video(path: Path, n: int = 12) -> Path:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(n):
        out.write(_image(seed=i))
    out.release()
    assert path.stat().st_size > 0
    return path


@dataclass
class Case:
    """source: the registered family it covers; open(tmp) -> (camera, unplug): unplug()
    makes the camera go away; gone: the error a gone camera raises; missing(tmp): opens a
    source that is not there (None: no such thing for this camera)."""

    source: str
    open: Callable
    gone: type[FacegateError]
    missing: Callable | None = None
    skip: str = ""


def _file_image(tmp):
    img = tmp / "still.png"
    cv2.imwrite(str(img), _image())
    cam = open_camera(CameraConfig(source="file", path=str(img), realtime=False, loop=True))
    return cam, img.unlink


def _file_folder(tmp):
    d = tmp / "frames"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"{i:03d}.png"), _image(seed=i))
    cam = open_camera(CameraConfig(source="file", path=str(d), realtime=False, loop=True))
    return cam, lambda: shutil.rmtree(d)


def _file_video(tmp):
    vid = _video(tmp / "clip.avi")
    cam = open_camera(CameraConfig(source="file", path=str(vid), realtime=False, loop=True))
    return cam, vid.unlink


def _opencv_on_a_video(tmp):
    """The V4L2 adapter's own code (open, properties, read loop, close) on a video file
    through FFmpeg: its end is the camera going away."""
    vid = _video(tmp / "clip.avi")
    return OpenCVCamera(CameraConfig(source="v4l2", device=str(vid)), backend=cv2.CAP_FFMPEG), lambda: None


def _v4l2_device(tmp):
    return open_camera(CameraConfig(source="v4l2", device="/dev/video0")), None


def _picamera2_real(tmp):
    return open_camera(CameraConfig(source="picamera2")), None


class _Picamera2Driver:
    """Enough of picamera2.Picamera2 to drive the adapter: two streams, async capture."""

    def __init__(self, num):
        self.gone = False
        self.main, self.lores = _image(96, 128), np.zeros((64 * 3 // 2, 64), np.uint8)
        self.camera_config = {"lores": {"size": (64, 64)}}

    def create_video_configuration(self, **kw):
        return kw

    def configure(self, config):
        pass

    def start(self):
        pass

    def capture_request(self, wait=None):
        return "job"

    def wait(self, job, timeout=None):
        if self.gone:
            raise RuntimeError("Camera frontend has timed out!")  # what libcamera says when unplugged
        return _Request({"main": self.main, "lores": self.lores})

    def stop(self):
        pass

    def close(self):
        pass


class _Request:
    def __init__(self, arrays):
        self.arrays = arrays

    def make_array(self, name):
        return self.arrays[name].copy()

    def get_metadata(self):
        return {}

    def release(self):
        pass


def _picamera2_driven(tmp):
    made = []
    cfg = CameraConfig(source="picamera2", width=128, height=96, lores_width=64, lores_height=64)
    cam = Picamera2Camera(cfg, picamera2_cls=lambda n: made.append(_Picamera2Driver(n)) or made[-1])
    return cam, lambda: setattr(made[0], "gone", True)


def _picamera2_absent(tmp):
    def no_camera(n):
        raise IndexError("list index out of range")  # picamera2 with no camera attached
    Picamera2Camera(CameraConfig(source="picamera2"), picamera2_cls=no_camera)


def _fake(tmp):
    cam = FakeCamera([_image(seed=1), _image(seed=2)])
    return cam, cam.unplug


def _has_v4l2_device() -> bool:
    if not os.path.exists("/dev/video0"):
        return False
    cap = cv2.VideoCapture(0, cv2.CAP_V4L2)
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    return bool(ok)


CASES = {
    "file-image": Case(CameraSource.FILE, _file_image, InputError,
                       lambda tmp: open_camera(CameraConfig(source="file", path=str(tmp / "nope.png")))),
    "file-folder": Case(CameraSource.FILE, _file_folder, InputError),
    "file-video": Case(CameraSource.FILE, _file_video, InputError,
                       lambda tmp: open_camera(CameraConfig(source="file"))),
    "opencv-video": Case(CameraSource.V4L2, _opencv_on_a_video, CameraError,
                         lambda tmp: open_camera(CameraConfig(source="v4l2", device=str(tmp / "video9")))),
    "v4l2-device": Case(CameraSource.V4L2, _v4l2_device, CameraError,
                        skip="" if _has_v4l2_device() else "no readable V4L2 device /dev/video0 on this machine"),
    "picamera2": Case(CameraSource.PICAMERA2, _picamera2_real, CameraError,
                      skip="" if importlib.util.find_spec("picamera2") else
                      "picamera2 is not importable here (Raspberry Pi OS only; its adapter is driven below)"),
    "picamera2-driven": Case(CameraSource.PICAMERA2, _picamera2_driven, CameraError, _picamera2_absent),
    "fake": Case("fake", _fake, CameraError),
}


@pytest.fixture(params=list(CASES))
def case(request, tmp_path):
    c = CASES[request.param]
    if c.skip:
        pytest.skip(c.skip)
    cam, unplug = c.open(tmp_path)
    try:
        yield c, cam, unplug
    finally:
        cam.close()


def test_every_registered_source_has_a_case():
    assert set(CAMERAS.names()) <= {c.source for c in CASES.values()}


def test_frames_are_bgr_uint8_with_rising_times_and_counted(case):
    _, cam, _ = case
    frames = list(itertools.islice(cam.frames(), 8))
    assert len(frames) == 8
    for f in frames:
        assert f.image.ndim == 3 and f.image.shape[2] == 3 and f.image.dtype == np.uint8, f.image.shape
        assert f.image.flags.c_contiguous and min(f.image.shape[:2]) > 0
        assert isinstance(f.t_mono_s, float)
        if f.lores is not None:
            assert f.lores.dtype == np.uint8 and f.lores.shape[2] == 3
            assert f.lores.shape[0] <= f.image.shape[0] and f.lores.shape[1] <= f.image.shape[1]
    assert [f.seq for f in frames] == list(range(8))
    times = [f.t_mono_s for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times)), times


def test_close_is_idempotent_and_ends_the_frames(case):
    _, cam, _ = case
    frames = cam.frames()
    assert next(frames).seq == 0
    cam.close()
    cam.close()
    assert list(itertools.islice(frames, 3)) == []
    assert list(itertools.islice(cam.frames(), 3)) == []


def test_a_camera_that_goes_away_raises_its_defined_error(case):
    c, cam, unplug = case
    if unplug is None:
        pytest.skip("a real device cannot be unplugged by a test")
    frames = cam.frames()
    next(frames)
    unplug()
    with pytest.raises(FacegateError) as info:  # never OSError / cv2.error / StopIteration
        for _ in range(100):
            next(frames)
    assert isinstance(info.value, c.gone), info.value
    cam.close()
    cam.close()


def test_a_source_that_is_not_there_is_a_camera_error_at_open(tmp_path):
    for c in CASES.values():
        if c.missing is None:
            continue
        with pytest.raises(CameraError):
            c.missing(tmp_path)
