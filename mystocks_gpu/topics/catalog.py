"""The topic catalog: every topic of the system, once.

Each :class:`TopicSpec` names the topic, its key, its value schema, partitions, cleanup policy and
retention, and whether it has a dead-letter twin (``<name>.dlq``: same key, raw original bytes, the
error in headers). State changelog topics are derived per processor by :func:`changelog_topic`.

Retention of event-time topics: market-data records carry their *event* time as the Kafka
timestamp (so replays can seek with ``offsets_for_times``). Kafka's time-based retention compares
those timestamps with the wall clock, so loaded history (event times months ago) would be deleted
within minutes. Those topics therefore keep records by size (``retention.bytes`` per partition),
never by time; wall-clock topics (jobs, alerts) use time retention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mystocks_gpu.topics.exceptions import UnknownTopic

DAY_MS = 86_400_000
GIB = 1 << 30
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicSpec:
    """One topic's contract. ``schema`` is the Avro full name of the value (None = raw bytes)."""

    name: str
    key: str
    schema: str | None
    partitions: int = 4
    cleanup: str = "delete"  # "delete" | "compact"
    #: time retention (-1 = none). Default none: most topics carry event-time timestamps
    retention_ms: int = -1
    #: per-partition size bound (-1 = none); event-time topics are bounded by size, not time
    retention_bytes: int = GIB
    dlq: bool = True
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def dlq_name(self) -> str | None:
        """Name of the dead-letter twin, or None."""
        return self.name + DLQ_SUFFIX if self.dlq else None

    def config(self) -> dict[str, str]:
        """Topic-level Kafka configs that ``topics create`` sets and drift checks compare."""
        conf = {"cleanup.policy": self.cleanup, "retention.ms": str(self.retention_ms),
                "retention.bytes": str(self.retention_bytes)}
        if self.cleanup == "compact":
            conf["retention.ms"] = "-1"
        conf.update(self.extra)
        return conf

    def dlq_spec(self) -> TopicSpec | None:
        """The DLQ twin's spec: raw bytes, 1 partition, 14 days."""
        if not self.dlq:
            return None
        return TopicSpec(self.dlq_name or "", self.key, None, partitions=1, retention_ms=-1, retention_bytes=GIB,
                         dlq=False, description=f"dead letters of {self.name}")


def _event_time(name: str, schema: str, description: str, gib: int = 1, **kw: object) -> TopicSpec:
    """A topic whose record timestamps are event times: size-bounded, never time-bounded."""
    return TopicSpec(name, "symbol", schema, retention_ms=-1, retention_bytes=gib * GIB,
                     description=description, **kw)  # type: ignore[arg-type]


CATALOG: tuple[TopicSpec, ...] = (
    _event_time("md.ticks", "mystocks.md.Tick", "trades and quotes, interleaved", gib=4),
    _event_time("md.trades", "mystocks.md.Trade", "trade prints"),
    _event_time("md.quotes", "mystocks.md.Quote", "top-of-book quotes"),
    _event_time("md.bars.1s", "mystocks.md.Bar", "1-second OHLCV bars"),
    _event_time("md.bars.1m", "mystocks.md.Bar", "1-minute OHLCV bars"),
    _event_time("md.bars.1d", "mystocks.md.Bar", "daily OHLCV bars (history)"),
    _event_time("features.ticks", "mystocks.features.FeatureVector", "per-tick feature vectors", gib=4),
    _event_time("agg.running", "mystocks.streams.RunningAggregate", "built-in per-key running count/sum/last"),
    TopicSpec("orders.parent", "order_id", "mystocks.execution.ParentOrder",
              description="parent orders to schedule (+ MarketParams broadcast to every partition, key = symbol)"),
    TopicSpec("orders.schedule", "order_id", "mystocks.execution.OrderSchedule",
              description="child-slice schedules of parent orders (execution processor)"),
    TopicSpec("orders.scored", "order_id", "mystocks.execution.OrderScore",
              description="pre-trade cost scores of parent orders (execution processor)"),
    TopicSpec("execution.params", "symbol", "mystocks.execution.MarketParams", partitions=1, cleanup="compact",
              dlq=False, description="latest execution market parameters per symbol (compacted)"),
    TopicSpec("cmd.jobs", "job_id", "mystocks.jobs.JobCommand", partitions=1, retention_ms=7 * DAY_MS,
              description="job commands (submit/cancel)"),
    TopicSpec("job.status", "job_id", "mystocks.jobs.TaskStatus", partitions=1, cleanup="compact",
              dlq=False, description="latest state per job (compacted)"),
    TopicSpec("jobs.events", "job_id", "mystocks.jobs.TaskStatus", partitions=1, retention_ms=DAY_MS, dlq=False,
              description="workers' progress/result reports to the control app (attempt/chunk in headers)"),
    TopicSpec("results.backtest", "job_id", "mystocks.backtest.BacktestResult", partitions=1,
              retention_ms=30 * DAY_MS, dlq=False, extra={"max.message.bytes": "8388608"},
              description="backtest results, chunked"),
    TopicSpec("results.execsim", "job_id", "mystocks.execution.ExecSimResult", partitions=1,
              retention_ms=30 * DAY_MS, dlq=False, extra={"max.message.bytes": "8388608"},
              description="execsim job rows (order x strategy: realised vs expected shortfall)"),
    TopicSpec("alerts", "source", "mystocks.ops.Alert", partitions=1, retention_ms=7 * DAY_MS, dlq=False,
              description="operational and risk alerts"),
)


def all_specs(include_dlq: bool = True) -> list[TopicSpec]:
    """Every catalog topic, DLQ twins after their source topics when ``include_dlq``."""
    out: list[TopicSpec] = []
    for spec in CATALOG:
        out.append(spec)
        twin = spec.dlq_spec()
        if include_dlq and twin is not None:
            out.append(twin)
    return out


def get(name: str) -> TopicSpec:
    """The spec of a catalog topic (DLQ twins included); :class:`UnknownTopic` lists known ones."""
    for spec in all_specs():
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in CATALOG)
    raise UnknownTopic(f"unknown topic {name!r}; known topics: {known} (each with a .dlq twin where it has one)")


def changelog_topic(processor: str, group: str, partitions: int) -> TopicSpec:
    """The compacted state changelog of ``processor`` in consumer ``group``, co-partitioned with its input."""
    return TopicSpec(f"{group}.{processor}.changelog", "partition", None, partitions=partitions,
                     cleanup="compact", dlq=False, description=f"state changelog of {processor}",
                     extra={"min.compaction.lag.ms": "0", "segment.ms": "600000"})
