"""Configuration of one streaming worker (batching, delivery guarantee, timeouts)."""

from __future__ import annotations

from dataclasses import dataclass

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.streams.columnar_io import AUTO, RECORD_IO_MODES
from mystocks_gpu.streams.fault_injection import FaultPlan

EXACTLY_ONCE = "exactly_once"
AT_LEAST_ONCE = "at_least_once"
ADAPTIVE = "adaptive"
LINGER = "linger"
#: the catch-up commit interval when none is set, ms (see ``RuntimeConfig.catch_up_commit_interval_ms``)
DEFAULT_CATCH_UP_MS = 1000.0


@dataclass(frozen=True)
class RuntimeConfig:
    """How a worker cuts micro-batches and commits them.

    Batching (``batching``): ``adaptive`` (default) closes a batch at ``max_records`` / ``max_bytes``
    or as soon as the consumer has handed over everything that has arrived, so batch size follows
    the arrival rate (a few records when quiet, up to ``max_records`` under load) and no record
    waits for a linger deadline; ``linger`` closes on ``max_records``, ``max_bytes`` (sum of value
    sizes) or ``linger_ms`` counted from the batch's first record, whichever comes first
    (``linger_ms`` applies only to this mode).

    Commits: with ``exactly_once`` each transaction covers the batches of ``commit_interval_ms``
    (0 = one transaction per batch; the interval runs from the start of the previous commit, as in
    Kafka Streams, less the mean time of recent commits, at most a quarter of the interval: the records
    that arrive while a commit runs wait one interval in all, not an interval and a commit; sooner
    when the transaction's oldest record would otherwise be visible more than the interval after
    its Kafka timestamp after a slow commit (the mean commit time plus three mean deviations), never
    under half the interval: ``streams/commit_head_start.py``); with
    ``at_least_once`` a commit is cut every ``commit_interval_ms`` and its offsets are committed
    once its outputs are acknowledged, without stalling the loop (see
    ``streams/commit_protocol.py``). The default, 100 ms, is Kafka Streams' exactly-once default.
    The latency trade-off: read_committed consumers see an exactly-once output only when its
    transaction commits, so its latency is about one commit interval from its timestamp (a
    transaction starts early by its expected commit time and by its oldest record's lateness, a few
    ms: that many per cent more transactions); a shorter
    interval lowers that bound but costs a transaction (several broker round trips, markers on
    every output partition, a changelog write per touched key) per interval. At-least-once outputs
    are visible as soon as the broker has them (``producer_linger_ms`` + a round trip); the commit
    interval then only bounds how much input is re-processed (and its outputs duplicated) after a
    crash.
    """

    max_records: int = 5000
    max_bytes: int = 4 * 1024 * 1024
    #: bounded memory per record: a record whose key + value exceed this many bytes goes to the DLQ
    #: (``RecordTooLarge``) before any decoding (the consumer's fetch sizes bound a batch's memory)
    max_record_bytes: int = 1024 * 1024
    linger_ms: float = 20.0
    guarantee: str = EXACTLY_ONCE
    commit_interval_ms: float = 100.0
    #: catch-up: while the worker is behind (its last batch closed full: more input was waiting), a
    #: commit falls due after this many ms instead of ``commit_interval_ms``, so a backlog (a restart,
    #: a burst, a replay) drains with fewer transactions; back to ``commit_interval_ms`` at the first
    #: batch that drains the input, so a worker that keeps up keeps the ``commit_interval_ms`` bound.
    #: None (default) = exactly-once: ``DEFAULT_CATCH_UP_MS`` (1 s), capped at half of
    #: ``transaction_timeout_ms``, when that is longer than ``commit_interval_ms``; off otherwise, with
    #: ``commit_interval_ms=0`` (a transaction per batch was asked for) and at-least-once (its commits
    #: do not stall the loop, and a longer interval would only re-process more after a crash).
    #: :attr:`catch_up_ms` is the value in effect; 0 = off.
    #: A set value must be >= ``commit_interval_ms`` and at most half of ``transaction_timeout_ms``
    catch_up_commit_interval_ms: float | None = None
    #: ``adaptive`` (close when the input is drained) or ``linger`` (close on ``linger_ms``)
    batching: str = ADAPTIVE
    #: how long the broker may hold a fetch when it has less than ``fetch_min_bytes`` of new data
    #: (consumer ``fetch.wait.max.ms``); with ``fetch_min_bytes`` 1 new data answers a waiting fetch at
    #: once, so this bounds idle wake-ups, not latency
    fetch_wait_max_ms: int = 100
    #: the bytes of new records that answer a waiting fetch (consumer ``fetch.min.bytes``). 1 (default):
    #: the first record, the lowest latency. Larger: the broker holds a fetch until this many bytes
    #: arrived or ``fetch_wait_max_ms`` passed, so a quiet input comes in fewer fetches and batches: less
    #: worker CPU, up to ``fetch_wait_max_ms`` more latency (measured: README, "Fetches: latency or CPU")
    fetch_min_bytes: int = 1
    #: how long the producer may hold outputs to fill a request (librdkafka ``linger.ms`` =
    #: ``queue.buffering.max.ms``); None = 0.5 ms at-least-once (outputs are visible when acknowledged)
    #: and 5 ms exactly-once (outputs become visible at the commit, which flushes anyway)
    producer_linger_ms: float | None = None
    #: close the processor's open state (e.g. bars) of a partition whose input's event time (the
    #: Kafka timestamps) has not advanced for this many seconds of wall time; 0 = never
    idle_flush_s: float = 0.0
    #: close the processor's open state of every owned partition on a graceful stop
    flush_on_stop: bool = False
    #: open transactions of a dead worker block read_committed readers this long at most; a broker
    #: outage longer than this makes the coordinator abort (and fence) the live worker's transaction,
    #: which the worker survives by re-initialising its producer (see ``max_producer_recoveries``)
    transaction_timeout_ms: int = 10_000
    #: how many self-inflicted fences (transaction timed out) a worker run recovers from
    max_producer_recoveries: int = 10
    #: consumer group session timeout (classic protocol): a worker that dies holds its partitions
    #: this long; a worker never assigned a partition waits two of these before an idle exit
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
    #: how records are read and written (``streams/columnar_io.py``): "columnar" (librdkafka straight into
    #: per-field lists, and outputs produced from lists, by the C extension; the worker fails to start
    #: without it), "messages" (confluent-kafka's ``Message`` objects and ``produce()`` calls), "auto"
    #: (columnar when the extension is built)
    record_io: str = AUTO
    #: the CPUs the worker process runs on, every thread of it (``infra/cpu_affinity.py``; ``run
    #: --cpus``); () = wherever the scheduler puts it (default). On a small machine shared with the
    #: broker, the worker on cores of its own and the broker on others cut the latency tail
    cpu_affinity: tuple[int, ...] = ()

    @property
    def catch_up_ms(self) -> float:
        """The catch-up commit interval in effect, ms (0 = off): the set value, or by default (exactly-
        once with a commit interval > 0 only) ``DEFAULT_CATCH_UP_MS`` capped at half the transaction
        timeout, when that is longer than ``commit_interval_ms`` (else off)."""
        c = self.catch_up_commit_interval_ms
        if c is not None:
            return float(c)
        if not self.exactly_once or self.commit_interval_ms == 0:
            return 0.0
        c = min(DEFAULT_CATCH_UP_MS, self.transaction_timeout_ms / 2)
        return c if c > self.commit_interval_ms else 0.0

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_bytes < 1:
            raise ConfigError("max_records and max_bytes must be >= 1")
        if not 64 <= self.max_record_bytes <= 64 << 20:
            raise ConfigError(f"max_record_bytes must be within 64..{64 << 20}, got {self.max_record_bytes}")
        if self.linger_ms < 0 or self.commit_interval_ms < 0:
            raise ConfigError("linger_ms and commit_interval_ms must be >= 0")
        c = self.catch_up_commit_interval_ms
        if c is not None and c != 0 and not (self.commit_interval_ms <= c <= self.transaction_timeout_ms / 2):
            raise ConfigError(f"catch_up_commit_interval_ms must be 0 (off) or within commit_interval_ms "
                              f"({self.commit_interval_ms:g})..transaction_timeout_ms / 2 "
                              f"({self.transaction_timeout_ms / 2:g}), got {c}")
        if self.guarantee not in (EXACTLY_ONCE, AT_LEAST_ONCE):
            raise ConfigError(f"guarantee must be {EXACTLY_ONCE} or {AT_LEAST_ONCE}")
        if self.group_protocol not in ("classic", "consumer"):
            raise ConfigError("group_protocol must be classic or consumer")
        if self.record_io not in RECORD_IO_MODES:
            raise ConfigError(f"record_io must be one of {', '.join(RECORD_IO_MODES)}, got {self.record_io!r}")
        if self.batching not in (ADAPTIVE, LINGER):
            raise ConfigError(f"batching must be {ADAPTIVE} or {LINGER}, got {self.batching!r}")
        if not 0 <= self.fetch_wait_max_ms <= 300_000:
            raise ConfigError(f"fetch_wait_max_ms must be within 0..300000, got {self.fetch_wait_max_ms}")
        if not 1 <= self.fetch_min_bytes <= 100_000_000:  # librdkafka's range
            raise ConfigError(f"fetch_min_bytes must be within 1..100000000, got {self.fetch_min_bytes}")
        if self.producer_linger_ms is not None and not 0 <= self.producer_linger_ms <= 900_000:
            raise ConfigError(f"producer_linger_ms must be within 0..900000, got {self.producer_linger_ms}")
        if not self.idle_flush_s >= 0 or self.idle_flush_s == float("inf"):
            raise ConfigError(f"idle_flush_s must be a finite number >= 0, got {self.idle_flush_s}")
        if self.transaction_timeout_ms < 1000:
            raise ConfigError("transaction_timeout_ms must be >= 1000")
        if not 1000 <= self.session_timeout_ms <= 3_600_000:
            raise ConfigError(f"session_timeout_ms must be within 1000..3600000, got {self.session_timeout_ms}")
        if not self.session_timeout_ms <= self.max_poll_interval_ms <= 86_400_000:  # librdkafka's rule and range
            raise ConfigError(f"max_poll_interval_ms must be within session_timeout_ms ({self.session_timeout_ms})"
                              f"..86400000, got {self.max_poll_interval_ms}")
        if self.max_producer_recoveries < 0:
            raise ConfigError("max_producer_recoveries must be >= 0")
        if self.max_buffered_records < 1:
            raise ConfigError("max_buffered_records must be >= 1")
        for name in ("produce_block_timeout_s", "commit_timeout_s", "lag_interval_s"):
            v = getattr(self, name)
            if not v > 0 or v != v:
                raise ConfigError(f"{name} must be > 0, got {v}")
        if any(not isinstance(c, int) or c < 0 for c in self.cpu_affinity) or len(set(self.cpu_affinity)) != len(self.cpu_affinity):
            raise ConfigError(f"cpu_affinity must be distinct CPU numbers >= 0, got {self.cpu_affinity!r}")
        FaultPlan.parse(self.fault_injection)
        if self.restore_attempts < 1:
            raise ConfigError("restore_attempts must be >= 1")

    @property
    def exactly_once(self) -> bool:
        """True for transactional consume-process-produce."""
        return self.guarantee == EXACTLY_ONCE

    @property
    def output_linger_ms(self) -> float:
        """The producer's ``linger.ms`` (see :attr:`producer_linger_ms`)."""
        if self.producer_linger_ms is not None:
            return float(self.producer_linger_ms)
        return 5.0 if self.exactly_once else 0.5
