"""Configuration of one streaming worker (batching, delivery guarantee, timeouts)."""

from __future__ import annotations

from dataclasses import dataclass

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.streams.fault_injection import FaultPlan

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
    #: open transactions of a dead worker block read_committed readers this long at most; a broker
    #: outage longer than this makes the coordinator abort (and fence) the live worker's transaction,
    #: which the worker survives by re-initialising its producer (see ``max_producer_recoveries``)
    transaction_timeout_ms: int = 10_000
    #: how many self-inflicted fences (transaction timed out) a worker run recovers from
    max_producer_recoveries: int = 10
    session_timeout_ms: int = 6_000
    #: generous so a broker restart (a minute on a small machine) does not evict the worker
    max_poll_interval_ms: int = 300_000
    #: backpressure: while the producer holds more unacknowledged output records than this, every
    #: assigned partition is paused (resumed below half of it)
    max_buffered_records: int = 50_000
    #: how long a produce may wait for room in a full producer queue before the batch aborts (s)
    produce_block_timeout_s: float = 60.0
    #: timeout of one send_offsets / commit / abort call (s); retriable errors are retried with backoff
    commit_timeout_s: float = 30.0
    #: how often the consumer-lag gauges are refreshed (s)
    lag_interval_s: float = 2.0
    #: deliberate abortable failures for fault-tolerance tests (see ``streams/fault_injection.py``); "" = off
    fault_injection: str = ""
    #: attempts to restore a partition's state when the changelog's leader is not ready (e.g. just created)
    restore_attempts: int = 10
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
        if self.max_producer_recoveries < 0:
            raise ConfigError("max_producer_recoveries must be >= 0")
        if self.max_buffered_records < 1:
            raise ConfigError("max_buffered_records must be >= 1")
        for name in ("produce_block_timeout_s", "commit_timeout_s", "lag_interval_s"):
            v = getattr(self, name)
            if not v > 0 or v != v:
                raise ConfigError(f"{name} must be > 0, got {v}")
        FaultPlan.parse(self.fault_injection)
        if self.restore_attempts < 1:
            raise ConfigError("restore_attempts must be >= 1")

    @property
    def exactly_once(self) -> bool:
        """True for transactional consume-process-produce."""
        return self.guarantee == EXACTLY_ONCE
