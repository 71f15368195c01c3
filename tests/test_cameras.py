"""Cameras: the factory, reopening with back-off (FileCamera + a fake clock), V4L2 errors,
and picamera2's two streams (a fake Picamera2 class; no Pi here)."""
from __future__ import annotations

import sys
import time

import cv2
import numpy as np
import pytest

from facegate.adapters.cameras import ReopeningCamera, open_camera
from facegate.adapters.files import FileCamera
from facegate.adapters.opencv_camera import OpenCVCamera, parse_device
from facegate.adapters.picamera2_camera import Picamera2Camera, yuv420_to_bgr
from facegate.config import CameraConfig
from facegate.errors import CameraError


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), np.full((48, 64, 3), 128, np.uint8))
    return path


def _file_cfg(path, **kw) -> CameraConfig:
    return CameraConfig(source="file", path=str(path), realtime=False, loop=True, **kw)


# -- factory ---------------------------------------------------------------------------
def test_open_camera_file(image_file):
    cam = open_camera(_file_cfg(image_file))
    assert isinstance(cam, FileCamera)
    frame = next(cam.frames())
    assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
    cam.close()


def test_open_camera_errors_are_camera_errors(tmp_path):
    with pytest.raises(CameraError, match="needs camera.path"):
        open_camera(CameraConfig(source="file"))
    with pytest.raises(CameraError, match="does not exist"):
        open_camera(CameraConfig(source="file"), path_override=str(tmp_path / "nope.mp4"))
    with pytest.raises(CameraError, match="camera number"):
        open_camera(CameraConfig(source="picamera2"), path_override="/dev/video0")


# -- V4L2 ------------------------------------------------------------------------------
def test_missing_v4l2_device_fails_fast_and_clearly():
    t0 = time.monotonic()
    with pytest.raises(CameraError, match=r"/dev/video-facegate-test does not exist"):
        open_camera(CameraConfig(source="v4l2", device="/dev/video-facegate-test"))
    with pytest.raises(CameraError, match=r"/dev/video63 does not exist"):
        OpenCVCamera(CameraConfig(source="v4l2", device="63"))
    assert time.monotonic() - t0 < 2.0  # an error, not a hang


def test_a_file_that_is_not_a_capture_device_is_refused(tmp_path):
    fake = tmp_path / "video0"
    fake.write_bytes(b"")
    with pytest.raises(CameraError, match="cannot open"):
        OpenCVCamera(CameraConfig(source="v4l2", device=str(fake)))


def test_webcam_frames_are_bgr_and_a_failed_read_is_a_camera_error(tmp_path, monkeypatch):
    import facegate.adapters.opencv_camera as oc

    node = tmp_path / "video0"  # stands in for the device node (exists, read-write)
    node.write_bytes(b"")
    made = []

    class FakeCapture:
        """As OpenCV 5.1's V4L2 backend: an open parameter it does not support
        (CAP_PROP_OPEN_TIMEOUT_MSEC) leaves the device unopened."""

        def __init__(self, dev, backend, params=()):
            self.opened = cv2.CAP_PROP_OPEN_TIMEOUT_MSEC not in list(params)[::2]
            self.dev, self.props, self.released = dev, {}, False
            self.reads = [np.full((4, 6), 9, np.uint8), np.zeros((4, 6, 3), np.uint8)]
            made.append(self)

        def isOpened(self):
            return self.opened

        def set(self, prop, value):
            self.props[prop] = value

        def read(self):
            return (True, self.reads.pop(0)) if self.reads else (False, None)

        def release(self):
            self.released = True

    monkeypatch.setattr(oc.cv2, "VideoCapture", FakeCapture)
    clock = FakeClock(7.0)
    cam = OpenCVCamera(CameraConfig(source="v4l2", device=str(node), width=640, height=480, fps=12),
                       clock=clock)
    cap = made[0]
    assert cap.dev == str(node)
    assert (cap.props[cv2.CAP_PROP_FRAME_WIDTH], cap.props[cv2.CAP_PROP_FRAME_HEIGHT],
            cap.props[cv2.CAP_PROP_FPS]) == (640, 480, 12)
    frames = cam.frames()
    grey = next(frames)
    assert grey.image.shape == (4, 6, 3) and grey.image[0, 0].tolist() == [9, 9, 9] and grey.t_mono_s == 7.0
    assert next(frames).seq == 1
    with pytest.raises(CameraError, match="no frame within 5 s"):
        next(frames)
    cam.close()
    assert cap.released


def test_parse_device(tmp_path):
    assert parse_device("0") == 0 and parse_device(" 2 ") == 2
    assert parse_device("/dev/video3") == 3
    link = tmp_path / "usb-cam-video-index0"
    link.symlink_to("/dev/video5")
    assert parse_device(str(link)) == 5  # /dev/v4l/by-id links resolve to their index
    assert parse_device("/dev/v4l-other") == "/dev/v4l-other"


# -- reopening -------------------------------------------------------------------------
def test_removed_file_is_reopened_with_backoff_and_recovers(image_file, tmp_path):
    clock = FakeClock()
    sleeps, seen = [], []
    hidden = tmp_path / "hidden.png"

    def sleep(s):
        sleeps.append(s)
        seen.append(cam.health())
        clock.t += s
        if len(sleeps) == 3:
            hidden.rename(image_file)  # the camera comes back during the third wait

    cam = ReopeningCamera.from_config(_file_cfg(image_file, reopen_min_s=0.5, reopen_max_s=30.0),
                                      clock=clock, sleep=sleep)
    frames = cam.frames()
    first = next(frames)
    assert first.seq == 0 and cam.ok and cam.failures == 0 and cam.opens == 1

    clock.t += 0.1
    image_file.rename(hidden)  # the camera vanishes
    t_lost = clock.t
    second = next(frames)  # no exception: waits, reopens, recovers

    assert sleeps == [0.5, 1.0, 2.0]  # exponential back-off
    assert clock.t - t_lost == pytest.approx(3.5)  # recovered 3.5 s (fake) after the loss
    assert cam.failures == 3 and cam.opens == 2
    assert all(not h.ok for h in seen)  # health reported the outage
    assert "does not exist" in seen[-1].last_error
    assert second.seq == 1 and cam.ok and cam.last_frame_mono == clock.t and not cam.failing
    assert cam.health().as_dict()["failures"] == 3

    # the back-off starts small again after a good frame
    image_file.rename(hidden)
    sleeps.clear()

    def sleep_once(s):
        sleeps.append(s)
        clock.t += s
        hidden.rename(image_file)

    cam._sleep = sleep_once
    next(frames)
    assert sleeps == [0.5]
    frames.close()
    assert cam._cam is None  # closed with the generator


def test_backoff_is_capped_and_stop_ends_the_stream():
    clock = FakeClock()
    sleeps = []

    def broken():
        raise CameraError("no camera")

    def sleep(s):
        sleeps.append(s)
        clock.t += s
        if len(sleeps) == 6:
            cam.stop()

    cam = ReopeningCamera(broken, reopen_min_s=0.5, reopen_max_s=4.0, clock=clock, sleep=sleep)
    assert list(cam.frames()) == []
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert cam.failures == 6 and cam.last_error == "no camera" and not cam.ok


def test_a_stalled_camera_is_not_ok(image_file):
    clock = FakeClock()
    cam = ReopeningCamera.from_config(_file_cfg(image_file, frame_timeout_s=5.0), clock=clock)
    frames = cam.frames()
    next(frames)
    clock.t += 4.9
    assert cam.ok
    clock.t += 0.2
    assert not cam.ok and not cam.health().ok  # no frame for > frame_timeout_s
    cam.close()
    frames.close()


def test_unexpected_errors_and_ended_streams_are_retried_too():
    clock = FakeClock()
    opened = []

    class Flaky:
        def __init__(self, n):
            self.n = n
            self.closed = False

        def frames(self):
            from facegate.types import Frame
            if self.n == 0:
                raise OSError(5, "Input/output error")
            yield Frame(np.zeros((4, 4, 3), np.uint8), 0.0, 0)

        def close(self):
            self.closed = True

    def open_fn():
        opened.append(Flaky(len(opened)))
        return opened[-1]

    cam = ReopeningCamera(open_fn, clock=clock, sleep=lambda s: None)
    frames = cam.frames()
    assert next(frames).seq == 0  # from the second camera (the first failed on read)
    assert cam.last_error.startswith("OSError") and opened[0].closed
    assert next(frames).seq == 1  # third camera: the second one ended
    assert cam.last_error == "camera stream ended" and opened[1].closed
    frames.close()
    assert opened[2].closed


# -- picamera2 -------------------------------------------------------------------------
class FakeRequest:
    """A completed request: arrays and metadata readable only until release()."""

    def __init__(self, arrays, metadata=None):
        self.arrays = arrays
        self.metadata = metadata or {}
        self.released = False

    def make_array(self, name):
        assert not self.released
        return self.arrays[name].copy()

    def get_metadata(self):
        assert not self.released
        return dict(self.metadata)

    def release(self):
        self.released = True


class FakePicamera2:
    """Enough of picamera2.Picamera2: two-stream video configuration, async capture."""

    instances = []

    def __init__(self, camera_num=0):
        self.camera_num = camera_num
        self.calls = []
        self.requests = []
        self.timeout = False
        self.stamps_ns = []  # SensorTimestamp of the next requests (none: no stamp in the metadata)
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, **kw):
        self.calls.append(("create", kw))
        return kw

    def configure(self, config):
        self.calls.append("configure")
        self.camera_config = {"lores": {"size": config["lores"]["size"], "format": "YUV420"}}

    def start(self):
        self.calls.append("start")

    def capture_request(self, wait=None):
        assert wait is False
        return "job"

    def wait(self, job, timeout=None):
        assert job == "job" and timeout == 5.0
        if self.timeout:
            raise TimeoutError()
        meta = {"SensorTimestamp": self.stamps_ns.pop(0)} if self.stamps_ns else {"FrameDuration": 100000}
        self.requests.append(FakeRequest(self.arrays, meta))
        return self.requests[-1]

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


def _i420_with_stride(bgr: np.ndarray, stride: int) -> np.ndarray:
    """picamera2's YUV420 layout: (h * 3 / 2, stride), each plane's rows padded."""
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).ravel()
    y = i420[: h * w].reshape(h, w)
    u = i420[h * w: h * w * 5 // 4].reshape(h // 2, w // 2)
    v = i420[h * w * 5 // 4:].reshape(h // 2, w // 2)
    planes = []
    for plane, pw in ((y, stride), (u, stride // 2), (v, stride // 2)):
        padded = np.full((plane.shape[0], pw), 77, np.uint8)
        padded[:, : plane.shape[1]] = plane
        planes.append(padded.ravel())
    return np.concatenate(planes).reshape(h * 3 // 2, stride)


def _blocks(h, w) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)  # blue
    img[: h // 2, w // 2:] = (0, 0, 255)  # red
    img[h // 2:, : w // 2] = (0, 200, 0)  # green
    img[h // 2:, w // 2:] = (200, 200, 200)
    return img


def test_yuv420_with_stride_padding_to_bgr():
    bgr = _blocks(96, 160)
    out = yuv420_to_bgr(_i420_with_stride(bgr, 192), 160, 96)
    assert out.shape == (96, 160, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(out.astype(int) - bgr).max() <= 12  # YUV rounding only


def test_picamera2_configures_two_streams_and_fills_frame_and_lores():
    FakePicamera2.instances.clear()
    cfg = CameraConfig(source="picamera2", width=320, height=192, lores_width=160, lores_height=96, fps=10)
    main = _blocks(192, 320)
    t = iter([5.0, 5.1])
    cam = Picamera2Camera(cfg, camera_num=1, picamera2_cls=FakePicamera2, clock=lambda: next(t))
    fake = FakePicamera2.instances[-1]
    fake.arrays = {"main": main, "lores": _i420_with_stride(_blocks(96, 160), 192)}
    assert fake.camera_num == 1
    create = fake.calls[0][1]
    assert create["main"] == {"size": (320, 192), "format": "RGB888"}
    assert create["lores"] == {"size": (160, 96), "format": "YUV420"}
    assert create["controls"] == {"FrameRate": 10.0}
    assert fake.calls[1:] == ["configure", "start"]

    frames = cam.frames()
    f0, f1 = next(frames), next(frames)
    assert np.array_equal(f0.image, main) and f0.image.dtype == np.uint8  # RGB888 is BGR in memory
    assert f0.lores.shape == (96, 160, 3) and np.abs(f0.lores.astype(int) - _blocks(96, 160)).max() <= 12
    assert (f0.t_mono_s, f0.seq, f1.t_mono_s, f1.seq) == (5.0, 0, 5.1, 1)
    assert all(r.released for r in fake.requests)  # every request went back to the camera
    cam.close()
    assert fake.calls[-2:] == ["stop", "close"]


def _picamera2_with_stamps(received: list[float], stamps_ns: list[int]):
    cfg = CameraConfig(source="picamera2", width=320, height=192, lores_width=160, lores_height=96, fps=15)
    t = iter(received)
    cam = Picamera2Camera(cfg, picamera2_cls=FakePicamera2, clock=lambda: next(t))
    fake = FakePicamera2.instances[-1]
    fake.arrays = {"main": _blocks(192, 320), "lores": _i420_with_stride(_blocks(96, 160), 192)}
    fake.stamps_ns = list(stamps_ns)
    frames = cam.frames()
    out = [next(frames) for _ in received]
    cam.close()
    return out, fake


def test_picamera2_frames_are_timed_by_the_sensor_not_on_receipt():
    """Python gets the frames with jitter (40 ms, then 140 ms apart); the sensor exposed
    them 1/15 s apart, and that is what the frames carry."""
    exposed = [1_000_000_000_000 + i * 66_666_667 for i in range(3)]  # CLOCK_MONOTONIC ns
    received = [1000.040, 1000.080, 1000.220]
    frames, fake = _picamera2_with_stamps(received, exposed)
    assert [f.t_mono_s for f in frames] == [ns / 1e9 for ns in exposed]
    assert all(r.released for r in fake.requests)


def test_picamera2_stamps_in_another_clock_are_re_anchored_keeping_the_sensor_intervals(caplog):
    """A SensorTimestamp that cannot be time.monotonic's (here an hour ahead: CLOCK_BOOTTIME
    after a suspend) starts at the receipt time of its frame; the intervals stay the sensor's."""
    hour = 3600 * 1_000_000_000
    exposed = [1_000_000_000_000 + hour + i * 66_666_667 for i in range(3)]
    frames, _ = _picamera2_with_stamps([1000.040, 1000.080, 1000.220], exposed)
    t = [f.t_mono_s for f in frames]
    assert t[0] == 1000.040
    assert t[1] - t[0] == pytest.approx(0.0666667, abs=1e-6) and t[2] - t[0] == pytest.approx(0.1333333, abs=1e-6)
    assert "re-anchored" in caplog.text


def test_picamera2_without_sensor_timestamps_times_frames_on_receipt(caplog):
    frames, _ = _picamera2_with_stamps([7.0, 7.1, 7.25], [])
    assert [f.t_mono_s for f in frames] == [7.0, 7.1, 7.25]
    assert caplog.text.count("no SensorTimestamp") == 1  # said once, not per frame


def test_picamera2_timeout_is_a_camera_error():
    cfg = CameraConfig(source="picamera2", width=320, height=192, lores_width=160, lores_height=96)
    cam = Picamera2Camera(cfg, picamera2_cls=FakePicamera2)
    FakePicamera2.instances[-1].timeout = True
    with pytest.raises(CameraError, match="no frame within 5 s"):
        next(cam.frames())
    cam.close()


def test_picamera2_missing_or_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails as it does off a Pi
    cfg = CameraConfig(source="picamera2", lores_width=640, lores_height=360)
    with pytest.raises(CameraError, match="python3-picamera2"):
        open_camera(cfg)

    def no_camera(num):
        raise RuntimeError("Camera(s) not found")

    with pytest.raises(CameraError, match="no Pi camera 0: Camera"):
        Picamera2Camera(cfg, picamera2_cls=no_camera)
    with pytest.raises(CameraError, match="must not exceed"):
        Picamera2Camera(CameraConfig(width=320, height=240, lores_width=640), picamera2_cls=FakePicamera2)


# -- facegate snapshot -----------------------------------------------------------------
def test_snapshot_saves_one_frame_without_models(image_file, tmp_path, capsys):
    from facegate.cli import main

    out = tmp_path / "snap.png"
    assert main(["snapshot", str(out), "--source", "file", "--path", str(image_file), "--no-faces"]) == 0
    assert cv2.imread(str(out)).shape == (48, 64, 3)
    assert capsys.readouterr().out.strip() == f"{out}: 64x48 from file"
    assert main(["snapshot", str(out), "--source", "v4l2", "--path", "/dev/video-facegate-test"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_snapshot_boxes_the_face(lfw, model_dir, tmp_path, capsys):
    from facegate.cli import main

    src = lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"
    out = tmp_path / "snap.jpg"
    assert main(["snapshot", str(out), "--source", "file", "--path", str(src)]) == 0
    assert capsys.readouterr().out.strip().endswith("1 face(s)")
    before, after = cv2.imread(str(src)), cv2.imread(str(out))
    assert before.shape == after.shape
    green = (after[..., 1].astype(int) - after[..., 2] > 120) & (after[..., 1] > 200)
    assert green.sum() > 200  # the box was drawn
