"""The backend's TOML configuration (`facegate backend ... --config backend.toml`), validated
like the daemon's (unknown keys are errors, every field described, units in names)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..config import BrokerConnection, _Section
from ..config import load as _load


class BrokerConfig(BrokerConnection):
    prefix: str = Field("facegate/v1", pattern=r"^[^#+$][^#+]*$", description="The terminals' topic prefix; their topics are {prefix}/{device_id}/...")
    response_prefix: str = Field("", pattern=r"^([^#+$][^#+]*)?$", description="Where the terminals send answers to this backend's requests (MQTT 5 response topic {response_prefix}/{client_id}); must lie under the prefix the terminals honour (their mqtt.response_prefix) and the broker lets this user read (the recipe's ACL: {prefix}/replies/{username}/); empty = {prefix}/replies/{username} ({prefix}/replies without a username)")
    client_id: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,64}$", description="MQTT client id of the request client; empty = facegate-backend-<random>. A serve worker uses {client_id or 'facegate-backend'}-w{worker}")
    connect_timeout_s: float = Field(10.0, gt=0, description="Longest wait for the first CONNACK, seconds")
    max_packet_bytes: int = Field(65536, ge=4096, le=268435455, description="MQTT 5 Maximum Packet Size sent in CONNECT (serve workers and the request client): the broker drops a bigger message to us instead of sending it (a result is about 1 KiB)")

    @property
    def replies(self) -> str:
        # under the user's own name: the broker recipe's ACL lets a backend user read the
        # replies under {prefix}/replies/{its user}/ only, no other backend's
        own = f"{self.prefix.rstrip('/')}/replies" + (f"/{self.username}" if self.username else "")
        return (self.response_prefix or own).rstrip("/")


class StoreConfig(_Section):
    sqlite: str = Field("facegate-backend.db", description="SQLite database file (used when dsn is empty)")
    dsn: str = Field("", description="PostgreSQL connection string (libpq / psycopg 3), e.g. postgresql://facegate@db/facegate; set = PostgreSQL instead of SQLite")


class ServeConfig(_Section):
    group: str = Field("facegate", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Shared-subscription group: workers in one group share the fleet's results ($share/{group}/{prefix}/+/result)")
    worker: str = Field("1", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="This worker's name in the group; its MQTT client id (and so its persistent session) is {client_id or 'facegate-backend'}-w{worker}: restart a dead worker under the same name and it takes up what the broker kept for it")
    session_expiry_s: int = Field(86400, ge=60, description="How long the broker keeps a stopped worker's session and queues its share, seconds")
    batch_max: int = Field(200, ge=1, le=10000, description="Most messages committed in one database transaction")
    receive_max: int = Field(200, ge=1, le=65535, description="MQTT 5 Receive Maximum: unacknowledged results the broker may have in flight to this worker")
    journal: bool = Field(False, description="Also hold a persistent session with a plain subscription to every result ({client id}-journal), stored at most once like the rest: a broker that forgets shared subscriptions when it restarts (Mosquitto 2.0 does) still queues the results for it while the workers re-subscribe. Costs one more copy of every result; turn it on in one worker of the group")
    key_refresh_s: float = Field(2.0, gt=0, description="How often the worker re-reads the device keys (a revocation takes effect within this), seconds")
    probe_s: float = Field(15.0, gt=0, description="An idle worker sends itself a message this often and reconnects when it does not come back within as long: Mosquitto 2.0.11 never gives back the send quota of a message it dropped for our Maximum Packet Size, so receive_max such messages would stop the session for good, seconds")
    quarantine_max_age_s: float = Field(30 * 86400, gt=0, description="Quarantine rows older than this are purged (by every worker, once a minute), seconds")


class MetricsConfig(_Section):
    listen: str = Field("127.0.0.1:9464", pattern=r"^(|[^\s:]*:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5})$", description="Where `facegate backend serve` serves Prometheus metrics (host:port, /metrics); empty = not served. Loopback by default: several workers on one machine each need their own (serve --metrics-listen)")
    stale_after_s: float = Field(120.0, gt=0, description="A terminal that says online but has not been heard of (R/health comes every daemon.health_interval_s, 30 s by default) for this long counts as stale, seconds")
    fleet_refresh_s: float = Field(5.0, ge=0, description="The fleet gauges (read from the database at scrape time) are recomputed at most this often, seconds")


class BackendConfig(_Section):
    key_file: str = Field("backend.pem", description="The backend's Ed25519 signing key (PEM) that signs verify commands; its public key goes into each terminal's mqtt.trusted_keys")
    command_lifetime_s: float = Field(120.0, gt=0, le=3600, description="exp - iat of the verify commands sent (the terminals refuse more than their daemon.command_max_age_s)")
    max_command_bytes: int = Field(2_000_000, ge=1000, description="The terminals' daemon.max_command_bytes: a verify command above it is refused here, before it is sent (the terminal would never see it)")
    max_reference_pixels: int = Field(4_000_000, ge=10_000, description="The terminals' daemon.max_reference_pixels: a larger reference is refused here, with its size, instead of a bare bad_reference")
    clock_skew_s: float = Field(30.0, ge=0, description="Tolerated clock difference to the terminals when a result's iat is checked, seconds")
    mqtt: BrokerConfig = BrokerConfig()
    store: StoreConfig = StoreConfig()
    serve: ServeConfig = ServeConfig()
    metrics: MetricsConfig = MetricsConfig()


def load(path: str | Path | None) -> BackendConfig:
    """backend.toml at `path`, or every default when None (raises ConfigError). Relative
    file names in it (key_file, store.sqlite, mqtt's password / CA / certificate files) are
    taken relative to the config file's directory, not to wherever the command runs: run
    from elsewhere, `devices` used to open a new, empty registry."""
    cfg = _load(path, BackendConfig)
    if path is None:
        return cfg
    base = Path(path).resolve().parent

    def anchored(model, names):
        upd = {n: str(base / getattr(model, n)) for n in names
               if getattr(model, n) and not Path(getattr(model, n)).is_absolute()}
        return model.model_copy(update=upd) if upd else model

    return anchored(cfg, ("key_file",)).model_copy(update={
        "mqtt": anchored(cfg.mqtt, ("password_file", "ca_file", "cert_file", "key_file")),
        "store": anchored(cfg.store, ("sqlite",))})
