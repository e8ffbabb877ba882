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

import re
from dataclasses import dataclass, field

from mystocks_gpu.topics.exceptions import UnknownTopic

DAY_MS = 86_400_000
GIB = 1 << 30
DLQ_SUFFIX = ".dlq"
#: largest record of the models topic (bytes); a larger serialised model is split into parts
MODEL_TOPIC_MAX_BYTES = 2 << 20
#: live model scores: one topic per model, ``signals.<model name>``
SIGNALS_PREFIX = "signals."


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


#: topic configs of bar topics: stored uncompressed whatever the producer sends. A bar (~78 bytes
#: of Avro: a symbol, times and float64 prices) compresses only ~1.3x with lz4, and decompressing is
#: about a third of a replay's fetch work (0.4 s of CPU per 7.5M bars on this project's 2-core
#: machine); uncompressed batches are also parsed in place, without copying them into one buffer.
BAR_TOPIC_CONFIG = {"compression.type": "uncompressed"}


def _bars(name: str, description: str) -> TopicSpec:
    """A bar topic (``md.bars.<interval>``): event-time retention, :data:`BAR_TOPIC_CONFIG`."""
    return _event_time(name, "mystocks.md.Bar", description, extra=dict(BAR_TOPIC_CONFIG))


CATALOG: tuple[TopicSpec, ...] = (
    _event_time("md.ticks", "mystocks.md.Tick", "trades and quotes, interleaved", gib=4),
    _event_time("md.trades", "mystocks.md.Trade", "trade prints"),
    _event_time("md.quotes", "mystocks.md.Quote", "top-of-book quotes"),
    _bars("md.bars.1s", "1-second OHLCV bars"),
    _bars("md.bars.1m", "1-minute OHLCV bars"),
    _bars("md.bars.1d", "daily OHLCV bars (history)"),
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
    # factor values: Arrow IPC frames, one per (job, date, factor batch), record time = the date
    # (so a time-range replay selects dates); bounded by size, like every event-time topic
    TopicSpec("factors.values", "job_id", None, partitions=4, retention_ms=-1, retention_bytes=4 * GIB, dlq=False,
              extra={"max.message.bytes": "8388608"},
              description="factor values per (date, symbol): Arrow IPC frames (see processors/factors)"),
    TopicSpec("results.factors", "job_id", "mystocks.factors.FactorResult", partitions=1,
              retention_ms=30 * DAY_MS, dlq=False, extra={"max.message.bytes": "8388608"},
              description="factor metrics per factor x horizon, series, correlation, weights; in parts"),
    TopicSpec("alerts", "source", "mystocks.ops.Alert", partitions=1, retention_ms=7 * DAY_MS, dlq=False,
              description="operational and risk alerts"),
    TopicSpec("models", "model", "mystocks.ml.ModelRecord", partitions=1, cleanup="compact",
              extra={"max.message.bytes": str(MODEL_TOPIC_MAX_BYTES), "min.compaction.lag.ms": str(DAY_MS)},
              description="model registry: latest version per model name (+ its parts), compacted"),
    TopicSpec("positions", "account", "mystocks.risk.Positions", partitions=4, cleanup="compact",
              description="holdings and limits per account (compacted; read whole by every risk worker)"),
    _event_time("risk.prices", "mystocks.md.Tick", "prices for the risk processor (ticks or bars) in ONE "
                "partition: an account's symbols span every md.ticks partition", partitions=1),
    TopicSpec("risk.metrics", "account", "mystocks.risk.RiskMetrics", retention_ms=-1, retention_bytes=GIB,
              dlq=False, description="risk snapshot per account per emit window (event time)"),
    TopicSpec("results.portfolio", "job_id", "mystocks.portfolio.PortfolioResult", partitions=1,
              retention_ms=30 * DAY_MS, dlq=False, extra={"max.message.bytes": "8388608"},
              description="optimised portfolios of optimize jobs, one record per problem"),
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


#: bar topics of any interval the features pipeline is configured with (md.bars.5s, md.bars.15m, ...)
_BARS = re.compile(r"md\.bars\.[1-9][0-9]*(ms|s|m|h|d)")


def get(name: str) -> TopicSpec:
    """The spec of a catalog topic (DLQ twins included; ``md.bars.<n><ms|s|m|h|d>`` for any bar
    interval, like md.bars.1s; and ``signals.<model>``); :class:`UnknownTopic` lists known ones."""
    for spec in all_specs():
        if spec.name == name:
            return spec
    if name.startswith(SIGNALS_PREFIX) and len(name) > len(SIGNALS_PREFIX) and not name.endswith(DLQ_SUFFIX):
        return signals_topic(name[len(SIGNALS_PREFIX):])
    base = name[: -len(DLQ_SUFFIX)] if name.endswith(DLQ_SUFFIX) else name
    if _BARS.fullmatch(base):
        spec = _bars(base, f"{base[len('md.bars.'):]} OHLCV bars")
        return spec if base == name else spec.dlq_spec()  # type: ignore[return-value]
    known = ", ".join(s.name for s in CATALOG)
    raise UnknownTopic(f"unknown topic {name!r}; known topics: {known}, signals.<model> "
                       "(each with a .dlq twin where it has one)")


def signals_topic(model: str, partitions: int = 4) -> TopicSpec:
    """``signals.<model>``: the live scores of one model (Avro ``mystocks.ml.Signal``, key = symbol,
    record timestamp = the scored vector's event time, so retained by size)."""
    return _event_time(SIGNALS_PREFIX + model, "mystocks.ml.Signal", f"live scores of model {model}",
                       partitions=partitions, dlq=False)


CHANGELOG_SEGMENT_BYTES = 8 << 20
"""Segment size of a state changelog (bytes). The log cleaner compacts a partition once its active
segment rolls, a whole segment at a time: with the broker's 64 MiB segments the tick-features
changelog at 50k ticks/s (~2 MB/s) rolled all its partitions within seconds of each other every ~2
minutes, and cleaning them took a core for ~5 s, a 0.5-1 s stall of the pipeline on two cores
(bench/HISTORY.md, 2026-12-05 21:00 on). 8 MiB segments spread the same work in small pieces."""


def changelog_topic(processor: str, group: str, partitions: int) -> TopicSpec:
    """The compacted state changelog of ``processor`` in consumer ``group``, co-partitioned with its
    input, in :data:`CHANGELOG_SEGMENT_BYTES` segments."""
    return TopicSpec(f"{group}.{processor}.changelog", "partition", None, partitions=partitions,
                     cleanup="compact", dlq=False, description=f"state changelog of {processor}",
                     extra={"min.compaction.lag.ms": "0", "segment.ms": "600000",
                            "segment.bytes": str(CHANGELOG_SEGMENT_BYTES)})
