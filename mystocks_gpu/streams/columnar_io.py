"""Columnar record I/O: the worker's input read from librdkafka straight into per-field lists, and
its outputs produced from such lists, by the C extension ``_rdbatch``.

confluent-kafka's ``Consumer.consume()`` builds one Python ``Message`` per record (with a topic
string and a timestamp tuple each), and the worker then reads every field back through Python
calls; on the 2-core AMD VM that was about 2 µs of CPU per record, more than the worker's own
decode + compute + encode. The C extension ``_rdbatch`` (``_rdbatch.c``, built by ``pip install``
when a C compiler and Python's headers exist) reads the same librdkafka messages into five lists
(values, keys, partitions, offsets, timestamps) in one C loop: consuming only, 0.41-0.51 us per
record (1.95-2.43M records/s against 0.57-0.84M with ``Message`` objects, 2026-12-03). See the
extension's header for how: each assigned partition's fetch queue is forwarded to a private queue,
so rebalances, errors and commit callbacks stay on the consumer queue, served by confluent-kafka's
``poll()`` / ``consume()`` as before; seeks, pauses and revocations drop queued records through
librdkafka's version barriers exactly as on the consumer queue; transaction markers are skipped.

On the output side, :func:`columnar_producer` gives ``produce_many``: one ``rd_kafka_produceva``
per record in a C loop over the columns (topic, value, key, timestamp, the batch's headers), the
same records confluent-kafka's ``produce()`` would make (no delivery callback: confluent-kafka's
callback skips records without its per-message state, as it does for ``produce()`` without one).
It saved about 0.3 us per record against ``map`` over ``produce()`` (0.63 against 0.96 us, one
200-byte header, 2-core AMD VM, an idle producer). It releases the GIL while librdkafka queues the
records; exactly-once workers hand their outputs to the extension's ``Sender`` thread instead
(``streams/send_pipeline.py``), so producing overlaps the next batch.

:class:`ColumnarIngest` wraps one consumer: :meth:`~ColumnarIngest.attach` partitions in the
assignment callback (before librdkafka starts fetching them), :meth:`~ColumnarIngest.detach` them
on revocation, :meth:`~ColumnarIngest.close` before the consumer closes.

The runtime's ``record_io`` setting (``RuntimeConfig.record_io``): ``auto`` (the default: columnar
when the extension is built), ``columnar`` (required: the worker fails to start without it),
``messages`` (confluent-kafka's ``Message`` objects in, ``produce()`` calls out).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mystocks_gpu.exceptions import ConfigError

AUTO = "auto"
COLUMNAR = "columnar"
MESSAGES = "messages"
RECORD_IO_MODES = (AUTO, COLUMNAR, MESSAGES)

#: ``produce_many(producer, topic, values, keys, timestamps_ms, headers, partition, start, stop[, partitions])
#: -> (sent, code, reason)`` (see ``_rdsend.c``; ``partitions``: an int32 buffer, each record's own)
ProduceMany = Callable[..., tuple[int, int, str]]

_loaded: tuple[Any, str] | None = None
_load_lock = threading.Lock()


def load_extension() -> tuple[Any, str]:
    """``(module, "")`` when the ``_rdbatch`` extension is built and bound to the librdkafka that
    confluent-kafka loaded, else ``(None, reason)``. Bound once per process, whichever threads ask
    at once (the gateway builds its job view's consumer on a thread of its own while its event loop
    builds the command producer: both watched, both asking)."""
    if _loaded is not None:
        return _loaded
    with _load_lock:
        return _load()


def _load() -> tuple[Any, str]:
    global _loaded
    if _loaded is not None:
        return _loaded
    try:
        import confluent_kafka

        from mystocks_gpu.streams import _rdbatch  # type: ignore[attr-defined]
    except ImportError as exc:
        _loaded = (None, f"the C extension mystocks_gpu.streams._rdbatch is not built ({exc}); it needs a C "
                         "compiler and Python's headers at install (apt-get install gcc python3-dev; make install)")
        return _loaded
    path = _librdkafka_path()
    if path is None:
        _loaded = (None, "confluent-kafka's librdkafka is not among the process's mapped files (/proc/self/maps)")
        return _loaded
    try:
        _rdbatch.bind(path, confluent_kafka.libversion()[1], confluent_kafka.Producer, confluent_kafka.Consumer)
    except ImportError as exc:
        _loaded = (None, str(exc))
        return _loaded
    _loaded = (_rdbatch, "")
    return _loaded


def _librdkafka_path() -> str | None:
    """The file of the librdkafka loaded in this process (confluent-kafka's), from /proc/self/maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and "librdkafka" in parts[5].rsplit("/", 1)[-1]:
                    return parts[5].strip()
    except OSError:
        return None
    return None


@dataclass
class ColumnChunk:
    """Records of one consume call, as parallel lists in arrival order (no error events).

    ``values``/``keys``: raw bytes (None for a null); ``timestamps_ms``: the record timestamps
    (-1 when a record has none). ``nbytes`` (all values' bytes), ``max_value`` / ``max_key`` (the
    longest value / key, bytes): as the ingest measured them, -1 when unknown (a derived chunk)."""

    values: list[bytes | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)
    nbytes: int = -1
    max_value: int = -1
    max_key: int = -1

    def __len__(self) -> int:
        return len(self.values)

    def tail(self, start: int) -> ColumnChunk:
        """The records from index ``start`` on."""
        return ColumnChunk(self.values[start:], self.keys[start:], self.partitions[start:], self.offsets[start:],
                           self.timestamps_ms[start:])

    def without_partitions(self, gone: set[int]) -> ColumnChunk:
        """The records of partitions not in ``gone``."""
        keep = [i for i, p in enumerate(self.partitions) if p not in gone]
        if len(keep) == len(self.partitions):
            return self
        return ColumnChunk([self.values[i] for i in keep], [self.keys[i] for i in keep],
                           [self.partitions[i] for i in keep], [self.offsets[i] for i in keep],
                           [self.timestamps_ms[i] for i in keep])


@dataclass(frozen=True)
class IngestEvent:
    """An error event of a partition's fetch queue (e.g. an offset out of range), not a record."""

    partition: int
    offset: int
    code: int
    reason: str


class ColumnarIngest:
    """One consumer's assigned partitions read as :class:`ColumnChunk` batches (see the module doc).

    ``consumer``: a confluent-kafka ``Consumer`` subscribed to ``topic`` only. Not thread-safe; call
    everything from the thread that polls the consumer.

    :meth:`close` it before the consumer closes: the records queued here hold references that
    librdkafka's destroy waits for, so a ``consumer.close()`` with this ingest open blocks forever.
    An ingest dropped without :meth:`close` closes itself when collected (it keeps its consumer
    alive until then), so only an explicit ``consumer.close()`` first can hang."""

    def __init__(self, consumer: Any, topic: str) -> None:
        ext, reason = load_extension()
        if ext is None:
            raise RuntimeError(reason)
        self._ing = ext.Ingest(consumer, topic)
        self.topic = topic

    def attach(self, partitions: list[int]) -> None:
        """Read these partitions through this ingest (call in the assignment callback)."""
        for p in partitions:
            self._ing.attach(p)

    def detach(self, partitions: list[int]) -> None:
        """Hand these partitions back to the consumer queue (revoked or lost)."""
        for p in partitions:
            self._ing.detach(p)

    @property
    def active(self) -> bool:
        """True while any partition is attached."""
        return bool(self._ing.attached_count())

    def attached(self) -> list[int]:
        """The attached partitions, ascending (as the extension holds them)."""
        return list(self._ing.attached())

    def queued(self) -> int:
        """Records (and events) waiting in the ingest's queue."""
        return int(self._ing.queued())

    def consume(self, max_records: int, timeout_s: float, wait_all: bool = False) -> tuple[ColumnChunk, list[IngestEvent]]:
        """Up to ``max_records`` records: blocks at most ``timeout_s`` for the first one (the GIL
        released), then takes what else has arrived without waiting; ``wait_all``: waits for
        ``max_records`` or the timeout. Error events come separately, in order."""
        values, keys, partitions, offsets, timestamps, errors, nbytes, max_value, max_key = \
            self._ing.consume(max_records, timeout_s, wait_all)
        return (ColumnChunk(values, keys, partitions, offsets, timestamps, nbytes, max_value, max_key),
                [IngestEvent(*e) for e in errors] if errors else [])

    def close(self) -> None:
        """Detach every partition and release the queue; call before the consumer closes."""
        self._ing.close()


def take_ready(consumer: Any, ingest: ColumnarIngest | None, max_records: int,
               timeout_s: float) -> tuple[list[bytes | None], list[int]]:
    """The values and record timestamps (ms) of up to ``max_records`` records of an assigned reader:
    blocks at most ``timeout_s`` for the first, then takes what else has arrived without waiting.
    With an ``ingest`` attached, the consumer's own queue comes first (its events, and any record
    fetched before the attach), then the ingest's columns; without one, confluent-kafka's messages
    (``consume_ready``). Error events are left out (a caller's count of received records shows them
    as records that never arrived)."""
    from mystocks_gpu.infra.kafka_clients import consume_ready

    if ingest is None:
        msgs = consume_ready(consumer, max_records, timeout_s)
    else:
        msgs = consumer.consume(max_records, timeout=0)
        if not msgs:
            chunk, _events = ingest.consume(max_records, timeout_s)
            return chunk.values, chunk.timestamps_ms
    ok = [m for m in msgs if m.error() is None]
    return [m.value() for m in ok], [m.timestamp()[1] for m in ok]


def columnar_producer(mode: str) -> ProduceMany | None:
    """The extension's ``produce_many`` when the ``record_io`` setting ``mode`` resolves to
    columnar (:func:`resolve_mode`), else None."""
    columnar, _ = resolve_mode(mode)
    return load_extension()[0].produce_many if columnar else None


def resolve_mode(mode: str, partitions: int = 0) -> tuple[bool, str]:
    """``(use columnar, why not)`` for the ``record_io`` setting ``mode`` (see the module doc) and an
    input of ``partitions`` partitions (the ingest holds at most ``_rdbatch.MAX_PARTITIONS``, 4096);
    raises :class:`ConfigError` when ``columnar`` is required and cannot be used."""
    if mode == MESSAGES:
        return False, "record_io = messages"
    ext, reason = load_extension()
    if ext is not None and partitions > ext.MAX_PARTITIONS:
        reason = f"the input has {partitions} partitions, the columnar ingest at most {ext.MAX_PARTITIONS}"
    elif ext is not None:
        return True, ""
    if mode == COLUMNAR:
        raise ConfigError(f"record_io = columnar, but {reason}")
    return False, reason
