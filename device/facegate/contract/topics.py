"""Every topic of one terminal: R = {prefix}/{device_id}; status, attest, state, guide,
health, event, result and cmd/verify under it."""
from __future__ import annotations

import re
from dataclasses import dataclass

DEVICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a terminal's device_id (its topic level and broker user)


@dataclass(frozen=True)
class Topics:
    """Every topic of one device; `root` = {prefix}/{device_id}."""

    root: str

    @classmethod
    def of(cls, prefix: str, device_id: str) -> Topics:
        return cls(f"{prefix.rstrip('/')}/{device_id}")

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def attest(self) -> str:
        return f"{self.root}/attest"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def guide(self) -> str:
        return f"{self.root}/guide"

    @property
    def health(self) -> str:
        return f"{self.root}/health"

    @property
    def event(self) -> str:
        return f"{self.root}/event"

    @property
    def result(self) -> str:
        return f"{self.root}/result"

    @property
    def cmd_verify(self) -> str:
        return f"{self.root}/cmd/verify"


def topic_device(topic: str, prefix: str, leaf: str) -> str | None:
    """`dev` of a topic {prefix}/{dev}/{leaf}, else None."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head) or not topic.endswith("/" + leaf):
        return None
    dev = topic[len(head): -len(leaf) - 1]
    return dev if DEVICE_ID.fullmatch(dev) else None
