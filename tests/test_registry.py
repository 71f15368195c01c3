"""The plug-in families (facegate.registry): a camera source or a challenge step is one new
class plus its registration -- config, the CLI's choices, the camera opener, the selftest
and the challenge all take it from the registry, and an unknown name is a config error
that lists the choices (docs/design.md, "Adding a camera or a step")."""
from __future__ import annotations

import subprocess
import sys
import time
from enum import StrEnum

import cv2
import numpy as np
import pytest

from facegate import config, registry
from facegate.contract import Command, CommandRejected, SigningKey, parse_verify
from facegate.errors import CameraError, ConfigError
from facegate.liveness.challenge import Challenge, ChallengeOptions, Observation
from facegate.types import Frame
from facegate.vocab import CameraSource, PublisherKind, Step


class Extra(StrEnum):  # a family member the package does not ship
    TESTCARD = "testcard"
    NOD = "nod"


class CardCamera:
    """A throwaway camera: grey frames, 10 of them, then the end."""

    def __init__(self, cfg, override):
        self.cfg, self.override, self.closed = cfg, override, False

    @classmethod
    def from_config(cls, cfg, override=None):
        return cls(cfg, override)

    @staticmethod
    def where(cfg):
        return "the test card"

    def frames(self):
        for i in range(10):
            yield Frame(np.full((48, 64, 3), 128, np.uint8), i / 10, i)

    def close(self):
        self.closed = True


class NodDetector:
    """A throwaway step: seen done once the face has been seen on three frames."""

    def __init__(self, opts):
        self.n = 0

    def observe(self, o):
        self.n += 1
        return [Extra.NOD] if self.n == 3 else []

    def advanced(self):
        pass

    def progress(self, step):
        return min(self.n / 3, 1.0)


@pytest.fixture
def extra():
    registry.CAMERAS.register(Extra.TESTCARD, CardCamera)
    registry.STEPS.register(Extra.NOD, NodDetector)
    yield
    registry.CAMERAS.unregister(Extra.TESTCARD)
    registry.STEPS.unregister(Extra.NOD)


def test_the_shipped_members_are_declared_by_their_enums_without_importing_them():
    """Every enum member has its declared module; naming them imports no adapter (a fresh
    interpreter: picamera2_camera / paho stay unloaded until asked for)."""
    assert registry.CAMERAS.names() == list(CameraSource)
    assert registry.STEPS.names() == list(Step)
    assert registry.PUBLISHERS.names() == list(PublisherKind)
    code = ("import sys, facegate.config, facegate.registry as r; r.CAMERAS.names(); "
            "facegate.config.Config(); "
            "print(sorted(m for m in sys.modules if m.startswith(('paho', 'picamera2', 'facegate.adapters'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_declared_member_registers_itself_on_first_use():
    for reg in (registry.CAMERAS, registry.STEPS, registry.PUBLISHERS):
        for key in reg.keys():
            assert callable(reg.get(key)), (reg.what, key)
    assert registry.CAMERAS.get("picamera2").__name__ == "Picamera2Camera"
    assert registry.PUBLISHERS.get(PublisherKind.MQTT).__name__ == "PahoPublisher"


def test_an_unknown_name_is_a_config_error_with_the_choices_not_a_key_error():
    with pytest.raises(ConfigError, match=r"camera\.source: .*unknown camera\.source 'usb' \(one of: file, v4l2, "
                                          r"picamera2\)"):
        config.parse('[camera]\nsource = "usb"\n')
    with pytest.raises(ConfigError, match=r"challenge_steps\.1: .*unknown challenge step 'wink'"):
        config.parse('[liveness]\nchallenge_steps = ["blink", "wink"]\n')
    with pytest.raises(ConfigError, match="daemon.liveness"):
        config.parse('[daemon]\nliveness = "some"\n')
    from facegate.adapters.cameras import open_camera  # config bypassed: still a CameraError, not KeyError

    bad = config.CameraConfig.model_construct(source="usb")
    with pytest.raises(CameraError, match="unknown camera.source 'usb'"):
        open_camera(bad)
    assert config.parse('[camera]\nsource = "v4l2"\n').camera.source is CameraSource.V4L2


def test_a_registered_camera_reaches_config_cli_opener_and_selftest(extra):
    from facegate.adapters.cameras import open_camera
    from facegate.cli import build_parser
    from facegate.selftest import check_camera

    cfg = config.parse('[camera]\nsource = "testcard"\n')
    assert cfg.camera.source is Extra.TESTCARD
    snap = build_parser().parse_args(["snapshot", "out.jpg", "--source", "testcard"])
    assert snap.source == "testcard"
    cam = open_camera(cfg.camera, "x")
    assert isinstance(cam, CardCamera) and cam.override == "x"
    check = check_camera(cfg)
    assert check.ok and check.detail.startswith("testcard the test card: 64x48"), check
    registry.CAMERAS.unregister(Extra.TESTCARD)
    with pytest.raises(ConfigError, match="unknown camera.source 'testcard'"):
        config.parse('[camera]\nsource = "testcard"\n')
    with pytest.raises(SystemExit):
        build_parser().parse_args(["snapshot", "out.jpg", "--source", "testcard"])


def test_a_registered_step_reaches_config_cli_and_the_challenge(extra):
    from facegate.cli import _steps

    cfg = config.parse('[liveness]\nchallenge_steps = ["nod", "blink"]\n')
    assert cfg.liveness.challenge_steps == [Extra.NOD, Step.BLINK]
    assert _steps("nod,turn_left") == "nod,turn_left"
    ch = Challenge(["nod"], ChallengeOptions())
    for i in range(3):
        assert ch.step_progress == pytest.approx(i / 3)
        ch.update(Observation(i / 10, True))
    assert ch.status == "passed" and ch.events == [("nod", 0.2)]
    # and a backend may ask for it in a signed command, which the terminal's check accepts
    assert list(_signed_command(["nod", "blink"]).challenge or []) == ["nod", "blink"]
    registry.STEPS.unregister(Extra.NOD)
    with pytest.raises(CommandRejected, match="bad_challenge"):
        _signed_command(["nod"])
    with pytest.raises(Exception, match="unknown challenge step"):
        _steps("nod")


def _signed_command(challenge: list[str]):
    """A backend's signed verify command asking for `challenge`, checked as the terminal does."""
    key = SigningKey.generate()
    ok, jpg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    now = time.time()
    message = Command.new(jpg.tobytes(), now, 60, "r-1", challenge).sign(key, "facegate/v1/t-1/cmd/verify")
    return parse_verify(message, "facegate/v1/t-1/cmd/verify", {key.kid: key.private.public_key()}, now,
                        max_bytes=100_000, max_age_s=300, skew_s=30, max_pixels=1_000_000)


def test_the_cli_offers_every_registered_source():
    from facegate.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    (src,) = [a for a in subs["snapshot"]._actions if "--source" in a.option_strings]
    assert list(src.choices) == registry.CAMERAS.names()


def test_every_shipped_step_has_its_hint_and_its_prompt_in_every_language():
    """What a new step touches besides its detector and registration: the person is told it
    (vocab.Hint, the same word on R/guide) in every language of the kiosk page."""
    from facegate.guidance import STEP_HINTS
    from facegate.screen.strings import LANGUAGES, hint_key, table
    from facegate.vocab import Hint

    for step in registry.STEPS.keys():
        assert Hint(step.value) in STEP_HINTS, step
        for lang in LANGUAGES:
            assert table()[lang].get(hint_key(step.value)), (step, lang)
