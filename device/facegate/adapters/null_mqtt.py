"""The publisher of a terminal with MQTT off (mqtt.enabled = false): chosen explicitly by
daemon.build instead of the PahoPublisher, so the daemon has no `publisher is None`
branches. It never connects and publishes nothing; results stay in the outbox."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import Config
from ..ports import Inbound
from ..registry import PUBLISHERS
from ..vocab import PublisherKind


@PUBLISHERS.register(PublisherKind.NULL)
class NullPublisher:
    """A ports.Publisher that is never connected."""

    enabled = False  # the status file's broker.enabled
    connected = False
    last_error = ""
    refused = 0

    @classmethod
    def from_config(cls, cfg: Config, will: tuple[str, bytes] | None = None) -> NullPublisher:
        """mqtt.enabled = false: nothing goes out, whatever the config."""
        return cls()

    def start(self, on_message: Callable[[Inbound], None], on_connect: Callable[[], None],
              on_disconnect: Callable[[], None]) -> None:
        pass

    def subscribe(self, topic: str) -> None:
        pass

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                correlation: bytes | None = None, on_ack: Callable[[], None] | None = None,
                only_if: Callable[[], bool] | None = None) -> bool:
        return False

    def stop(self, last: Sequence[tuple[str, bytes]] = ()) -> None:
        pass
