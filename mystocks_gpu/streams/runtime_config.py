"""Configuration of one streaming worker (batching, delivery guarantee, timeouts)."""

from __future__ import annotations

from dataclasses import dataclass

from mystocks_gpu.exceptions import ConfigError

EXACTLY_ONCE = "exactly_once"
AT_LEAST_ONCE = "at_least_once"


@dataclass(frozen=True)
class RuntimeConfig:
    """How a worker cuts micro-batches and commits them.

    A batch closes on ``max_records``, ``max_bytes`` (sum of value sizes) or ``linger_ms`` counted from
    its first record, whichever comes first. With ``exactly_once`` each transaction covers the
    batches of ``commit_interval_ms`` (0 = one transaction per batch); with ``at_least_once`` offsets
    are committed after the outputs are acknowledged, every ``commit_interval_ms``. The default,
    100 ms, is Kafka Streams' exactly-once default: read_committed consumers see outputs at most that
    much later, and the state changelog is written once per commit, not per batch.
    """

    max_records: int = 5000
    max_bytes: int = 4 * 1024 * 1024
    linger_ms: float = 20.0
    guarantee: str = EXACTLY_ONCE
    commit_interval_ms: float = 100.0
    #: open transactions of a dead worker block read_committed readers this long at most
    transaction_timeout_ms: int = 10_000
    session_timeout_ms: int = 6_000
    #: generous so a broker restart (a minute on a small machine) does not evict the worker
    max_poll_interval_ms: int = 300_000
    #: at most this many records wait in the local buffer before partitions are paused
    max_buffered_records: int = 50_000
    #: consumer protocol: "classic" (cooperative-sticky assignor) or "consumer" (KIP-848)
    group_protocol: str = "classic"

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_bytes < 1:
            raise ConfigError("max_records and max_bytes must be >= 1")
        if self.linger_ms < 0 or self.commit_interval_ms < 0:
            raise ConfigError("linger_ms and commit_interval_ms must be >= 0")
        if self.guarantee not in (EXACTLY_ONCE, AT_LEAST_ONCE):
            raise ConfigError(f"guarantee must be {EXACTLY_ONCE} or {AT_LEAST_ONCE}")
        if self.group_protocol not in ("classic", "consumer"):
            raise ConfigError("group_protocol must be classic or consumer")
        if self.transaction_timeout_ms < 1000:
            raise ConfigError("transaction_timeout_ms must be >= 1000")

    @property
    def exactly_once(self) -> bool:
        """True for transactional consume-process-produce."""
        return self.guarantee == EXACTLY_ONCE
