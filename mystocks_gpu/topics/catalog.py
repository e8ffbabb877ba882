"""The topic catalog: every topic of the system, once.

Each :class:`TopicSpec` names the topic, its key, its value schema, partitions, cleanup policy and
retention, and whether it has a dead-letter twin (``<name>.dlq``: same key, raw original bytes, the
error in headers). State changelog topics are derived per processor by :func:`changelog_topic`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mystocks_gpu.topics.exceptions import UnknownTopic

DAY_MS = 86_400_000
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicSpec:
    """One topic's contract. ``schema`` is the Avro full name of the value (None = raw bytes)."""

    name: str
    key: str
    schema: str | None
    partitions: int = 4
    cleanup: str = "delete"  # "delete" | "compact"
    retention_ms: int = 7 * DAY_MS  # -1 = forever
    dlq: bool = True
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def dlq_name(self) -> str | None:
        """Name of the dead-letter twin, or None."""
        return self.name + DLQ_SUFFIX if self.dlq else None

    def config(self) -> dict[str, str]:
        """Topic-level Kafka configs that ``topics create`` sets and drift checks compare."""
        conf = {"cleanup.policy": self.cleanup, "retention.ms": str(self.retention_ms)}
        if self.cleanup == "compact":
            conf["retention.ms"] = "-1"
        conf.update(self.extra)
        return conf

    def dlq_spec(self) -> TopicSpec | None:
        """The DLQ twin's spec: raw bytes, 1 partition, 14 days."""
        if not self.dlq:
            return None
        return TopicSpec(self.dlq_name or "", self.key, None, partitions=1, retention_ms=14 * DAY_MS,
                         dlq=False, description=f"dead letters of {self.name}")


CATALOG: tuple[TopicSpec, ...] = (
    TopicSpec("md.ticks", "symbol", "mystocks.md.Tick", description="trades and quotes, interleaved"),
    TopicSpec("md.trades", "symbol", "mystocks.md.Trade", description="trade prints"),
    TopicSpec("md.quotes", "symbol", "mystocks.md.Quote", description="top-of-book quotes"),
    TopicSpec("md.bars.1s", "symbol", "mystocks.md.Bar", description="1-second OHLCV bars"),
    TopicSpec("md.bars.1m", "symbol", "mystocks.md.Bar", retention_ms=30 * DAY_MS, description="1-minute OHLCV bars"),
    TopicSpec("md.bars.1d", "symbol", "mystocks.md.Bar", retention_ms=-1, description="daily OHLCV bars (history)"),
    TopicSpec("features.ticks", "symbol", "mystocks.features.FeatureVector", description="per-tick feature vectors"),
    TopicSpec("agg.running", "symbol", "mystocks.streams.RunningAggregate",
              description="built-in per-key running count/sum/last"),
    TopicSpec("cmd.jobs", "job_id", "mystocks.jobs.JobCommand", partitions=1, description="job commands (submit/cancel)"),
    TopicSpec("job.status", "job_id", "mystocks.jobs.TaskStatus", partitions=1, cleanup="compact",
              dlq=False, description="latest state per job (compacted)"),
    TopicSpec("results.backtest", "job_id", "mystocks.backtest.BacktestResult", partitions=1,
              retention_ms=30 * DAY_MS, dlq=False, extra={"max.message.bytes": "8388608"},
              description="backtest results, chunked"),
    TopicSpec("alerts", "source", "mystocks.ops.Alert", partitions=1, dlq=False, description="operational and risk alerts"),
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
                     cleanup="compact", dlq=False, description=f"state changelog of {processor}")
