"""A live synthetic feed and a latency reading of any topic: what a user needs to see tick -> feature
latency for themselves (``mystocks-gpu produce ticks --synthetic --live`` and ``mystocks-gpu consume
TOPIC --latency``).

A live tick's event time (``ts_event``, ns) and its Kafka timestamp (ms) are the wall clock when it
is handed to the producer, not a time from the generator, so ``receive time - ts_event`` of a record
downstream is the latency of everything between the feed and the reader. The ticks are the
generator's (:mod:`mystocks_gpu.data.synthetic_ticks`), encoded a chunk at a time; the ticks due
are stamped when they are sent by splicing the 9-byte Avro long into their encoded bytes
(:class:`StampedTicks`, paced by :func:`paced_feed`; ``bench/features_e2e.py``'s load producer is
the same feed).

``consume --latency`` reads each fetch's values in one compiled pass (:func:`leading_longs_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numba
import numpy as np

from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.schemas.batch_codec.decoder import gather_values
from mystocks_gpu.schemas.batch_codec.encoder import avro_long_bytes
from mystocks_gpu.schemas.batch_codec.primitives import _read_long
from mystocks_gpu.schemas.codec import PREFIX_LEN

#: a live feed's producer settings, on top of the project's producer defaults: not idempotent and one
#: request in flight per connection (the records stay in produce order; a retry after a lost
#: acknowledgement may duplicate one), 1 ms linger, Nagle off. An idempotent producer builds a
#: partition's next request only while fewer than 5 of its messages are in flight, and spins a core
#: until the acknowledgement comes; on a machine it shares with the broker that starved the broker
#: (``bench/HISTORY.md``, 2026-12-05).
LIVE_PRODUCER: dict[str, Any] = {"enable.idempotence": False, "max.in.flight.requests.per.connection": 1,
                                 "linger.ms": 1, "socket.nagle.disable": True}


class StampedTicks:
    """Tick values encoded once, whose ``ts_event`` is set when they are taken by splicing a 9-byte
    Avro long between each value's head (Confluent prefix, symbol) and tail. Re-encoding each chunk
    of a paced feed cost most of a core at 50k ticks/s (about 80 us of per-call overhead for chunks of
    ~10 ticks); splicing costs a tenth of that. Checked against the encoder on a sample at start-up:
    the same bytes, or :meth:`values` falls back to encoding each chunk.

    ``cols``: the generator's columns (``sym`` codes into ``names``), ``now_ns``: any time of the
    same decade (its varint length, 9 bytes, is what the values are cut for)."""

    def __init__(self, enc: BatchEncoder, cols: dict[str, np.ndarray], names: Sequence[str], now_ns: int) -> None:
        self.enc, self.cols, self.names = enc, cols, list(names)
        placeholder = dict(cols, ts=np.full(cols["ts"].size, now_ns, np.int64))
        values = enc.encode(placeholder, self.names)
        cut = [PREFIX_LEN + 1 + len(self.names[c].encode()) for c in cols["sym"].tolist()]
        self.heads = [v[:c] for v, c in zip(values, cut, strict=True)]
        self.tails = [v[c + 9:] for v, c in zip(values, cut, strict=True)]
        probe_ts = now_ns + 123_456_789
        sample = min(len(values), 256)
        want = enc.encode(dict({k: v[:sample] for k, v in cols.items()}, ts=np.full(sample, probe_ts, np.int64)),
                          self.names)
        #: True when splicing gives the encoder's bytes (checked on up to 256 ticks)
        self.exact = self._spliced(0, sample, probe_ts) == want

    def __len__(self) -> int:
        return len(self.heads)

    def _spliced(self, i: int, j: int, ts_ns: int) -> list[bytes] | None:
        stamp = avro_long_bytes(ts_ns)
        if len(stamp) != 9:  # the placeholder's length (ns since 1971 until 2116)
            return None
        return [h + stamp + t for h, t in zip(self.heads[i:j], self.tails[i:j], strict=True)]

    def values(self, i: int, j: int, ts_ns: int) -> list[bytes]:
        """Framed values of ticks ``i:j`` with ``ts_event = ts_ns``."""
        if self.exact and (spliced := self._spliced(i, j, ts_ns)) is not None:
            return spliced
        chunk = {k: v[i:j] for k, v in self.cols.items()}
        chunk["ts"] = np.full(j - i, ts_ns, np.int64)
        return list(self.enc.encode(chunk, self.names))


#: ticks a live feed draws and encodes at a time (:func:`paced_feed`): 10-15 ms of work per chunk on this
#: project's VM, a pause the pacing catches up, and the feed holds one chunk (~3 MB), however long it runs
LIVE_CHUNK = 10_000


def paced_feed(tape: Iterable[dict[str, np.ndarray]], names: Sequence[str], enc: BatchEncoder, rate: float,
               send: Callable[[list[bytes], list[bytes], int], None], *, clock: Clock = SYSTEM_CLOCK,
               stopped: Callable[[], bool] = lambda: False, on_chunk: Callable[[int, int], None] | None = None,
               on_start: Callable[[], None] | None = None) -> int:
    """Offer the ticks of ``tape`` (column chunks, e.g. ``synthetic_ticks.chunks(market, count,
    LIVE_CHUNK)``; it may be endless) at ``rate`` ticks/s: every ~0.5 ms, the ticks now due (by
    ``rate`` x the time since the start, +1), all stamped with one wall time (``ts_event`` and the
    Kafka timestamp: they are handed over together), go to ``send(values, keys, timestamp_ms)`` in
    one call. Returns the ticks sent; stops early when ``stopped()``. ``on_chunk(ticks, stamp_ns)``
    after each send; ``on_start()`` once the first chunk is encoded, right before the clock starts.

    One call per due chunk instead of one per tick: a paced feed of 50k ticks/s took half a core
    with a ``produce()`` and a generator step per tick, and it shares the cores with what it feeds
    (``bench/HISTORY.md``, 2026-12-07). Each tape chunk is encoded when the feed reaches it (10-15 ms
    for :data:`LIVE_CHUNK` ticks; the first before the clock starts), a pause the pacing then catches up."""
    keys = [n.encode() for n in names]
    parts = ((StampedTicks(enc, cols, names, clock.now_ns()), [keys[c] for c in cols["sym"].tolist()])
             for cols in tape)
    first = next(parts, None)  # encoded before the clock starts (the encoder's first call: 0.6 s)
    if on_start is not None:
        on_start()
    sent, t0 = 0, clock.monotonic()
    for stamped, chunk_keys in chain([first] if first is not None else [], parts):
        i, m = 0, len(stamped)
        while i < m:
            if stopped():
                return sent
            due = min(m, int((clock.monotonic() - t0) * rate) + 1 - (sent - i))
            if due <= i:
                clock.sleep(0.0005)
                continue
            now = clock.now_ns()
            send(stamped.values(i, due, now), chunk_keys[i:due], now // 1_000_000)
            if on_chunk is not None:
                on_chunk(due - i, now)
            sent += due - i
            i = due
    return sent


# ---- reading latency --------------------------------------------------------------------------------
def latency_fields(fields: Sequence[dict[str, Any]]) -> tuple[int, int | None] | None:
    """Where ``ts_event`` and ``ts_ingest`` (the worker's receive time, ns) sit in a record schema's
    leading fields (``fields``: the ``.avsc`` list), for :func:`leading_longs_batch`: ``(1, index or
    None)``; None when the record does not start with a string and the long ``ts_event``. ``ts_ingest``
    counts only when every field before it is a long or an int (e.g. ``FeatureVector``: symbol,
    ts_event, seq, ts_ingest)."""
    if len(fields) < 2 or fields[0]["type"] != "string" or (fields[1]["name"], fields[1]["type"]) != ("ts_event", "long"):
        return None
    for i, f in enumerate(fields[2:], start=2):
        if f["type"] not in ("long", "int"):
            break
        if f["name"] == "ts_ingest" and f["type"] == "long":
            return 1, i
    return 1, None


@numba.njit(cache=True, nogil=True)
def _leading_longs_kernel(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, out: np.ndarray,
                          ok: np.ndarray) -> None:  # pragma: no cover - compiled
    for i in range(starts.size):
        end = ends[i]
        if end - starts[i] < PREFIX_LEN + 2 or buf[starts[i]] != 0:
            continue
        p = starts[i] + PREFIX_LEN
        good = True
        for j in range(out.shape[1]):
            v, p, err = _read_long(buf, p, end)
            if err != 0 or (j == 0 and (v < 0 or p + v > end)):  # field 0: a string's length, then its bytes
                good = False
                break
            out[i, j] = v
            if j == 0:
                p += v
        ok[i] = good


def leading_longs_batch(values: Sequence[bytes | None], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` fields of Confluent-framed Avro records whose first field is a string and the
    next ``n - 1`` are longs (or ints), every value in one compiled pass: ``(out int64 (k, n), ok bool
    (k,))``; row ``i`` is value ``i``'s string length, then its longs, where ``ok[i]``; ``ok[i]`` is
    False for a value that is not such a record (not framed, cut short, a null). Every record schema
    of the catalog but ``ModelRecord`` starts with a string (symbol, job id, ...) and the long
    ``ts_event`` (ns). About 0.1 us a value, against ~3 us for a Python varint reader: what lets
    ``consume --latency`` keep up with 50k records/s on a shared core."""
    buf, starts, ends, _null = gather_values(values)
    out = np.zeros((len(starts), n), np.int64)
    ok = np.zeros(len(starts), np.bool_)
    if len(starts):
        _leading_longs_kernel(buf, starts, ends, out, ok)
    return out, ok


@dataclass
class LatencyWindow:
    """Latencies (ms) of the records received in one reporting window: ``ms`` receive time -
    ``ts_event``; ``ingest_ms`` (records that carry it) ``ts_ingest - ts_event``, the hop to the
    worker."""

    started_s: float
    ms: list[float] = field(default_factory=list)
    ingest_ms: list[float] = field(default_factory=list)

    def since(self, index: int, started_s: float) -> LatencyWindow:
        """The records from ``index`` on, as a window that started at ``started_s``."""
        return LatencyWindow(started_s, self.ms[index:], self.ingest_ms[index:])

    def summary(self) -> dict[str, float | int | None]:
        """count, p50/p99/p99.9/max in ms (numpy's linear quantiles; None when empty), and, when the
        records carry ``ts_ingest``, ``to_worker_p50_ms`` / ``to_worker_p99_ms``."""
        a = np.asarray(self.ms, np.float64)
        if not a.size:
            return {"count": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
        q = np.quantile(a, [0.5, 0.99, 0.999])
        out: dict[str, float | int | None] = {"count": int(a.size), "p50_ms": float(q[0]), "p99_ms": float(q[1]),
                                              "p999_ms": float(q[2]), "max_ms": float(a.max())}
        if self.ingest_ms:
            w = np.quantile(np.asarray(self.ingest_ms, np.float64), [0.5, 0.99])
            out.update(to_worker_p50_ms=float(w[0]), to_worker_p99_ms=float(w[1]))
        return out


__all__ = ["LIVE_CHUNK", "LIVE_PRODUCER", "LatencyWindow", "StampedTicks", "latency_fields", "leading_longs_batch",
           "paced_feed"]
