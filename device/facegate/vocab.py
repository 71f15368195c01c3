"""The contract's words, defined once: decisions, the reasons that go with them, challenge
steps, liveness modes, daemon states and the hints that guide the person at the terminal.

Every value is a `StrEnum`: a member is the string itself (`Verdict.MATCH == "match"`,
`json.dumps` and `cbor2` write it as that string), so code, tests, the soak and the docs
can take the words from here one module at a time. Nothing here imports the rest of the
package. The published result pairs a `decision` (`Verdict`) with a `reason`:

| decision | reason |
|---|---|
| match | none |
| no_match | `FaceReason.DIFFERENT_PERSON` |
| no_face | a `FaceReason` (a quality gate), `reference_` + one for the portrait |
| spoof | a `LivenessReason` |
| timeout | `LivenessReason.CHALLENGE_INCOMPLETE`, `FaceReason.NO_FACE_IN_TIME` |
| rejected | a `Refusal` (the command started nothing) |
| error | a `Failure` |
"""
from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """`decision` of a result."""

    MATCH = "match"
    NO_MATCH = "no_match"
    SPOOF = "spoof"
    TIMEOUT = "timeout"
    NO_FACE = "no_face"
    REJECTED = "rejected"
    ERROR = "error"


class State(StrEnum):
    """What the terminal is doing (R/state, the status file, systemd STATUS=)."""

    IDLE = "idle"
    WAITING_FACE = "waiting_face"
    CHALLENGE = "challenge"
    DECIDING = "deciding"


class Presence(StrEnum):
    """R/status (retained): said on every (re)connect, by the broker as the last will, and
    on a clean stop."""

    ONLINE = "online"
    OFFLINE = "offline"
    STOPPED = "stopped"


class Step(StrEnum):
    """A step of the active challenge."""

    BLINK = "blink"
    TURN_LEFT = "turn_left"
    TURN_RIGHT = "turn_right"


class Hint(StrEnum):
    """The one thing the person at the terminal is told now (R/guide `hint`, the kiosk
    screen): a fix for what makes the frames unusable, or the challenge step asked
    (the same words as `Step`), or hold_still while good frames are collected."""

    ONE_FACE_ONLY = "one_face_only"
    LOOK_AT_CAMERA = "look_at_camera"
    MOVE_CLOSER = "move_closer"
    MOVE_BACK = "move_back"
    MORE_LIGHT = "more_light"
    LESS_LIGHT = "less_light"
    CENTER_FACE = "center_face"
    HOLD_STILL = "hold_still"
    BLINK = Step.BLINK.value
    TURN_LEFT = Step.TURN_LEFT.value
    TURN_RIGHT = Step.TURN_RIGHT.value


class LivenessMode(StrEnum):
    """Which liveness checks a session must pass."""

    NONE = "none"
    PASSIVE = "passive"  # the MiniFASNet models on every frame of the tracked face
    ACTIVE = "active"  # the challenge (and the eye-lid model for blinks)
    BOTH = "both"

    @property
    def passive(self) -> bool:
        return self in (LivenessMode.PASSIVE, LivenessMode.BOTH)

    @property
    def active(self) -> bool:
        return self in (LivenessMode.ACTIVE, LivenessMode.BOTH)


class RunningMode(StrEnum):
    """How `pipeline.Verifier.verify` reads its probe (MediaPipe Tasks' running modes)."""

    IMAGE = "image"  # one still image
    VIDEO = "video"  # a file's frames, read to their end
    LIVE_STREAM = "live_stream"  # a camera's frames, read until the decision is settled


class ChallengeStatus(StrEnum):
    """Where an active challenge is (liveness.challenge.Challenge.status)."""

    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"


class CameraSource(StrEnum):
    """camera.source: the registered camera families (registry.CAMERAS)."""

    FILE = "file"  # an image, a folder of images or a video file
    V4L2 = "v4l2"  # a V4L2 / USB webcam through OpenCV
    PICAMERA2 = "picamera2"  # a Raspberry Pi camera through picamera2


class PublisherKind(StrEnum):
    """The registered publishers (registry.PUBLISHERS): the daemon takes mqtt, or null
    with mqtt.enabled = false; fake is the in-memory one tests and demos name."""

    MQTT = "mqtt"
    NULL = "null"
    FAKE = "fake"


class Indicator(StrEnum):
    """What the status LEDs show (ports.Indicators.show)."""

    OFF = "off"
    READY = "ready"
    BUSY = "busy"
    PASS = "pass"
    FAIL = "fail"


COMMAND_FIELDS = ("request_id", "nonce", "iat", "exp", "reference")  # required in a verify command


class Refusal(StrEnum):
    """Why a verify command started nothing: the reason of its signed `rejected` answer,
    or, for input that is never answered (unauthenticated, without readable ids, expired,
    replayed), the key it is counted under in health's `ignored`."""

    TOO_LARGE = "too_large"
    NOT_COSE = "not_cose"
    BAD_HEADER = "bad_header"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    BAD_PAYLOAD = "bad_payload"
    MISSING_REQUEST_ID = "missing_request_id"
    MISSING_NONCE = "missing_nonce"
    MISSING_IAT = "missing_iat"
    MISSING_EXP = "missing_exp"
    MISSING_REFERENCE = "missing_reference"
    BAD_REQUEST_ID = "bad_request_id"
    BAD_NONCE = "bad_nonce"
    BAD_IAT = "bad_iat"
    BAD_EXP = "bad_exp"
    BAD_REFERENCE = "bad_reference"
    BAD_CHALLENGE = "bad_challenge"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    REPLAYED_REQUEST_ID = "replayed_request_id"
    REPLAYED_NONCE = "replayed_nonce"
    REPLAY_FLOOR = "replay_floor"  # exp at or below the highest exp whose replay record was dropped
    REDELIVERED = "redelivered"  # the broker's own DUP re-send of a command already taken
    STORAGE_FULL = "storage_full"
    BUSY = "busy"

    @classmethod
    def missing(cls, field: str) -> Refusal:
        """missing_<field> for a required command field (ValueError for another name)."""
        return cls(f"missing_{field}")

    @classmethod
    def bad(cls, field: str) -> Refusal:
        """bad_<field> for a command field (ValueError for another name)."""
        return cls(f"bad_{field}")


class FaceReason(StrEnum):
    """Why no face could be verified (`no_face`), or why it is `no_match`."""

    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    FACE_TOO_SMALL = "face_too_small"
    POSE_OUT_OF_RANGE = "pose_out_of_range"
    TOO_DARK = "too_dark"
    TOO_BRIGHT = "too_bright"
    TOO_BLURRY = "too_blurry"
    FACE_CHANGED = "face_changed"  # a video whose tracked face was replaced
    NO_FRAMES = "no_frames"  # a video without a single frame
    NO_FACE_IN_TIME = "no_face_in_time"  # (decision timeout) no usable face before the session timeout
    DIFFERENT_PERSON = "different_person"  # (decision no_match)
    REFERENCE_NO_FACE = "reference_no_face"  # the ID portrait: the same gates, prefixed
    REFERENCE_MULTIPLE_FACES = "reference_multiple_faces"
    REFERENCE_FACE_TOO_SMALL = "reference_face_too_small"
    REFERENCE_POSE_OUT_OF_RANGE = "reference_pose_out_of_range"
    REFERENCE_TOO_DARK = "reference_too_dark"
    REFERENCE_TOO_BRIGHT = "reference_too_bright"
    REFERENCE_TOO_BLURRY = "reference_too_blurry"

    def of_reference(self) -> FaceReason:
        """The same gate failed on the reference portrait (reference_<reason>)."""
        return FaceReason(f"reference_{self.value}")


class LivenessReason(StrEnum):
    """Why a session failed liveness (`spoof`; `timeout` for an unfinished challenge)."""

    PRESENTATION_ATTACK = "presentation_attack"  # the passive models judged the face not live
    TIMEOUT = "timeout"  # a challenge step not seen in time
    FACE_CHANGED = "face_changed"  # the tracked face was lost, replaced or drifted
    CHALLENGE_INCOMPLETE = "challenge_incomplete"  # the frames ended before the challenge did


class Failure(StrEnum):
    """Why a session ended in `error`."""

    CAMERA_FAILED = "camera_failed"  # frames stopped during the session
    CAMERA_UNAVAILABLE = "camera_unavailable"  # the camera never delivered
    PIPELINE_ERROR = "pipeline_error"
    INTERNAL_ERROR = "internal_error"
    SHUTTING_DOWN = "shutting_down"  # queued when the daemon stopped cleanly
    CANCELLED = "cancelled"  # the person pressed the button (gpio.button_pin) during the session
    BAD_INPUT = "bad_input"  # `facegate verify`: an unreadable file (exit code 2)


REASONS: dict[Verdict, frozenset[str]] = {
    Verdict.MATCH: frozenset(),
    Verdict.NO_MATCH: frozenset({FaceReason.DIFFERENT_PERSON}),
    Verdict.NO_FACE: frozenset(FaceReason) - {FaceReason.DIFFERENT_PERSON, FaceReason.NO_FACE_IN_TIME},
    Verdict.SPOOF: frozenset(LivenessReason),
    Verdict.TIMEOUT: frozenset({LivenessReason.CHALLENGE_INCOMPLETE, FaceReason.NO_FACE_IN_TIME}),
    Verdict.REJECTED: frozenset(Refusal),
    Verdict.ERROR: frozenset(Failure),
}
"""The reasons each decision may carry (match carries none)."""
