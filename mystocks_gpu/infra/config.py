"""Validated, frozen configuration: defaults <- TOML file <- ``MYSTOCKS_*`` environment.

One frozen dataclass per component (:class:`KafkaConfig`, :class:`RedisConfig`, ...,
:class:`JobsConfig` for the job plane), gathered in :class:`Settings`. Sources, later wins:

1. the defaults below (a loopback stack on ports 19092 / 16379, so a system Kafka or Redis on the
   standard ports is never touched); when ``[stack]`` moves the local stack (host, ports) and the
   clients' addresses are not set, they follow it (``_derive_local_clients``);
2. a TOML file: ``--config PATH``, else ``$MYSTOCKS_CONFIG``, else ``./mystocks.toml`` if present;
3. environment variables ``MYSTOCKS_<SECTION>__<KEY>`` (e.g. ``MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS``,
   ``MYSTOCKS_KAFKA__SECURITY__SASL_PASSWORD`` -> ``kafka.security["sasl.password"]``) and
   ``MYSTOCKS_<KEY>`` for top-level keys (``MYSTOCKS_BACKEND``).

Unknown sections, keys or ``MYSTOCKS_`` variables are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.cpu_affinity import parse_cpu_list
from mystocks_gpu.infra.services_config import ServicesConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "MYSTOCKS_"
#: variables that are not settings: the config path, compile-cache locations (read before settings load)
_ENV_RESERVED = {"MYSTOCKS_CONFIG", "MYSTOCKS_CACHE_DIR", "MYSTOCKS_CODEC_CACHE"}
_SECRET_WORDS = ("password", "secret", "token", "credentials", "private")
MASK = "***"

_SECURITY_PREFIXES = ("security.protocol", "sasl.", "ssl.", "enable.ssl.")
_SECURITY_PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}


def is_secret_key(key: str) -> bool:
    """True when a config key names a secret (its value is masked in output and logs)."""
    k = key.lower()
    return any(w in k for w in _SECRET_WORDS) or k in {"ssl.key.pem", "sasl.jaas.config"}


def mask_url(url: str) -> str:
    """``redis://user:pw@host`` -> ``redis://user:***@host``; URLs without a password unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class KafkaConfig:
    """How every Kafka client connects.

    ``security`` holds librdkafka properties passed through verbatim (``security.protocol``,
    ``sasl.mechanism``, ``sasl.username``, ``sasl.password``, ``ssl.ca.location``, ...).
    """

    bootstrap_servers: str = "127.0.0.1:19092"
    client_id: str = "mystocks-gpu"
    security: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: seconds to wait for a broker to answer before reporting it unreachable
    connect_timeout_s: float = 10.0
    #: seconds a client may go without metadata from any broker it knows before it starts again from
    #: ``bootstrap_servers`` (librdkafka's ``metadata.recovery.rebootstrap.trigger.ms``; its default is
    #: 300 s). A broker that was frozen past its session comes back fenced for a few ms; a metadata
    #: answer in that window lists no broker, librdkafka drops the one it knew, and a transactional
    #: producer then waited the whole 300 s, its transaction stuck (a worker stopped after its
    #: retries, or hung; ``bench/HISTORY.md``, 2026-12-07)
    rebootstrap_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.bootstrap_servers or not all(
            re.fullmatch(r"[\w.\-\[\]:]+:\d+", s.strip()) for s in self.bootstrap_servers.split(",")
        ):
            raise ConfigError(
                f"kafka.bootstrap_servers must be host:port[,host:port...], got {self.bootstrap_servers!r}"
            )
        for k, v in self.security.items():
            if not k.startswith(_SECURITY_PREFIXES):
                raise ConfigError(
                    f"kafka.security.{k}: only security.protocol, sasl.*, ssl.* properties are allowed"
                )
            if k == "security.protocol" and str(v).upper() not in _SECURITY_PROTOCOLS:
                raise ConfigError(f"kafka.security.security.protocol must be one of {sorted(_SECURITY_PROTOCOLS)}")
        if not self.connect_timeout_s > 0:
            raise ConfigError(f"kafka.connect_timeout_s must be > 0, got {self.connect_timeout_s}")
        if not 0.001 <= self.rebootstrap_s <= 2_147_483:  # librdkafka's range, in ms: 0 .. 2^31 - 1
            raise ConfigError(f"kafka.rebootstrap_s must be 0.001 .. 2147483 (seconds), got {self.rebootstrap_s}")
        object.__setattr__(self, "security", MappingProxyType({k: str(v) for k, v in self.security.items()}))

    @property
    def rebootstrap_ms(self) -> int:
        """``rebootstrap_s`` in whole milliseconds, as librdkafka takes it (at least 1: validated)."""
        return round(self.rebootstrap_s * 1000)

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka config for a producer, consumer or admin client, security included."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "client.id": self.client_id,
                                "metadata.recovery.strategy": "rebootstrap",
                                "metadata.recovery.rebootstrap.trigger.ms": self.rebootstrap_ms}
        conf.update(self.security)
        conf.update(extra)
        return conf


@dataclass(frozen=True)
class RedisConfig:
    """Redis connection (result cache, worker heartbeats)."""

    url: str = "redis://127.0.0.1:16379/0"

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError(f"redis.url must be redis://, rediss:// or unix://, got {mask_url(self.url)!r}")


@dataclass(frozen=True)
class SchemaRegistryConfig:
    """Optional Confluent-compatible Schema Registry. With no ``url`` the manifest gives ids."""

    url: str | None = None
    #: register the package's schemas on startup (only when asked)
    register: bool = False
    basic_auth_user: str | None = None
    basic_auth_password: str | None = None
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.url is not None and urlsplit(self.url).scheme not in {"http", "https"}:
            raise ConfigError(f"schema_registry.url must be http(s)://..., got {mask_url(self.url)!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"schema_registry.timeout_s must be > 0, got {self.timeout_s}")


@dataclass(frozen=True)
class StackConfig:
    """The local single-node stack started by ``mystocks-gpu stack up``."""

    kafka_version: str = "4.1.1"
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    controller_port: int = 19093
    redis_port: int = 16379
    #: where pid files, logs and Kafka's data live (relative to the working directory)
    home: str = ".stack"
    #: Maven-resolved Kafka jars are cached here (shared between checkouts)
    cache_dir: str = "~/.cache/mystocks-gpu"
    #: the broker's heap (``-Xmx``; Kafka's own default is 1 GiB)
    kafka_heap_mb: int = 1024
    #: the broker's young generation, fixed (``-Xmn``, the heap then committed whole); 0 = G1 sizes it
    #: to its pause goal (about 100 MB here). The broker allocates ~25 MB/s at 10k ticks/s and ~100 MB/s
    #: at 50k: G1's own sizing paused it for 5-16 ms every 1-4 s, 640 MB every 6-30 s for 14-40 ms, and
    #: at-least-once p99 fell 7.6 -> 6.1 ms at 10k, 11.6 -> 9.9 at 50k (bench/HISTORY.md, 2026-12-08 01:45)
    kafka_young_mb: int = 640
    startup_timeout_s: float = 120.0
    #: the CPUs the broker runs on, every thread of it, as ``taskset -c`` writes them ("0", "0-1");
    #: "" = wherever the scheduler puts it (default). With ``run --cpus`` on other cores: the broker
    #: and a worker apart on a small machine (``infra/cpu_affinity.py``)
    kafka_cpus: str = ""

    def __post_init__(self) -> None:
        for name in ("kafka_port", "controller_port", "redis_port"):
            port = getattr(self, name)
            if not 1 <= int(port) <= 65535:
                raise ConfigError(f"stack.{name} must be a TCP port (1-65535), got {port}")
        if len({self.kafka_port, self.controller_port, self.redis_port}) != 3:
            raise ConfigError("stack.kafka_port, controller_port and redis_port must differ")
        if not re.fullmatch(r"4\.\d+\.\d+", self.kafka_version):
            raise ConfigError(f"stack.kafka_version must be an Apache Kafka 4.x release, got {self.kafka_version!r}")
        if self.kafka_heap_mb < 128:
            raise ConfigError("stack.kafka_heap_mb must be >= 128")
        if self.kafka_young_mb and not 16 <= self.kafka_young_mb <= self.kafka_heap_mb - 256:
            raise ConfigError(f"stack.kafka_young_mb must be 0 (G1 sizes it) or 16 .. kafka_heap_mb - 256 "
                              f"(= {self.kafka_heap_mb - 256}; the old generation needs ~256 MB), got {self.kafka_young_mb}")
        if not self.startup_timeout_s > 0:
            raise ConfigError(f"stack.startup_timeout_s must be > 0, got {self.startup_timeout_s}")
        parse_cpu_list(self.kafka_cpus, "stack.kafka_cpus")


@dataclass(frozen=True)
class LogConfig:
    """Structured logging: ``format`` is ``text`` (humans) or ``json`` (machines)."""

    level: str = "INFO"
    format: str = "text"

    def __post_init__(self) -> None:
        if self.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"log.level must be DEBUG/INFO/WARNING/ERROR/CRITICAL, got {self.level!r}")
        if self.format not in {"text", "json"}:
            raise ConfigError(f"log.format must be 'text' or 'json', got {self.format!r}")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition: ``port`` 0 disables the HTTP endpoint."""

    port: int = 0
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"metrics.port must be 0..65535, got {self.port}")


_NAME = re.compile(r"[A-Za-z0-9._\-]{1,100}")
_TOPIC = re.compile(r"[A-Za-z0-9._\-]{1,249}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Placement knobs of the job scheduler.

    ``memory_headroom``: fraction of each device's total memory never committed (0..0.9, default
    0.05); ``max_chunks_per_device``: concurrent chunks per device (default 4; 0 = unlimited).
    """

    memory_headroom: float = 0.05
    max_chunks_per_device: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.memory_headroom <= 0.9:
            raise ConfigError(f"jobs.memory_headroom must be within 0..0.9, got {self.memory_headroom}")
        if self.max_chunks_per_device < 0:
            raise ConfigError(f"jobs.max_chunks_per_device must be >= 0, got {self.max_chunks_per_device}")


@dataclass(frozen=True)
class AlertThresholds:
    """GPU utilisation (0..1) and memory-used (0..1) thresholds; DLQ growth in records per check."""

    gpu_utilization: float = 0.95
    gpu_memory: float = 0.90
    dlq_growth: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.gpu_utilization <= 1:
            raise ConfigError(f"jobs.gpu_utilization_alert must be within (0, 1], got {self.gpu_utilization}")
        if not 0 < self.gpu_memory <= 1:
            raise ConfigError(f"jobs.gpu_memory_alert must be within (0, 1], got {self.gpu_memory}")
        if self.dlq_growth < 1:
            raise ConfigError(f"jobs.dlq_growth_alert must be >= 1, got {self.dlq_growth}")


@dataclass(frozen=True)
class JobsConfig:
    """The job plane: control app, workers and clients (the ``[jobs]`` section).

    Times in seconds. ``namespace`` prefixes every Redis key (heartbeats, cache, results);
    ``web_host``/``web_port`` are where the control app serves HTTP/WebSocket and where the
    ``jobs``/``job``/``cancel`` commands look for it. ``redis_timeout_s``: socket timeout of every
    Redis call of the control app and workers; ``redis_retry_s``: how long a worker retries Redis
    (with backoff) to start a chunk or store its result before giving up (a finished result is then
    still reported, never lost); ``ws_queue_max``: bound of each WebSocket client's queue, messages
    (drop-oldest, signalled); ``reject_unfit_after_s``: a queued job that no live worker serving its
    kind can ever hold is rejected (with the reason) after this long.
    """

    namespace: str = "mystocks"
    app_id: str = "mystocks-control"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    commands_topic: str = "cmd.jobs"
    status_topic: str = "job.status"
    events_topic: str = "jobs.events"
    alerts_topic: str = "alerts"
    dispatch_prefix: str = "jobs.dispatch."
    market_data_topic: str = "md.ticks"
    calc_result_topic: str = "features.ticks"
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 5.0
    tick_interval_s: float = 0.5
    cache_ttl_s: float = 86_400.0
    result_ttl_s: float = 7 * 86_400.0
    progress_interval_s: float = 0.2
    dlq_check_interval_s: float = 30.0
    gpu_utilization_alert: float = 0.95
    gpu_memory_alert: float = 0.90
    dlq_growth_alert: int = 100
    memory_headroom: float = 0.05
    max_chunks_per_device: int = 4
    redis_timeout_s: float = 2.0
    redis_retry_s: float = 300.0
    ws_queue_max: int = 1000
    reject_unfit_after_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.redis_timeout_s <= 60 or not 0 <= self.redis_retry_s <= 86_400:
            raise ConfigError("jobs.redis_timeout_s must be within (0, 60] and jobs.redis_retry_s within 0..86400")
        if not 0 <= self.reject_unfit_after_s <= 86_400:
            raise ConfigError(f"jobs.reject_unfit_after_s must be within 0..86400, got {self.reject_unfit_after_s}")
        if self.ws_queue_max < 1:
            raise ConfigError(f"jobs.ws_queue_max must be >= 1, got {self.ws_queue_max}")
        for name in ("namespace", "app_id"):
            if not _NAME.fullmatch(getattr(self, name)):
                raise ConfigError(f"jobs.{name} must be 1-100 characters of A-Z a-z 0-9 . _ -, got {getattr(self, name)!r}")
        for name in ("commands_topic", "status_topic", "events_topic", "alerts_topic", "dispatch_prefix",
                     "market_data_topic", "calc_result_topic"):
            if not _TOPIC.fullmatch(getattr(self, name)):
                raise ConfigError(f"jobs.{name} must be a Kafka topic name (A-Z a-z 0-9 . _ -), got {getattr(self, name)!r}")
        if not self.web_host:
            raise ConfigError("jobs.web_host must not be empty")
        if not 0 <= self.web_port <= 65535:
            raise ConfigError(f"jobs.web_port must be 0..65535, got {self.web_port}")
        if not self.heartbeat_interval_s > 0:
            raise ConfigError(f"jobs.heartbeat_interval_s must be > 0, got {self.heartbeat_interval_s}")
        if not self.heartbeat_ttl_s > self.heartbeat_interval_s:
            raise ConfigError(f"jobs.heartbeat_ttl_s ({self.heartbeat_ttl_s}) must exceed jobs.heartbeat_interval_s "
                              f"({self.heartbeat_interval_s})")
        for name in ("tick_interval_s", "dlq_check_interval_s", "result_ttl_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"jobs.{name} must be > 0, got {getattr(self, name)}")
        for name in ("progress_interval_s", "cache_ttl_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"jobs.{name} must be >= 0, got {getattr(self, name)}")
        self.scheduler()
        self.thresholds()

    def scheduler(self) -> SchedulerConfig:
        """The scheduler's knobs."""
        return SchedulerConfig(self.memory_headroom, self.max_chunks_per_device)

    def thresholds(self) -> AlertThresholds:
        """Alert thresholds."""
        return AlertThresholds(self.gpu_utilization_alert, self.gpu_memory_alert, self.dlq_growth_alert)

    def dispatch_topic(self, worker_id: str) -> str:
        """The dispatch topic a worker consumes: ``jobs.dispatch.<namespace>.<worker_id>``."""
        return f"{self.dispatch_prefix}{self.namespace}.{worker_id}"

    @property
    def url(self) -> str:
        """Base URL of the control app's web server."""
        return f"http://{self.web_host}:{self.web_port}"


@dataclass(frozen=True)
class FeaturesConfig:
    """The real-time features pipeline (``run features``; the ``[features]`` section). Times in seconds.

    ``features``: names to output (``["all"]`` = every feature; the names are listed by
    ``mystocks-gpu run features --help``), ``ema_spans``, ``window_ticks`` (N of the trade-count
    windows), ``window_s`` (W of ``time_mean``/``time_std``), ``max_window_ticks``, ``rsi_period``,
    ``macd`` (fast, slow, signal), ``bollinger_k``, ``rvol_annualization``, ``session_offset_s``
    (VWAP session boundary after UTC midnight; unset = no reset); bars: ``bar_intervals_s`` (each a
    whole number of ms; topic ``md.bars.<label>``, e.g. md.bars.1s, md.bars.5m), ``allowed_lateness_s``
    (a bar closes once its symbol's event time passes its end by this much); ``max_disorder_s`` (a
    trade stamped up to this far behind its symbol's last trade is used at that trade's time, one
    further back goes to the DLQ); ``idle_close_s`` (close every open bar of a partition whose event
    time has not advanced for this long, wall clock; 0 = never) and ``close_on_stop`` (close them on
    a graceful stop). Checked here for types and ranges; names and windows are checked in full when
    the processor is built (``run features``, ``config show``).
    """

    features: tuple[str, ...] = ("all",)
    ema_spans: tuple[int, ...] = (10, 50)
    window_ticks: int = 20
    window_s: float = 1.0
    max_window_ticks: int = 512
    rsi_period: int = 14
    macd: tuple[int, ...] = (12, 26, 9)
    bollinger_k: float = 2.0
    rvol_annualization: float | None = None
    session_offset_s: float | None = None
    bar_intervals_s: tuple[float, ...] = (1.0, 60.0)
    allowed_lateness_s: float = 0.0
    max_disorder_s: float = 0.0
    idle_close_s: float = 0.0
    close_on_stop: bool = True

    def __post_init__(self) -> None:
        for name in ("features", "ema_spans", "macd", "bar_intervals_s"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.features:
            raise ConfigError("features.features is empty; name at least one feature (or \"all\")")
        if not self.window_s > 0:
            raise ConfigError(f"features.window_s must be > 0, got {self.window_s}")
        for name in ("allowed_lateness_s", "max_disorder_s", "idle_close_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"features.{name} must be >= 0, got {getattr(self, name)}")
        if any(not x > 0 for x in self.bar_intervals_s):
            raise ConfigError(f"features.bar_intervals_s must all be > 0, got {list(self.bar_intervals_s)}")
        if self.session_offset_s is not None and not 0 <= self.session_offset_s < 86_400:
            raise ConfigError(f"features.session_offset_s must be within [0, 86400), got {self.session_offset_s}")


@dataclass(frozen=True)
class ApiConfig:
    """Security of the HTTP/WebSocket (and gRPC) API (the ``[api]`` section; see ``infra.api_tokens``).

    Server side: ``auth_file`` -- the token database (JSON, SHA-256 digests only; made with
    ``mystocks-gpu auth add``); when set, every endpoint but ``/health`` needs ``Authorization: Bearer``
    with a role (``submit``, ``read``, ``admin``). ``allowed_origins`` -- comma-separated origins
    (``https://dash.example:443``) a browser may call from; any other ``Origin`` is refused (requests
    without one, e.g. the CLI, are fine). ``tls_cert_file``/``tls_key_file`` -- serve HTTPS/WSS.
    ``max_body_bytes`` -- largest request body; ``max_ws_message_bytes`` -- largest WebSocket
    message from a client; ``submit_rate_per_s``/``submit_burst`` -- job submissions per token
    (token bucket). Client side: ``token`` -- the bearer token the CLI sends; ``tls_ca_file`` -- the
    CA that signed the server's certificate (also switches the CLI to https).
    """

    auth_file: str | None = None
    allowed_origins: str = ""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    token: str | None = None
    max_body_bytes: int = 1 << 20
    max_ws_message_bytes: int = 64 << 10
    submit_rate_per_s: float = 5.0
    submit_burst: int = 20

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("api.tls_cert_file and api.tls_key_file go together")
        for o in self.origins():
            parts = urlsplit(o)
            if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path not in {"", "/"}:
                raise ConfigError(f"api.allowed_origins: {o!r} is not an origin (scheme://host[:port])")
        if not 1024 <= self.max_body_bytes <= 1 << 30 or not 1024 <= self.max_ws_message_bytes <= 1 << 30:
            raise ConfigError("api.max_body_bytes and api.max_ws_message_bytes must be within 1024..2**30")
        if not self.submit_rate_per_s > 0 or self.submit_burst < 1:
            raise ConfigError("api.submit_rate_per_s must be > 0 and api.submit_burst >= 1")

    def origins(self) -> tuple[str, ...]:
        """The allowed origins, normalised (lower case, no trailing slash)."""
        return tuple(o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip())

    @property
    def tls(self) -> bool:
        """True when the server serves TLS (or, client side, expects it)."""
        return self.tls_cert_file is not None or self.tls_ca_file is not None


@dataclass(frozen=True)
class GatewayConfig:
    """The gRPC gateway (the ``[gateway]`` section; ``mystocks-gpu gateway``; auth and TLS are the
    ``[api]`` section's).

    ``host``/``port``: where it listens (loopback by default; port 0 = any free one).
    ``stream_queue_max``: batches queued per market-data/feature stream before its Kafka consumer
    waits (flow control: a slow client's backlog stays in Kafka); ``stream_prefetch_kbytes``:
    librdkafka's prefetch per stream consumer, KiB; ``watch_queue_max``: statuses queued per
    ``WatchTask`` before that stream is closed with RESOURCE_EXHAUSTED; ``history_max``: statuses
    kept per job; ``max_message_bytes``: largest gRPC message; ``backtest_kind`` ..
    ``execution_kind``: the job kind each service submits; ``features_topic``: what the feature
    calls read.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    stream_queue_max: int = 8
    stream_prefetch_kbytes: int = 4096
    watch_queue_max: int = 1000
    history_max: int = 256
    max_message_bytes: int = 16 << 20
    backtest_kind: str = "backtest"
    training_kind: str = "train"
    factor_kind: str = "factors"
    risk_kind: str = "risk"
    execution_kind: str = "execsim"
    features_topic: str = "features.ticks"

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("gateway.host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"gateway.port must be 0..65535, got {self.port}")
        for name, lo, hi in (("stream_queue_max", 1, 10_000), ("stream_prefetch_kbytes", 64, 1 << 20),
                             ("watch_queue_max", 1, 1_000_000), ("history_max", 2, 100_000),
                             ("max_message_bytes", 1 << 16, 1 << 30)):
            if not lo <= getattr(self, name) <= hi:
                raise ConfigError(f"gateway.{name} must be within {lo}..{hi}, got {getattr(self, name)}")
        for name in ("backtest_kind", "training_kind", "factor_kind", "risk_kind", "execution_kind"):
            if not _NAME.fullmatch(getattr(self, name)):
                raise ConfigError(f"gateway.{name} must be a job kind name, got {getattr(self, name)!r}")
        if not _TOPIC.fullmatch(self.features_topic):
            raise ConfigError(f"gateway.features_topic must be a Kafka topic name, got {self.features_topic!r}")


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one process."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    schema_registry: SchemaRegistryConfig = field(default_factory=SchemaRegistryConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    #: array backend: ``auto`` (GPU when CuPy and a CUDA device are present), ``cpu`` or ``gpu``
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in {"auto", "cpu", "gpu"}:
            raise ConfigError(f"backend must be auto, cpu or gpu, got {self.backend!r}")

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with every secret replaced by ``***`` (safe to print/log)."""
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) and k != "kafka"
                     else v) for k, v in plain.items()}
        plain["kafka"] = _kafka_plain(self.kafka)
        return _mask(plain)


def _kafka_plain(k: KafkaConfig) -> dict[str, Any]:
    d = {f.name: getattr(k, f.name) for f in dataclasses.fields(k)}
    d["security"] = dict(k.security)
    return d


def _mask(obj: Any, key: str = "") -> Any:
    if isinstance(obj, Mapping):
        return {k: _mask(v, k) for k, v in obj.items()}
    if isinstance(obj, str):
        if is_secret_key(key):
            return MASK
        if "://" in obj:
            return mask_url(obj)
    return obj


_SECTIONS: dict[str, type] = {
    "kafka": KafkaConfig,
    "redis": RedisConfig,
    "schema_registry": SchemaRegistryConfig,
    "stack": StackConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
    "jobs": JobsConfig,
    "features": FeaturesConfig,
    "api": ApiConfig,
    "gateway": GatewayConfig,
    "services": ServicesConfig,
}
_TOP_LEVEL = {"backend"}


class _EnvStr(str):
    """A value from an environment variable: text to parse (a TOML string is never parsed)."""


_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}


def _coerce(cls: type, key: str, value: Any, where: str) -> Any:
    """Check a TOML/env value against the field's declared type and convert it.

    Environment values arrive as strings and are parsed; TOML values must already have the right
    type (``5`` is not a string, ``1.5`` or ``true`` is not an integer). Numbers must be finite.
    Raises :class:`ConfigError` naming ``where`` (``section.key``).
    """
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    t = str(hints[key])
    if key == "security":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: must be a table of librdkafka properties")
        out = {}
        for k, v in value.items():
            if isinstance(v, Mapping) or isinstance(v, list):
                raise ConfigError(f"{where}.{k}: expected a string, number or boolean, got {type(v).__name__}")
            out[k] = str(v).lower() if isinstance(v, bool) else str(v)
        return out
    optional = t.endswith("| None")
    base = t.replace(" | None", "").strip()
    if value is None and optional:
        return None
    if base.startswith("tuple["):  # tuple[T, ...]: a TOML array, or a comma-separated env / CLI string
        elem = base[len("tuple["):].split(",")[0].strip()
        if isinstance(value, _EnvStr):
            items: list[Any] = [_EnvStr(x) for x in value.split(",") if x.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"{where}: expected a list of {_TYPE_WORDS.get(elem, elem)}s, got {value!r}")
        return tuple(_check_scalar(elem, x, f"{where}[{i}]") for i, x in enumerate(items))
    return _check_scalar(base, value, where)


def _check_scalar(base: str, value: Any, where: str) -> Any:
    """``value`` as type ``base`` (``str``/``int``/``float``/``bool``); strings are parsed for the others."""
    def bad() -> ConfigError:
        shown = value if not isinstance(value, (Mapping, list)) else type(value).__name__
        return ConfigError(f"{where}: expected {_TYPE_WORDS.get(base, base)}, got {shown!r}")

    if base == "str":
        if not isinstance(value, str):
            raise bad()
        return str(value).strip() if isinstance(value, _EnvStr) else str(value)
    if isinstance(value, _EnvStr):  # from the environment
        text = value.strip()
        try:
            if base == "int":
                return int(text)
            if base == "float":
                value = float(text)
            elif base == "bool":
                if text.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                    raise ValueError(text)
                return text.lower() in {"1", "true", "yes"}
        except ValueError:
            raise bad() from None
    if base == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    return value


def _build(cls: type, section: str, data: Mapping[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(cls, k, v, f"{section}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong value types that __post_init__ could not catch
        raise ConfigError(f"[{section}]: {exc}") from None


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_RESERVED:
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if len(parts) == 1:
            if parts[0] not in _TOP_LEVEL:
                raise ConfigError(
                    f"unknown environment variable {name}: use MYSTOCKS_<SECTION>__<KEY>, "
                    f"sections: {', '.join(_SECTIONS)}"
                )
            tree[parts[0]] = _EnvStr(value)
        elif len(parts) == 2:
            tree.setdefault(parts[0], {})[parts[1]] = _EnvStr(value)
        elif len(parts) == 3 and parts[:2] == ["kafka", "security"]:
            tree.setdefault("kafka", {}).setdefault("security", {})[parts[2].replace("_", ".")] = str(value)
        else:
            raise ConfigError(f"unknown environment variable {name}")
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def with_section(settings: Settings, section: str, values: Mapping[str, str]) -> Settings:
    """``settings`` with some keys of one section replaced by command-line values (strings, parsed
    like environment variables: ``"1,60"`` for a list); :class:`ConfigError` names ``section.key``."""
    current = getattr(settings, section)
    data = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
    data.update({k: _EnvStr(v) for k, v in values.items()})
    return dataclasses.replace(settings, **{section: _build(_SECTIONS[section], section, data)})


def _derive_local_clients(data: dict[str, Any]) -> dict[str, Any]:
    """Point the clients at the local stack when they are not configured: ``kafka.bootstrap_servers``
    = ``stack.host:stack.kafka_port`` and ``redis.url`` = ``redis://stack.host:stack.redis_port/0``
    unless set (file, environment or overrides). Moving the stack's ports moves its clients too."""
    stack_data = data.get("stack")
    if stack_data is None:
        return data
    if not isinstance(stack_data, Mapping):
        raise ConfigError("[stack] must be a table")
    stack = _build(StackConfig, "stack", stack_data)
    host = f"[{stack.host}]" if ":" in stack.host else stack.host
    out = dict(data)
    for section, key, value in (("kafka", "bootstrap_servers", f"{host}:{stack.kafka_port}"),
                                ("redis", "url", f"redis://{host}:{stack.redis_port}/0")):
        given = out.get(section, {})
        if isinstance(given, Mapping) and key not in given:
            out[section] = {**given, key: value}
    return out


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file, the environment and CLI ``overrides``.

    Raises :class:`ConfigError` naming the file, section or variable at fault.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    file = Path(path) if path else (Path(environ["MYSTOCKS_CONFIG"]) if environ.get("MYSTOCKS_CONFIG") else None)
    if file is None and Path("mystocks.toml").is_file():
        file = Path("mystocks.toml")
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    data = _merge(data, _env_tree(environ))
    if overrides:
        data = _merge(data, overrides)
    data = _derive_local_clients(data)
    unknown = sorted(set(data) - set(_SECTIONS) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)} (known: {', '.join([*_SECTIONS, *_TOP_LEVEL])})")
    kwargs: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        if section in data:
            if not isinstance(data[section], Mapping):
                raise ConfigError(f"[{section}] must be a table")
            kwargs[section] = _build(cls, section, data[section])
    for key in _TOP_LEVEL:
        if key in data:
            kwargs[key] = _coerce(Settings, key, data[key], key)
    return Settings(**kwargs)
