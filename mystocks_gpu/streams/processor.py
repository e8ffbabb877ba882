"""The processor contract: pure functions over columnar micro-batches, plus state (de)serialisation.

A processor never talks to Kafka. The runtime (``streams.worker``) decodes (one
:meth:`Processor.decode_partitions` call per batch), calls :meth:`Processor.process_partitions` once
per batch (by default :meth:`Processor.process` once per input partition present in it), and writes
the outputs, the state changelog entries and the dead letters in one transaction.

Rules a processor follows:

- ``process(batch, state) -> (outputs, state)`` sees a :class:`Columns` batch of one partition,
  symbols as dense int32 codes (column ``sym``) of the worker's shared :class:`SymbolTable`;
- if it raises, it must leave ``state`` as it was (the runtime bisects the batch to isolate the
  bad records, sends them to the DLQ and processes the rest);
- :meth:`changelog_entries` returns ``(key, value)`` bytes describing the state of the given symbol
  codes (those touched since the last commit; default: the whole state under one key);
  :meth:`restore` rebuilds state from the latest entry of every key. A restored worker must
  produce the same outputs as one that never stopped. The runtime writes the entries once per
  commit (not per batch), so a commit interval bounds changelog volume;
- :meth:`warm_up` (optional) compiles or loads what the first batch needs; the runtime calls it
  once before the worker joins its consumer group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from mystocks_gpu.infra.logs import log_context
from mystocks_gpu.schemas.symbols import SymbolTable

S = TypeVar("S")
WHOLE_STATE_KEY = b"__state__"


@dataclass
class Columns:
    """One partition's decoded micro-batch: struct-of-arrays (NumPy), all of length ``n``.

    ``index`` maps each row back to its position in the raw batch (for dead letters and offsets);
    ``ingest_ns`` is when the runtime received the batch (wall clock live, event time in replays).
    """

    columns: dict[str, np.ndarray]
    symbols: SymbolTable
    index: np.ndarray
    partition: int = 0
    ingest_ns: int = 0

    def __len__(self) -> int:
        return int(self.index.size)

    def take(self, rows: slice | np.ndarray) -> Columns:
        """A sub-batch of the given rows (used to bisect a failing batch)."""
        return Columns({k: v[rows] for k, v in self.columns.items()}, self.symbols, self.index[rows],
                       self.partition, self.ingest_ns)


@dataclass(frozen=True)
class Rejected:
    """A record that goes to the DLQ: its row in the raw batch and why."""

    index: int
    error_class: str
    message: str


@dataclass
class Outputs:
    """Records to produce: per topic, parallel lists of key bytes, value bytes and timestamps (ms).

    ``rejected`` holds records the processor refused (e.g. late ticks), by raw-batch index.
    ``sources`` (optional, per topic): int64 array, the raw-batch index of the input record each
    output came from (-1 = several/unknown; an array, not a list: no per-record Python work), so an output that can never be produced (over the topic's size
    limit) sends its input to the DLQ instead. ``headers`` (optional, per topic): Kafka headers put
    on every record of that topic (e.g. the configuration that produced them). ``stage_s``: seconds
    the processor spent in named stages (``encode``), for the runtime's latency breakdown.
    ``touched``: from :meth:`Processor.flush`, the symbol codes whose state the flush changed (their
    changelog entries are rewritten).
    """

    records: dict[str, tuple[list[bytes | None], list[bytes], list[int]]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    sources: dict[str, np.ndarray] = field(default_factory=dict)
    headers: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)
    touched: np.ndarray | None = None

    def add(self, topic: str, keys: Sequence[bytes | None], values: Sequence[bytes], ts_ms: Sequence[int],
            sources: Sequence[int] | np.ndarray | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Append records for ``topic`` (``sources``: raw-batch index of each one's input record;
        ``headers``: put on every record of the topic)."""
        if not values:
            return
        if headers:
            self.headers[topic] = headers
        k, v, t = self.records.setdefault(topic, ([], [], []))
        before = len(v)
        k.extend(keys)
        v.extend(values)
        t.extend(ts_ms)
        if sources is not None or topic in self.sources:
            new = np.asarray(sources, np.int64) if sources is not None else np.full(len(values), -1, np.int64)
            old = self.sources.get(topic)
            if old is None and before:
                old = np.full(before, -1, np.int64)
            self.sources[topic] = new if old is None else np.concatenate([old, new])

    def extend(self, other: Outputs) -> None:
        """Append another batch's outputs after these."""
        for topic, (k, v, t) in other.records.items():
            self.add(topic, k, v, t, other.sources.get(topic), other.headers.get(topic))
        self.rejected.extend(other.rejected)
        for name, sec in other.stage_s.items():
            self.stage_s[name] = self.stage_s.get(name, 0.0) + sec
        if other.touched is not None:
            self.touched = other.touched if self.touched is None else np.union1d(self.touched, other.touched)

    def count(self) -> int:
        """Number of output records (all topics)."""
        return sum(len(v) for _, v, _ in self.records.values())


@dataclass
class Decoded:
    """Result of :meth:`Processor.decode`: the good rows as :class:`Columns`, the rest rejected."""

    columns: Columns
    rejected: list[Rejected]


class Processor(ABC, Generic[S]):
    """Base class of every stream processor (see the module docstring for the contract)."""

    #: registry name (``mystocks-gpu run NAME``)
    name: str = ""
    #: default input topic
    input_topic: str = ""
    #: topics ``process`` writes to
    output_topics: tuple[str, ...] = ()
    #: a broadcast side input (a table topic every worker reads whole, ``streams/side_input.py``);
    #: "" = none. A processor with one implements :meth:`decode_side`, :meth:`apply_side` and
    #: :meth:`side_offsets`
    side_topic: str = ""
    #: the most input partitions the processor can work with (None = any): a processor whose state
    #: must see the whole input (e.g. every price of an account's symbols) sets 1
    max_input_partitions: int | None = None

    def warm_up(self) -> None:
        """Compile or load from the on-disk cache everything the first batch would (numba kernels,
        generated codecs), on throwaway data, leaving the processor as it was. The worker calls it
        once before it joins its consumer group, so the first batch after a start, a restart or a
        rebalance pays no compilation: with a warm cache that was tens of ms, on a fresh install tens
        of seconds, of input waiting. Default: nothing (a processor without compiled code)."""

    def warm_batch(self, values: list[bytes | None], symbols: SymbolTable,
                   decode: Callable[..., Decoded] | None = None) -> None:
        """The warm-up of a one-partition processor: ``values`` decoded as partition 0 (``decode``,
        default :meth:`decode`) on the throwaway table ``symbols``, processed, the state written to
        bytes and read back; the table's caches are forgotten afterwards."""
        try:
            batch = (decode or self.decode)(values, np.arange(len(values), dtype=np.int64), symbols, 0, 0).columns
            _, state = self.process_partitions({0: batch}, {0: self.initial_state()})
            self.state_from_bytes(self.state_to_bytes(state[0], symbols), symbols)
        finally:
            self.forget_symbols(symbols)

    def forget_symbols(self, symbols: SymbolTable) -> None:
        """Drop what is cached for ``symbols``, a throwaway table (a warm-up's): its key bytes. A
        processor with more per-table caches (decoders) extends it."""
        self.__dict__.get("_key_cache", {}).pop(id(symbols), None)

    def begin_batch(self) -> None:
        """Called once per batch, before any of its partitions is decoded (by the worker and by
        :func:`~mystocks_gpu.streams.replay.replay`): what must hold for the whole batch is settled
        here, e.g. the model version the signals processor decodes and scores every partition with.
        Default: nothing."""

    def close(self) -> None:
        """Release what the processor holds outside its state (threads, clients); the worker calls it
        once, last, when it stops. Default: nothing."""

    @abstractmethod
    def decode(self, values: list[bytes | None], index: np.ndarray, symbols: SymbolTable,
               partition: int, ingest_ns: int) -> Decoded:
        """Decode and validate the raw values of one partition's records (rows ``index`` of the batch)."""

    def decode_partitions(self, values: Sequence[bytes | None], parts: Mapping[int, list[int]],
                          symbols: SymbolTable, ingest_ns: int) -> dict[int, Decoded]:
        """Decode one batch: ``values`` = every record of the batch, ``parts`` = partition -> its rows
        of the batch (in order). Returns, per partition, what :meth:`decode` returns for its rows.
        Default: :meth:`decode` per partition. A processor whose decode keeps no state across rows and
        costs mostly per call (tens of µs) overrides it to decode every row at once: at a few
        dozen records per partition and batch, that per-call cost is most of a batch's decode time."""
        out = {}
        for partition, rows in parts.items():
            with log_context(partition=partition):
                out[partition] = self.decode(list(map(values.__getitem__, rows)), np.asarray(rows, np.int64),
                                             symbols, partition, ingest_ns)
        return out

    @abstractmethod
    def initial_state(self) -> S:
        """State of a partition that has never been processed."""

    @abstractmethod
    def process(self, batch: Columns, state: S) -> tuple[Outputs, S]:
        """Compute outputs for one partition's micro-batch; return them and the new state."""

    def process_partitions(self, batches: Mapping[int, Columns], states: Mapping[int, S]) -> tuple[Outputs, dict[int, S]]:
        """Process one micro-batch's partitions: ``batches`` = partition -> its rows (batch order),
        ``states`` = partition -> its state. Returns the outputs of all of them (per topic, each
        partition's records in turn, exactly as :meth:`process` per partition gives them) and each
        partition's new state. A bad record never raises: it is isolated as :func:`process_isolating`
        does. Default: :func:`process_isolating` per partition. A processor whose ``process`` costs
        mostly per call overrides it to share that cost; if its override raises, every state must be
        as it was."""
        out = Outputs()
        new: dict[int, S] = {}
        for partition, cols in batches.items():
            with log_context(partition=partition):  # on every log line of process (JSON logs)
                part_out, new[partition] = process_isolating(self, cols, states[partition])
            out.extend(part_out)
        return out, new

    @abstractmethod
    def state_to_bytes(self, state: S, symbols: SymbolTable) -> bytes:
        """Serialise a whole partition state (symbols by name, so codes may differ after restore)."""

    @abstractmethod
    def state_from_bytes(self, blob: bytes, symbols: SymbolTable) -> S:
        """Inverse of :meth:`state_to_bytes` (codes re-interned in ``symbols``)."""

    def changelog_entries(self, state: S, codes: np.ndarray, symbols: SymbolTable) -> list[tuple[bytes, bytes]]:
        """Changelog ``(key, value)`` entries for the symbol ``codes`` (int32, unique) touched since
        the last commit; default: the whole state under one key."""
        return [(WHOLE_STATE_KEY, self.state_to_bytes(state, symbols))]

    def restore(self, entries: Iterable[tuple[bytes, bytes]], symbols: SymbolTable) -> S:
        """State from the latest changelog entry of every key (default: the whole-state entry)."""
        state = self.initial_state()
        for key, value in entries:
            if key == WHOLE_STATE_KEY:
                state = self.state_from_bytes(value, symbols)
        return state

    # ---- broadcast side input (optional) ----------------------------------------------------
    def decode_side(self, records: Sequence[Any], symbols: SymbolTable) -> tuple[Any, list[Rejected]]:
        """Decode side records (:class:`~mystocks_gpu.streams.side_input.SideRecord`); returns the
        decoded form :meth:`apply_side` takes and the rejected ones (``Rejected.index`` = position
        in ``records``), which go to the side topic's DLQ."""
        raise NotImplementedError(f"{self.name} has no side input")

    def apply_side(self, decoded: Any, state: S, symbols: SymbolTable, read_to: dict[int, int]) -> S:
        """Return ``state`` with the decoded side records applied, skipping those before the
        state's own :meth:`side_offsets` (they were applied already), and its side position moved
        to ``read_to`` (``{partition: next offset}`` after the records read, rejected ones
        included). Pure, like :meth:`process`."""
        raise NotImplementedError(f"{self.name} has no side input")

    def side_offsets(self, state: S) -> dict[int, int]:
        """``{side partition: next offset}`` the state has read (serialised with the state)."""
        return {}

    def flush(self, state: S, symbols: SymbolTable, partition: int) -> tuple[Outputs, S]:
        """Outputs still held in state (e.g. open bars), emitted at the end of a replay, after the
        input has idled, or on a graceful stop (``RuntimeConfig.idle_flush_s`` / ``flush_on_stop``).
        Must not mutate ``state``; sets ``Outputs.touched`` to the symbol codes whose state changed.
        Default: none."""
        return Outputs(), state

    def output_partitioner(self) -> str:
        """How outputs are partitioned: by key (murmur2, default)."""
        return "key"

    def key_bytes(self, codes: np.ndarray, symbols: SymbolTable) -> list[bytes]:
        """Kafka keys (UTF-8 symbol names) for symbol ``codes``, cached per symbol table."""
        cache: dict[int, list[bytes]] = self.__dict__.setdefault("_key_cache", {})
        keys = cache.setdefault(id(symbols), [])
        if len(keys) < len(symbols):
            keys.extend(s.encode() for s in symbols.symbols[len(keys):])
        return list(map(keys.__getitem__, np.asarray(codes).tolist()))  # from C: the per-record hot path


def decode_errors_to_rejected(index: np.ndarray, status: np.ndarray, message_of: Any) -> list[Rejected]:
    """Turn a per-record status array (0 = ok) into :class:`Rejected` entries."""
    if not np.count_nonzero(status):  # a quarter of .any()'s cost on a batch's few dozen rows
        return []
    bad = np.flatnonzero(status)
    return [Rejected(int(index[i]), _error_class(int(status[i])), message_of(int(status[i]))) for i in bad]


def _error_class(code: int) -> str:
    """Batch-codec status code -> the error class named in DLQ headers."""
    if code == 2:
        return "UnknownSchemaId"
    return "DecodeError" if code < 32 else "ValidationError"


def process_isolating(processor: Processor[Any], cols: Columns, state: Any) -> tuple[Outputs, Any]:
    """Run ``processor.process``; if it raises, bisect the batch until the failing records are
    isolated, reject those (to the DLQ) and process the rest in order."""
    try:
        return processor.process(cols, state)
    except Exception as exc:  # a processor bug or a poison record: isolate it
        if len(cols) == 1:
            out = Outputs()
            out.rejected.append(Rejected(int(cols.index[0]), type(exc).__name__, str(exc) or repr(exc)))
            return out, state
    mid = len(cols) // 2
    out, state = process_isolating(processor, cols.take(slice(0, mid)), state)
    out2, state = process_isolating(processor, cols.take(slice(mid, None)), state)
    out.extend(out2)
    return out, state
