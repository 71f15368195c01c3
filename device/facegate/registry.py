"""The plug-in families -- camera sources, challenge steps, publishers -- each a registry
of name -> factory, keyed by the family's enum in `vocab` (gpiozero's pin-factory way).

A member registers itself where it is defined::

    @CAMERAS.register(CameraSource.FILE)
    class FileCamera:
        @classmethod
        def from_config(cls, cfg, override=None): ...

and its module is *declared* here, so the names are known (config, CLI choices,
selftest) without importing anything: the module is imported the first time its factory
is asked for (`CAMERAS.get(...)`), so picamera2, paho and OpenCV's capture are loaded
only by the adapter that needs them, never by this module. Adding a camera source or a
step is one new module with its `register` line, plus its enum member and its `declare`
line below (docs/design.md, "Adding a camera or a step"). A test or a third-party module
may `register` a key of its own enum without declaring it; it is a name like the others
until `unregister`.

Nothing here imports the rest of the package but `vocab`.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Generic, TypeVar

from .vocab import CameraSource, PublisherKind, Step

F = TypeVar("F")


class UnknownName(ValueError):
    """A name no member of the family is registered under (a config or CLI typo)."""


class Registry(Generic[F]):
    """name -> factory for one family. `what` names the family in errors ("camera.source")."""

    def __init__(self, what: str):
        self.what = what
        self._keys: dict[str, StrEnum] = {}  # name -> key, in declaration order
        self._modules: dict[str, str] = {}  # name -> module that registers it on import
        self._factories: dict[str, F] = {}
        self._lock = threading.Lock()

    def declare(self, key: StrEnum, module: str) -> None:
        """`key` is registered by `module` (imported on first `get`)."""
        self._keys[key.value] = key
        self._modules[key.value] = module

    def register(self, key: StrEnum, factory: F | None = None) -> Any:
        """Register `factory` under `key`; without a factory, a decorator doing so."""
        def add(f: F) -> F:
            with self._lock:
                self._keys.setdefault(key.value, key)
                self._factories[key.value] = f
            return f
        return add if factory is None else add(factory)

    def unregister(self, key: StrEnum | str) -> None:
        """Forget a name that was registered without a declaration (tests)."""
        name = str(key)
        with self._lock:
            self._factories.pop(name, None)
            if name not in self._modules:
                self._keys.pop(name, None)

    def names(self) -> list[str]:
        """Every name, declared ones first in their order (CLI choices, error messages)."""
        return list(self._keys)

    def keys(self) -> list[StrEnum]:
        return list(self._keys.values())

    def key(self, name: object) -> StrEnum:
        """The key registered under `name` (a str or an enum member); UnknownName with the
        choices otherwise. Config validators call this."""
        key = self._keys.get(str(name)) if isinstance(name, str) else None
        if key is None:
            raise UnknownName(f"unknown {self.what} {name!r} (one of: {', '.join(self.names())})")
        return key

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._keys

    def get(self, name: object) -> F:
        """The factory registered under `name`, importing its declared module the first time."""
        key = self.key(name)
        factory = self._factories.get(key.value)
        if factory is None and key.value in self._modules:
            importlib.import_module(self._modules[key.value])
            factory = self._factories.get(key.value)
        if factory is None:
            raise UnknownName(f"{self.what} {key.value!r}: {self._modules.get(key.value, 'its module')} "
                              "registered no factory for it")
        return factory


CAMERAS: Registry[Any] = Registry("camera.source")
"""CameraSource -> the adapter class, with `from_config(cfg: CameraConfig, override: str |
None) -> ports.Camera` (CameraError with the reason; override: the path / device / number
given on the command line) and `where(cfg) -> str` (what it reads, for messages)."""
CAMERAS.declare(CameraSource.FILE, "facegate.adapters.files")
CAMERAS.declare(CameraSource.V4L2, "facegate.adapters.opencv_camera")
CAMERAS.declare(CameraSource.PICAMERA2, "facegate.adapters.picamera2_camera")

STEPS: Registry[Callable[..., Any]] = Registry("challenge step")
"""Step -> a detector class (liveness.steps.StepDetector): built once per challenge, fed
every observation, it reports the steps it saw done. One class may serve several steps."""
STEPS.declare(Step.BLINK, "facegate.liveness.steps")
STEPS.declare(Step.TURN_LEFT, "facegate.liveness.steps")
STEPS.declare(Step.TURN_RIGHT, "facegate.liveness.steps")

PUBLISHERS: Registry[Any] = Registry("publisher")
"""PublisherKind -> the adapter class, with `from_config(cfg: Config, will) -> ports.Publisher`
(will: the retained (topic, payload) the broker publishes when the terminal vanishes)."""
PUBLISHERS.declare(PublisherKind.MQTT, "facegate.adapters.mqtt")
PUBLISHERS.declare(PublisherKind.NULL, "facegate.adapters.null_mqtt")
PUBLISHERS.declare(PublisherKind.FAKE, "facegate.adapters.fake_mqtt")
