"""Settings of the optional servers of the local stack (the ``[services]`` section): PostgreSQL, the
Kafka Connect worker and Prometheus, started by ``mystocks-gpu stack up --with postgres,connect,prometheus``,
and where clients (``mystocks-gpu connect ...``, the connector configs) find them.

Ports are on ``stack.host``. Times in seconds, heaps in MiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from mystocks_gpu.exceptions import ConfigError

#: the optional components ``stack up --with`` accepts
OPTIONAL_COMPONENTS = ("postgres", "connect", "prometheus")


@dataclass(frozen=True)
class ServicesConfig:
    """PostgreSQL (the Connect sinks' database), the Connect worker and Prometheus.

    ``postgres_*``: the server's port, the database/user/password the stack creates and the JDBC
    sinks write with (the password is masked in ``config show``). ``connect_port``: the Connect
    REST API; ``connect_url`` overrides where the ``connect`` commands send requests (default
    ``http://<stack.host>:<connect_port>``); ``connect_group``: the worker's group id (its internal
    topics are ``<group>.configs|offsets|status``); ``connect_heap_mb``: the worker's JVM heap;
    ``debezium_version`` / ``postgres_jdbc_version``: the JDBC sink connector and driver resolved
    from Maven Central. ``prometheus_port``: the Prometheus server; ``scrape_interval_s``: how often
    it scrapes; ``scrape_targets``: comma-separated ``host:port`` metrics endpoints it scrapes (more
    can be dropped as file_sd JSON into ``<stack.home>/prometheus/targets/``).
    """

    postgres_port: int = 15432
    postgres_db: str = "mystocks"
    postgres_user: str = "mystocks"
    postgres_password: str = "mystocks"
    connect_port: int = 18083
    connect_url: str | None = None
    connect_group: str = "mystocks-connect"
    connect_heap_mb: int = 384
    debezium_version: str = "3.3.1.Final"
    postgres_jdbc_version: str = "42.7.8"
    prometheus_port: int = 19090
    scrape_interval_s: float = 5.0
    scrape_targets: str = ""

    def __post_init__(self) -> None:
        for name in ("postgres_port", "connect_port", "prometheus_port"):
            port = getattr(self, name)
            if not 1 <= int(port) <= 65535:
                raise ConfigError(f"services.{name} must be a TCP port (1-65535), got {port}")
        if len({self.postgres_port, self.connect_port, self.prometheus_port}) != 3:
            raise ConfigError("services.postgres_port, connect_port and prometheus_port must differ")
        for name in ("postgres_db", "postgres_user"):
            if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", getattr(self, name)):
                raise ConfigError(f"services.{name} must be a lower-case SQL identifier, got {getattr(self, name)!r}")
        if not self.postgres_password or "'" in self.postgres_password:
            raise ConfigError("services.postgres_password must be non-empty and contain no single quote")
        if not re.fullmatch(r"[A-Za-z0-9._\-]{1,100}", self.connect_group):
            raise ConfigError(f"services.connect_group must be 1-100 characters of A-Z a-z 0-9 . _ -, got {self.connect_group!r}")
        if self.connect_url is not None and urlsplit(self.connect_url).scheme not in {"http", "https"}:
            raise ConfigError(f"services.connect_url must be http(s)://..., got {self.connect_url!r}")
        if self.connect_heap_mb < 128:
            raise ConfigError("services.connect_heap_mb must be >= 128")
        if not re.fullmatch(r"\d+\.\d+\.\d+(\.Final)?", self.debezium_version):
            raise ConfigError(f"services.debezium_version must look like 3.3.1.Final, got {self.debezium_version!r}")
        if not re.fullmatch(r"\d+\.\d+\.\d+", self.postgres_jdbc_version):
            raise ConfigError(f"services.postgres_jdbc_version must look like 42.7.8, got {self.postgres_jdbc_version!r}")
        if not 0.1 <= self.scrape_interval_s <= 3600:
            raise ConfigError(f"services.scrape_interval_s must be within 0.1..3600, got {self.scrape_interval_s}")
        for t in self.targets():
            if not re.fullmatch(r"[\w.\-\[\]:]+:\d+", t):
                raise ConfigError(f"services.scrape_targets must be host:port[,host:port...], got {t!r}")

    def targets(self) -> list[str]:
        """The static scrape targets, ``host:port`` each."""
        return [t.strip() for t in self.scrape_targets.split(",") if t.strip()]

    def connect_rest(self, host: str) -> str:
        """Base URL of the Connect REST API."""
        return (self.connect_url or f"http://{host}:{self.connect_port}").rstrip("/")


def parse_with(text: str) -> tuple[str, ...]:
    """``"connect,prometheus"`` -> the components in start order; ``connect`` brings ``postgres``
    (its sinks' database). Unknown names are a :class:`ConfigError` listing the known ones."""
    asked = {w.strip() for w in text.split(",") if w.strip()}
    unknown = sorted(asked - set(OPTIONAL_COMPONENTS))
    if unknown:
        raise ConfigError(f"stack --with: unknown component(s) {', '.join(unknown)} "
                          f"(known: {', '.join(OPTIONAL_COMPONENTS)})")
    if "connect" in asked:
        asked.add("postgres")
    return tuple(c for c in OPTIONAL_COMPONENTS if c in asked)
