"""The TOML configuration, validated by pydantic (unknown keys are errors).

`facegate config check FILE` reports every error with its key and line;
`facegate config example` prints a commented full config.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(_Section):
    dir: str = Field("", description="Model directory; empty = $FACEGATE_MODEL_DIR or ~/.local/share/facegate/models")
    precision: Literal["auto", "fp32", "dynint8", "int8"] = Field(
        "auto", description="Embedding / liveness model precision; auto = the measured default for this CPU architecture")
    num_threads: int = Field(1, ge=1, le=8, description="CPU threads facegate may use for inference (XNNPACK)")
    lanes: int = Field(0, ge=0, le=2, description="Parallel model sets: 2 analyses the reference and the probe at once, each with num_threads/2 threads; 0 = 2 when num_threads >= 2")


class VerifyConfig(_Section):
    # Chosen by scripts/eval_lfw.py on ../shared/data/lfw (3,000 pairs, folds 1-5):
    # the threshold for a false match rate <= 1e-3 over the 1,500 impostor pairs was
    # 0.343 with the fp32 embedding and 0.328 with int8; 0.35 keeps FAR <= 1e-3 for
    # both (fp32: 0 of 1,500 impostors, TAR 98.1 %; int8: 1 of 1,500, TAR 98.7 %).
    # Re-run the script after changing models or alignment. See README.
    match_threshold: float = Field(0.35, ge=-1, le=1, description="Cosine similarity at or above which two faces match")
    min_eye_distance_px: float = Field(16.0, ge=0, description="Smallest inter-ocular distance, in frame pixels")
    min_sharpness: float = Field(8.0, ge=0, description="Smallest Laplacian variance of the aligned crop")
    min_brightness: float = Field(35.0, ge=0, le=255, description="Darkest mean grey level of the face (0-255)")
    max_brightness: float = Field(225.0, ge=0, le=255, description="Brightest mean grey level of the face (0-255)")
    max_yaw_deg: float = Field(40.0, ge=0, le=90, description="Largest head yaw accepted for comparison, degrees")
    max_pitch_deg: float = Field(35.0, ge=0, le=90, description="Largest head pitch accepted for comparison, degrees")
    min_face_presence: float = Field(0.5, ge=0, le=1, description="Smallest face-mesh presence probability")
    dominant_face_ratio: float = Field(2.0, ge=1, description="With several faces, the most prominent (visible area weighted by closeness to the frame centre) wins only if it is this many times the next")
    fusion_frames: int = Field(5, ge=1, le=30, description="Best-quality video frames of one tracked face whose embeddings are fused")
    max_frames: int = Field(300, ge=1, description="Most video frames examined per verification")
    reference_pad_ratio: float = Field(0.5, ge=0, le=2, description="Padding added around a tightly cropped ID portrait before detection, as a fraction of its size")
    max_image_bytes: int = Field(20_000_000, ge=1000, description="Largest accepted image / video file, bytes")
    max_image_pixels: int = Field(40_000_000, ge=10_000, description="Largest accepted decoded image, pixels")


class LivenessConfig(_Section):
    # Chosen by scripts/eval_liveness.py on ../shared/data/nuaa (240 live / 240 printed
    # photo frames): the threshold minimising max(APCER, BPCER) was 0.49 with the int8
    # models and 0.51 with fp32; at 0.5 both give APCER 0 %, BPCER 0.42 % (one live frame
    # without a detectable face), and reject the replay video and both silent_face attacks.
    passive_threshold: float = Field(0.5, ge=0, le=1, description="Median over frames of the mean MiniFASNet p(real) at or above which a face counts as live")
    passive_min_frames: int = Field(1, ge=1, description="Fewest scored frames for a passive verdict")
    challenge_length: int = Field(2, ge=0, le=6, description="Steps in a random active challenge")
    challenge_steps: list[Literal["blink", "turn_left", "turn_right"]] = Field(
        ["blink", "turn_left", "turn_right"], min_length=1, description="Steps a random challenge may draw from")
    step_timeout_s: float = Field(6.0, gt=0, description="Time allowed for each challenge step, seconds of frame time")
    turn_min_deg: float = Field(25.0, gt=0, le=80, description="Smallest head turn away from the person's frontal pose, degrees")


class Config(_Section):
    device_id: str = Field("facegate-dev", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Device name used in topics and results")
    models: ModelsConfig = ModelsConfig()
    verify: VerifyConfig = VerifyConfig()
    liveness: LivenessConfig = LivenessConfig()


def _line_of(text: str, loc: tuple) -> int | None:
    """Best-effort line number of the key at `loc` (section path + key) in TOML text."""
    keys = [str(k) for k in loc if not isinstance(k, int)]
    if not keys:
        return None
    section, key = keys[:-1], keys[-1]
    in_section = not section
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    for n, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            in_section = m.group(1).strip() == ".".join(section)
            continue
        if in_section and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return n
    return None


def parse(text: str, source: str = "<config>") -> Config:
    """Parse and validate TOML text; raises ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: TOML syntax error: {exc}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            ln = _line_of(text, err["loc"])
            where = f"{source}:{ln}" if ln else source
            lines.append(f"{where}: {key}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def load(path: str | Path | None) -> Config:
    """The config at `path`, or all defaults when path is None."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    return parse(text, str(p))


def example() -> str:
    """A full config in TOML with every field's description as a comment."""
    out = ["# facegate configuration (every key optional; shown with its default)",
           f'device_id = "{Config().device_id}"', ""]
    for name, field in Config.model_fields.items():
        sub = getattr(Config(), name)
        if not isinstance(sub, BaseModel):
            continue
        out.append(f"[{name}]")
        for key, f in type(sub).model_fields.items():
            out.append(f"# {f.description}")
            out.append(f"{key} = {_toml_value(getattr(sub, key))}")
        out.append("")
    return "\n".join(out)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)
