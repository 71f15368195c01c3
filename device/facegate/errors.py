"""One error tree for everything facegate raises on purpose."""


class FacegateError(Exception):
    """Root of facegate's errors; the CLI turns these into one-line messages."""


class ConfigError(FacegateError):
    """The configuration file is missing, malformed or invalid."""


class ModelError(FacegateError):
    """A model file is missing, tampered with, or cannot be loaded."""


class InputError(FacegateError):
    """An input image or video is unreadable, empty, corrupt or too large."""


class CameraError(FacegateError):
    """The camera failed or delivered no frame."""
