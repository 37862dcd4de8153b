"""One typed Settings object built from the shipped defaults, an optional TOML file, the
environment and the command line, in that order of precedence (last wins)."""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULTS_FILE = Path(__file__).with_name("default.toml")
ENV_PREFIX = "HUIYI_"


class ConfigError(Exception):
    """Raised when a configuration source cannot be read or holds an invalid value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str
    port: int = Field(ge=0, le=65535)
    data_dir: Path
    public_url: str
    log_level: str
    # "text" (one human-readable line per record) or "json" (one JSON object per line, with the
    # request, meeting, user and peer the record is about); docs/operations.md#logs.
    log_format: str = "text"
    node_id: str = Field(max_length=64)
    header_timeout_seconds: float = Field(gt=0, le=3600)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        fmt = value.lower()
        if fmt not in {"text", "json"}:
            raise ValueError("must be text or json")
        return fmt


class DatabaseSettings(_Section):
    url: str
    schema_name: str = Field(alias="schema", pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,62})?$")
    pool_size: int = Field(ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value:
            to_async_url(value)
        return value


class RedisSettings(_Section):
    url: str
    key_prefix: str


class AuthSettings(_Section):
    jwt_secret: str
    access_token_ttl_seconds: int = Field(gt=0)
    refresh_token_ttl_seconds: int = Field(gt=0)
    reset_token_ttl_seconds: int = Field(gt=0)
    account_cache_seconds: float = Field(ge=0, le=3600)


class MailSettings(_Section):
    smtp_host: str
    smtp_port: int = Field(gt=0, le=65535)
    smtp_username: str
    smtp_password: str
    smtp_starttls: bool
    from_address: str


class UploadSettings(_Section):
    avatar_max_bytes: int = Field(gt=0)
    avatar_size_px: int = Field(ge=16, le=2048)


class MediaSettings(_Section):
    max_upload_bytes: int = Field(gt=0)
    job_workers: int = Field(ge=0, le=64)
    job_lease_seconds: float = Field(ge=0.5, le=3600)


class SignalingSettings(_Section):
    heartbeat_seconds: float = Field(gt=0, le=300)
    max_sockets_per_user: int = Field(ge=1, le=1000)


class SfuSettings(_Section):
    ipv6: bool
    publish_bitrate: int = Field(ge=100_000, le=100_000_000)
    simulated_loss: float = Field(ge=0.0, le=0.5)
    # Defaulted as in default.toml, so that code building SfuSettings for an in-process SFU need not
    # spell out the media network.
    bind_addresses: list[str] = Field(default_factory=list)
    announce_addresses: list[str] = Field(default_factory=list)
    port_min: int = Field(0, ge=0, le=65535)
    port_max: int = Field(0, ge=0, le=65535)
    udp_port: int = Field(0, ge=0, le=65535)  # 0: a port per connection
    tcp_port: int = Field(0, ge=0, le=65535)  # 0: no ICE over TCP
    # Clients send RTCP every second or so; limits of a few seconds suit tests, not real networks.
    silence_seconds: float = Field(15.0, ge=1.0, le=300.0)
    # Live noise suppression (docs/enhancement.md): the model ("" picks RNNoise, else DeepFilterNet
    # 3), the bitrate cleaned audio is re-encoded at, and how many tracks may be cleaned at once.
    noise_suppression_model: str = Field("", pattern=r"^([a-z0-9][a-z0-9._-]{0,63})?$")
    noise_suppression_bitrate: int = Field(48_000, ge=6_000, le=510_000)
    noise_suppression_max_streams: int = Field(32, ge=0, le=1000)
    # Worker processes the cleaned tracks are spread over (each takes a core at most); 0: one per
    # core but one.
    noise_suppression_workers: int = Field(0, ge=0, le=64)
    # Media worker processes (docs/sfu.md#workers): each runs its rooms on its own event loop and
    # sockets, so forwarding uses every core. -1: one per core; 0: media runs in the server's own
    # process (tests, tiny installs).
    workers: int = Field(0, ge=-1, le=256)

    @field_validator("bind_addresses", "announce_addresses", mode="before")
    @classmethod
    def _address_list(cls, value: Any) -> Any:
        """A list, or (from the environment) one string of comma-separated addresses."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("bind_addresses", "announce_addresses")
    @classmethod
    def _ip_literals(cls, value: list[str]) -> list[str]:
        addresses = []
        for text in value:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
            if address.version == 6 and address.scope_id:
                raise ValueError(f"{text!r}: scoped (link-local) IPv6 addresses are not supported")
            addresses.append(str(address))
        return addresses

    @field_validator("workers")
    @classmethod
    def _one_per_core(cls, value: int) -> int:
        return (os.cpu_count() or 1) if value == -1 else value

    @model_validator(mode="after")
    def _consistent(self) -> SfuSettings:
        if (self.port_min == 0) != (self.port_max == 0) or self.port_min > self.port_max:
            raise ValueError("port_min and port_max: both 0 (any port), or a range with port_min <= port_max")
        if self.udp_port and self.port_min:
            raise ValueError("udp_port shares one port among all connections: leave port_min and port_max 0")
        if self.port_min and self.workers > self.port_max - self.port_min + 1:
            raise ValueError("port_min..port_max is split between the workers: give each at least one port")
        for text in self.announce_addresses:
            if ipaddress.ip_address(text).is_unspecified:
                raise ValueError(f"announce_addresses: {text} cannot be announced")
        for text in self.bind_addresses:
            version = ipaddress.ip_address(text).version
            if ipaddress.ip_address(text).is_unspecified and not self.announce_addresses:
                raise ValueError(f"bind_addresses: {text} needs announce_addresses (what clients should reach)")
            if self.announce_addresses and not any(
                ipaddress.ip_address(a).version == version for a in self.announce_addresses
            ):
                raise ValueError(f"bind_addresses: {text} has no announce_addresses entry of its IP version")
        return self


class RecordingSettings(_Section):
    # Free space, in MiB, below which no recording starts and running ones stop (reason "disk").
    min_free_disk_mb: int = Field(ge=0)
    disk_check_seconds: float = Field(gt=0, le=3600)
    stop_wait_seconds: float = Field(gt=0, le=3600)


class TurnSettings(_Section):
    """The TURN/STUN server (turn/). Defaulted as in default.toml, so tools and tests building one for
    a server of their own need to spell out only what differs."""

    enabled: bool = True
    listen_host: str = "0.0.0.0"
    # UDP and TCP; 0 means a free port the system picks (tests and benchmarks).
    port: int = Field(3478, ge=0, le=65535)
    tls_port: int = Field(5349, ge=0, le=65535)
    tls_cert: str = ""
    tls_key: str = ""
    realm: str = Field("huiyi", min_length=1, max_length=127)
    secret: str = ""
    relay_address: str = ""
    public_address: str = ""
    url_host: str = Field("", max_length=253, pattern=r"^[A-Za-z0-9.:-]*$")
    relay_port_min: int = Field(49152, ge=0, le=65535)
    relay_port_max: int = Field(65535, ge=0, le=65535)
    credential_ttl_seconds: int = Field(86400, ge=60, le=30 * 86400)
    nonce_seconds: float = Field(600.0, ge=1.0, le=86400.0)
    max_allocations: int = Field(1000, ge=1, le=1_000_000)
    max_allocations_per_user: int = Field(10, ge=1, le=10_000)
    # Per allocation and direction; 0 lifts the limit.
    max_bytes_per_second: int = Field(2_500_000, ge=0)
    allowed_peer_cidrs: list[str] = Field(default_factory=list)

    @field_validator("allowed_peer_cidrs", mode="before")
    @classmethod
    def _cidr_list(cls, value: Any) -> Any:
        """A list, or (from the environment) one string of comma-separated networks."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_peer_cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        networks = []
        for text in value:
            try:
                networks.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ValueError(f"{text!r} is not an IPv4 or IPv6 network (CIDR)") from None
        return networks

    @field_validator("listen_host", "relay_address", "public_address")
    @classmethod
    def _ip_literal(cls, value: str) -> str:
        if not value:
            return value
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None

    @model_validator(mode="after")
    def _consistent(self) -> TurnSettings:
        if not self.listen_host:
            raise ValueError("listen_host: an address to listen on (0.0.0.0 for every IPv4 interface)")
        if (self.relay_port_min == 0) != (self.relay_port_max == 0) or self.relay_port_min > self.relay_port_max:
            raise ValueError("relay_port_min and relay_port_max: both 0 (any port), or a range with min <= max")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key: both (TURN over TLS), or neither")
        if self.public_address and ipaddress.ip_address(self.public_address).is_unspecified:
            raise ValueError(f"public_address: {self.public_address} cannot be announced")
        if self.relay_address and self.public_address:
            relay, public = ipaddress.ip_address(self.relay_address), ipaddress.ip_address(self.public_address)
            if relay.version != public.version:
                raise ValueError("relay_address and public_address must be of the same IP version")
        return self


class AiSettings(_Section):
    """Speech AI (docs/ai.md). Defaulted here as in default.toml so that settings built in code
    need not spell the section out."""

    # A directory of models the operator installed, one subdirectory with a model.json each.
    model_dir: str = ""
    # Start one worker node process beside the server (on the first AI request); false leaves the
    # work to nodes started with ``run_server.py worker`` (which needs Redis).
    local_worker: bool = True
    node_concurrency: int = Field(1, ge=1, le=64)
    heartbeat_seconds: float = Field(2.0, gt=0, le=60)
    # A node silent this long is shown offline and its unfinished jobs go to other nodes.
    node_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    # A request waits this long for its job to finish and then answers with the result; a job that
    # takes longer answers with its status, to be polled.
    wait_seconds: float = Field(10.0, ge=0, le=120)
    command_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    keep_results_seconds: int = Field(86_400, ge=60)
    max_audio_seconds: float = Field(7200.0, gt=0)
    max_input_bytes: int = Field(200 * 1024 * 1024, gt=0)
    fetch_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    # Networks an audio_url may point into although private (e.g. ["10.0.0.0/8"] for an intranet).
    url_allow_networks: list[str] = Field(default_factory=list)

    @field_validator("url_allow_networks", mode="before")
    @classmethod
    def _network_list(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("url_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _network_strings(value)


def _network_strings(value: list[str]) -> list[str]:
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a network such as 10.0.0.0/8") from None
    return value


def _comma_list(value: Any) -> Any:
    """A list, or (from the environment) one string of comma-separated items."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class MetricsSettings(_Section):
    """Prometheus metrics (docs/operations.md#metrics). Defaulted as in default.toml."""

    enabled: bool = True
    # An admin listener of its own serves GET /metrics without a token: keep it on loopback or a
    # private network. 0 picks a free port (logged); enabled = false serves no metrics at all.
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    # With a token, GET /metrics also answers on the public port, to `Authorization: Bearer <token>`.
    token: str = Field("", max_length=256)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("a metrics token needs at least 16 characters")
        return value


class HealthSettings(_Section):
    """What readiness (GET /api/v1/health/ready) requires beyond its services answering."""

    # Free space in the data directory below which the node reports itself not ready.
    min_free_disk_mb: int = Field(256, ge=0)


class WebhookSettings(_Section):
    """Signed event notifications to operators' URLs (docs/operations.md#webhooks)."""

    # Receivers configured here (besides those registered through the admin API), all events,
    # signed with ``secret``.
    urls: list[str] = Field(default_factory=list)
    secret: str = Field("", max_length=256)
    # Networks a webhook URL may point into although private (e.g. ["10.0.0.0/8"]).
    url_allow_networks: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    # A failed delivery is tried again after retry_base_seconds, then twice as long each time, at
    # most retry_max_seconds apart, until retry_for_seconds after the event; then it is dropped.
    retry_base_seconds: float = Field(1.0, gt=0, le=3600)
    retry_max_seconds: float = Field(600.0, gt=0, le=86_400)
    retry_for_seconds: float = Field(86_400.0, gt=0, le=30 * 86_400)
    # Delivered and dropped deliveries are kept this long for GET /api/v1/admin/webhooks/{id}.
    keep_seconds: float = Field(7 * 86_400.0, ge=0)

    @field_validator("urls", "url_allow_networks", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("url_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _network_strings(value)

    @model_validator(mode="after")
    def _signed(self) -> WebhookSettings:
        if self.urls and len(self.secret) < 16:
            raise ValueError("urls need a secret of at least 16 characters to sign the events with")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r}: webhook URLs are http or https")
        return self


class ClusterSettings(_Section):
    """Rooms across nodes (docs/operations.md#scale-out); only used with Redis configured. Defaulted
    here as in default.toml."""

    # A node writes its presence (load, SFU address, draining) this often...
    heartbeat_seconds: float = Field(1.0, gt=0, le=60)
    # ...and is taken for dead, its rooms placed again, when none came for this long.
    node_timeout_seconds: float = Field(4.0, gt=0, le=600)
    # A node dead this long without coming back has its sockets closed for it (control/lost_nodes.py).
    lost_seconds: float = Field(30.0, gt=0, le=86400)
    # SIGTERM: the node takes no new rooms and exits once its rooms ended, or after this long.
    drain_seconds: float = Field(0.0, ge=0, le=86400)
    # How the other nodes reach this node's API, to hand it requests about the rooms it runs;
    # empty: http://<server.host, or the host name when that is a wildcard>:<server.port>.
    internal_url: str = Field("", max_length=300, pattern=r"^(https?://\S+)?$")

    @model_validator(mode="after")
    def _timeout_spans_beats(self) -> ClusterSettings:
        if self.node_timeout_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("node_timeout_seconds must be at least twice heartbeat_seconds")
        return self


class CaptionSettings(_Section):
    """Live captions (docs/ai.md#live-captions). Defaulted here as in default.toml."""

    # Whether hosts may switch captions on at all on this node.
    enabled: bool = True
    # Silence that ends an utterance; an utterance longer than max_utterance_seconds is cut.
    silence_seconds: float = Field(0.5, ge=0.1, le=5)
    max_utterance_seconds: float = Field(15.0, ge=1, le=60)
    # A partial caption (final: false) every this many seconds of an utterance; 0: finals only.
    partial_seconds: float = Field(1.0, ge=0, le=30)
    # Speech waiting for the recogniser beyond this much: the oldest is dropped (and counted).
    max_backlog_seconds: float = Field(20.0, ge=1, le=600)
    # Audio frames queued for the caption worker beyond this many: the oldest are dropped.
    max_queued_frames: int = Field(3000, ge=50, le=1_000_000)


class RateLimitSettings(_Section):
    enabled: bool
    endpoints: dict[str, str] = Field(default_factory=dict)


class StreamingSettings(_Section):
    """Live streams (docs/streaming.md). Defaulted as in default.toml, so tools and tests building one
    need to spell out only what differs."""

    # What a stream is encoded at unless its start request says otherwise.
    width: int = Field(1280, ge=160, le=3840)
    height: int = Field(720, ge=90, le=2160)
    fps: int = Field(30, ge=5, le=60)
    video_bitrate: int = Field(2_500_000, ge=100_000, le=20_000_000)
    audio_bitrate: int = Field(128_000, ge=32_000, le=320_000)
    # The simulcast layer each participant's video is taken at, at most: low, medium or high.
    layer: str = Field("medium", pattern="^(low|medium|high)$")
    # x264's preset: faster ones spend less CPU for a worse picture at the same bit rate.
    preset: str = Field("veryfast", pattern="^(ultrafast|superfast|veryfast|faster|fast|medium)$")
    # An RTMP output that cannot connect for this long is given up (state failed).
    give_up_seconds: float = Field(60.0, gt=0, le=86400)
    # Reconnection waits double from half a second up to this.
    max_retry_seconds: float = Field(10.0, gt=0, le=600)
    hls_segment_seconds: float = Field(2.0, ge=1, le=30)
    hls_list_size: int = Field(6, ge=2, le=100)
    # Streams this node runs at once (each is a compositor process with its own core's worth of work).
    max_streams: int = Field(4, ge=0, le=256)
    # Networks a push URL may point into besides the public internet (loopback, private ranges...
    # are refused otherwise, so a host cannot make the server push into its own network).
    allow_networks: list[str] = Field(default_factory=list)

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _network_list(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _network_strings(value)


class Settings(_Section):
    server: ServerSettings
    database: DatabaseSettings
    redis: RedisSettings
    auth: AuthSettings
    mail: MailSettings
    uploads: UploadSettings
    media: MediaSettings
    signaling: SignalingSettings
    sfu: SfuSettings
    recording: RecordingSettings
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    turn: TurnSettings
    ai: AiSettings = Field(default_factory=AiSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    captions: CaptionSettings = Field(default_factory=CaptionSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    rate_limits: RateLimitSettings

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL, defaulting to the embedded SQLite file."""
        url = self.database.url or f"sqlite:///{self.server.data_dir / 'huiyi.db'}"
        return to_async_url(url)

    @property
    def node_id(self) -> str:
        return self.server.node_id or f"{socket.gethostname()}:{self.server.port}"

    @property
    def internal_url(self) -> str:
        if self.cluster.internal_url:
            return self.cluster.internal_url.rstrip("/")
        host = socket.gethostname() if self.server.host in {"0.0.0.0", "::", ""} else self.server.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.server.port}"

    @property
    def base_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        host = "localhost" if self.server.host in {"0.0.0.0", "::", ""} else self.server.host
        return f"http://{host}:{self.server.port}"


def to_async_url(url: str) -> str:
    """Accept the plain URLs operators know and pick the async driver for them."""
    for plain, driver in (
        ("postgresql+asyncpg://", None),
        ("sqlite+aiosqlite://", None),
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return url if driver is None else driver + url[len(plain) :]
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _from_environment(environ: Mapping[str, str], sections: Mapping[str, Any]) -> dict[str, Any]:
    """Map HUIYI_<SECTION>_<KEY> onto the nested layout; HUIYI_RATE_LIMITS=off switches limits off."""
    found: dict[str, Any] = {}
    names = sorted(sections, key=len, reverse=True)
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        rest = variable[len(ENV_PREFIX) :].lower()
        if rest == "rate_limits":
            found.setdefault("rate_limits", {})["enabled"] = value.strip().lower() not in {
                "off",
                "0",
                "false",
                "no",
            }
            continue
        for section in names:
            prefix = section + "_"
            if rest.startswith(prefix) and rest[len(prefix) :] in sections[section]:
                found.setdefault(section, {})[rest[len(prefix) :]] = value
                break
    return found


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the Settings; ``overrides`` carries command-line flags (None values are ignored)."""
    layers = _read_toml(DEFAULTS_FILE)
    if config_file is not None:
        layers = _merge(layers, _read_toml(config_file))
    layers = _merge(layers, _from_environment(os.environ if environ is None else environ, layers))
    for section, values in (overrides or {}).items():
        layers = _merge(layers, {section: {k: v for k, v in values.items() if v is not None}})
    try:
        settings = Settings.model_validate(layers)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    return settings
