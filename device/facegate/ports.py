"""Narrow interfaces to everything that touches the world.

Each port has a real adapter and a fake in `facegate.adapters`; code above the adapters
only sees these protocols.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from .types import Frame


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and affine quantization (real = scale * (q - zero_point)) of one
    model tensor; scale 0.0 means not quantized."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0


@dataclass(frozen=True)
class DelegateReport:
    """How much of a model graph runs inside the accelerator delegate (XNNPACK)."""

    nodes: int
    delegated: int
    partitions: int

    @property
    def undelegated(self) -> int:
        return self.nodes - self.delegated


class Runner(Protocol):
    """Runs one model: arrays in (matching `inputs`), arrays out (matching `outputs`)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]: ...

    def delegate_report(self) -> DelegateReport: ...


class Camera(Protocol):
    """A source of frames; `frames()` yields until the source ends or `close()`."""

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...
