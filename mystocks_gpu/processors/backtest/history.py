"""Bar history of a backtest job: replayed from Kafka once, spilled by event time to local disk, read
back window by window in time order — memory independent of the length of the history.

1. **Scan** (:meth:`BarHistory.scan`): the deterministic replay source reads every partition of the
   bar topic up to its end offset captured at the start (never an end found by time: see
   ``streams.replay``); values are decoded in batches (``BatchDecoder``), rows outside
   ``[start, end)`` (event time, ns) or outside the universe are dropped, undecodable records are
   counted, and the rest go to a :class:`Spill`: rows bucketed by event time
   (``bucket = ts // bucket_ns``, ``bucket_ns`` = :data:`BUCKET_BARS` bar intervals), appended to one
   temporary file. Any record order works — one file per ticker loaded one after another, files
   sorted by ticker then date, or interleaved — and gives the same windows.
2. **Windows** (:meth:`BarHistory.windows`): consecutive buckets are read back in time order and
   pivoted to ``(symbols, bar times)`` matrices over the union of the universe's bar times in the
   window (NaN where a symbol has no bar: before its listing, on its halts). A repeated
   (symbol, time) keeps the record read last (highest partition, then offset) and is counted.
3. The ``signal`` strategy's signal (:meth:`BarHistory.scan_signal`) is spilled the same way and
   aligned to every bar with the last value at or before the bar's time, carried across windows.

The spill lives in a temporary file deleted on :meth:`BarHistory.close` (or process exit).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from mystocks_gpu.schemas.schema_store import SchemaStore
from mystocks_gpu.schemas.symbols import SymbolTable

#: bar intervals per spill bucket (a window is one or more consecutive buckets)
BUCKET_BARS = 256
#: the price columns of a spilled bar row
BAR_PRICES = ("open", "high", "low", "close")
BAR_ROW = np.dtype([("sym", "<i4"), ("ts", "<i8"), *((k, "<f8") for k in BAR_PRICES)])
BAR_ROW_NB = numba.from_dtype(BAR_ROW)
SIGNAL_ROW = np.dtype([("sym", "<i4"), ("ts", "<i8"), ("signal", "<f8")])
_UNITS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9}


@numba.njit(cache=True, nogil=True)
def _count_first(sym, ts, count, first):  # pragma: no cover - numba
    """Per symbol code: ``count += rows``, ``first = min(first, ts)`` (``np.add.at`` / ``np.minimum.at``
    in one pass, ~20x faster)."""
    for i in range(sym.size):
        s = sym[i]
        count[s] += 1
        if ts[i] < first[s]:
            first[s] = ts[i]


@numba.njit(cache=True, nogil=True)
def _bucket_order(b):  # pragma: no cover - numba
    """Stable order of rows by bucket id ``b`` (int64 ``(n,)``): a counting sort when the ids span
    at most about ``2n`` values (a chunk of a replay covers a few buckets), else a merge sort."""
    n = b.size
    lo, hi = b.min(), b.max()
    span = hi - lo + 1
    if span > 2 * n + 64:
        return np.argsort(b, kind="mergesort")
    start = np.zeros(span + 1, np.int64)
    for i in range(n):
        start[b[i] - lo + 1] += 1
    for k in range(span):
        start[k + 1] += start[k]
    order = np.empty(n, np.int64)
    for i in range(n):
        k = b[i] - lo
        order[start[k]] = i
        start[k] += 1
    return order


@numba.njit(cache=True, nogil=True)
def _select_rows(sym, ts, o, h, low, c, lo, hi, member, use_all, bucket_ns):  # pragma: no cover - numba
    """One pass over a decoded chunk: the rows with ``lo <= ts < hi`` whose symbol code is a member
    (``member[code]``, or every code when ``use_all``), as :data:`BAR_ROW` rows in bucket order
    (``ts // bucket_ns``; stable within a bucket) -> ``(rows, bucket ids (n,), rows out of range,
    in-range rows outside the universe)``."""
    n = ts.size
    keep = np.empty(n, np.int64)
    b = np.empty(n, np.int64)
    k = 0
    n_range = 0
    n_outside = 0
    sorted_ = True
    for i in range(n):
        t = ts[i]
        if t < lo or t >= hi:
            n_range += 1
            continue
        if not use_all and not member[sym[i]]:
            n_outside += 1
            continue
        bi = t // bucket_ns
        if k > 0 and bi < b[k - 1]:
            sorted_ = False
        keep[k] = i
        b[k] = bi
        k += 1
    rows = np.empty(k, BAR_ROW_NB)
    bucket = np.empty(k, np.int64)
    order = np.arange(k) if sorted_ or k < 2 else _bucket_order(b[:k])
    for j in range(k):
        q = order[j]
        i = keep[q]
        r = rows[j]
        r["sym"] = sym[i]
        r["ts"] = ts[i]
        r["open"] = o[i]
        r["high"] = h[i]
        r["low"] = low[i]
        r["close"] = c[i]
        bucket[j] = b[q]
    return rows, bucket, n_range, n_outside


_EMPTY = np.iinfo(np.int64).min  # a free slot of _TimeSet


@numba.njit(cache=True, nogil=True)
def _set_insert(values, slots, n, shift):  # pragma: no cover - numba
    """Insert ``values`` into the open-addressing set ``slots`` (size ``2**(64 - shift)``, at most
    half full after the insertion); returns the new number of members."""
    mask = np.uint64(slots.size - 1)
    last = _EMPTY
    for i in range(values.size):
        v = values[i]
        if v == last or v == _EMPTY:  # runs of one bar time are common; _EMPTY is tracked outside
            continue
        last = v
        k = (np.uint64(v) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift)  # Fibonacci hashing
        while True:
            cur = slots[k]
            if cur == v:
                break
            if cur == _EMPTY:
                slots[k] = v
                n += 1
                break
            k = (k + np.uint64(1)) & mask
    return n


class _TimeSet:
    """Distinct bar times (int64 ns) seen by a scan: a hash set, 16-32 bytes per distinct time
    (it grows with the number of bar times, not with the rows)."""

    def __init__(self) -> None:
        self.slots = np.full(1024, _EMPTY, np.int64)
        self.n = 0
        self.has_empty = False  # the sentinel value itself seen
        self._sorted: np.ndarray | None = np.empty(0, np.int64)

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        need = 2 * (self.n + values.size)
        if need > self.slots.size:
            members = self.slots[self.slots != _EMPTY]
            self.slots = np.full(1 << int(need - 1).bit_length(), _EMPTY, np.int64)
            self.n = _set_insert(members, self.slots, 0, self._shift())
        self.n = _set_insert(np.ascontiguousarray(values, np.int64), self.slots, self.n, self._shift())
        self.has_empty = self.has_empty or bool(np.any(values == _EMPTY))
        self._sorted = None

    def _shift(self) -> int:
        return 64 - (self.slots.size.bit_length() - 1)

    def sorted(self) -> np.ndarray:
        """The members, ascending."""
        if self._sorted is None:
            members = self.slots[self.slots != _EMPTY]
            if self.has_empty:
                members = np.append(members, _EMPTY)
            self._sorted = np.sort(members)
        return self._sorted


@numba.njit(cache=True, nogil=True)
def _pivot(sym, ts, vals, row_of, times, out, seen):  # pragma: no cover - numba
    """Scatter rows into ``out`` float64 ``(len(vals), n_rows, w)`` (NaN-filled): ``out[q]`` takes
    the column ``vals[q]`` (a tuple of float64 row columns), row ``row_of[sym[i]]`` (skipped when
    < 0), column the index of ``ts[i]`` in ``times`` (sorted, holding every such ``ts``). A later
    row of the same cell overwrites the earlier one; ``seen`` uint8 ``(n_rows * w,)`` (zeroed)
    marks cells written. Returns the number of overwrites."""
    w = times.size
    dups = 0
    j = 0
    for i in range(sym.size):
        r = row_of[sym[i]]
        if r < 0:
            continue
        t = ts[i]
        if j + 1 < w and times[j + 1] == t:  # the next bar of a symbol's run
            j += 1
        elif times[j] != t:
            k = np.searchsorted(times, t)
            if k == w or times[k] != t:  # not a bar time of the universe (a caller's error): skip
                continue
            j = k
        flat = r * w + j
        if seen[flat]:
            dups += 1
        seen[flat] = 1
        for q in range(len(vals)):
            out[q, r, j] = vals[q][i]
    return dups


def bar_interval_ns(topic: str) -> int:
    """The bar length of ``md.bars.<n><s|m|h|d>[.<dataset>]`` in ns (one day for other names)."""
    m = re.fullmatch(r"md\.bars\.([1-9][0-9]*)([smhd])(\.[A-Za-z0-9_-]+)?", topic)
    return int(m.group(1)) * _UNITS[m.group(2)] if m else _UNITS["d"]


class Spill:
    """Rows of a structured dtype (with an int64 ``ts`` field) bucketed by ``ts // bucket_ns`` in
    one temporary file; each :meth:`add` appends one segment per bucket it touches, and a bucket
    reads back as its segments in write order. With a ``sym`` field, each segment also keeps the
    range of symbol codes it holds, so reading a few symbols skips the segments of others (a
    replayed partition brings whole symbols in runs: a segment holds a few neighbouring codes)."""

    def __init__(self, dtype: np.dtype, bucket_ns: int, directory: str | None = None) -> None:
        self.dtype, self.bucket_ns = np.dtype(dtype), int(bucket_ns)
        self._f = tempfile.TemporaryFile(prefix="mystocks-spill-", dir=directory)
        self._fd = self._f.fileno()
        self._size = 0
        self._seg = np.empty((1024, 5), np.int64)  # (bucket, byte offset, rows, lowest sym, highest sym)
        self._has_sym = self.dtype.names is not None and "sym" in self.dtype.names
        self._n_seg = 0
        self.rows = 0

    def add(self, rows: np.ndarray, bucket: np.ndarray | None = None) -> None:
        """Append ``rows`` (their order within a bucket is kept); ``bucket``: their bucket ids
        (``ts // bucket_ns``) when the caller has them."""
        if rows.size == 0:
            return
        b = rows["ts"] // self.bucket_ns if bucket is None else bucket
        if b.size > 1 and np.any(b[1:] < b[:-1]):
            order = _bucket_order(b)
            rows, b = rows[order], b[order]
        cuts = np.flatnonzero(b[1:] != b[:-1]) + 1
        starts = np.concatenate([[0], cuts])
        stops = np.concatenate([cuts, [b.size]])
        data = np.ascontiguousarray(rows).view(np.uint8)
        done = 0
        while done < data.size:
            done += os.pwrite(self._fd, memoryview(data[done:].data), self._size + done)
        item = self.dtype.itemsize
        if self._n_seg + starts.size > len(self._seg):
            self._seg = np.concatenate([self._seg, np.empty((max(len(self._seg), starts.size), 5), np.int64)])
        seg = self._seg[self._n_seg:self._n_seg + starts.size]
        seg[:, 0] = b[starts]
        seg[:, 1] = self._size + starts * item
        seg[:, 2] = stops - starts
        if self._has_sym:
            sym = rows["sym"]
            seg[:, 3] = np.minimum.reduceat(sym, starts)
            seg[:, 4] = np.maximum.reduceat(sym, starts)
        else:
            seg[:, 3], seg[:, 4] = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        self._n_seg += starts.size
        self._size += data.size
        self.rows += rows.size

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bucket ids ascending, rows per bucket)``."""
        seg = self._seg[:self._n_seg]
        ids, inv = np.unique(seg[:, 0], return_inverse=True)
        return ids, np.bincount(inv, weights=seg[:, 2], minlength=ids.size).astype(np.int64)

    def read(self, lo: int, hi: int, codes: np.ndarray | None = None) -> np.ndarray:
        """Rows of buckets ``lo..hi`` (inclusive): by bucket, then in write order. ``codes``
        (sorted symbol codes): only segments that may hold one of them are read (the rows returned
        then include other symbols of those segments; filter by ``sym``)."""
        seg = self._seg[:self._n_seg]
        keep = (seg[:, 0] >= lo) & (seg[:, 0] <= hi)
        if codes is not None:
            keep &= np.searchsorted(codes, seg[:, 3]) < np.searchsorted(codes, seg[:, 4], side="right")
        sel = np.flatnonzero(keep)
        sel = sel[np.argsort(seg[sel, 0], kind="stable")]
        out = np.empty(int(seg[sel, 2].sum()), self.dtype)
        view = out.view(np.uint8)
        pos = 0
        item = self.dtype.itemsize
        for i in sel:
            n = int(seg[i, 2]) * item
            got, off = 0, int(seg[i, 1])
            while got < n:  # straight into ``out`` (a short read continues where it stopped)
                k = os.preadv(self._fd, [view[pos + got:pos + n].data], off + got)
                if k <= 0:
                    raise OSError(f"spill file ended at byte {off + got}, expected {off + n}")
                got += k
            pos += n
        return out

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return self._size

    def close(self) -> None:
        """Delete the file."""
        self._f.close()


@dataclass
class ScanStats:
    """What a scan read: records in the captured bounds, rows kept, and rows dropped by reason."""

    records: int = 0
    kept: int = 0
    undecodable: int = 0
    out_of_range: int = 0
    outside_universe: int = 0
    data_version: dict[str, Any] = field(default_factory=dict)


class BarHistory:
    """A scanned bar history (see the module doc). Use as a context manager (deletes the spill)."""

    def __init__(self, bucket_ns: int, directory: str | None = None) -> None:
        self.table = SymbolTable()
        self.bars = Spill(BAR_ROW, bucket_ns, directory)
        self.signal: Spill | None = None
        self.stats = ScanStats()
        self.signal_stats: ScanStats | None = None
        self.count = np.zeros(0, np.int64)  # bars per symbol code
        self.first = np.zeros(0, np.int64)  # first bar time per symbol code
        self.duplicates = 0
        self.times = _TimeSet()  # distinct bar times of the rows kept
        self._directory = directory

    def __enter__(self) -> BarHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the spill files."""
        self.bars.close()
        if self.signal is not None:
            self.signal.close()

    # ---- scanning ----------------------------------------------------------------------------
    @classmethod
    def scan(cls, kafka: Any, topic: str, start: int | None, end: int | None, universe: Sequence[str] | str,
             tick: Callable[[int, int], None] | None = None, directory: str | None = None,
             store: SchemaStore | None = None) -> BarHistory:
        """Replay ``topic`` over ``[start, end)`` into a new history; ``tick(records done, records
        total)`` after every chunk (raise in it to abandon the scan). ``store``: the process's schema
        store (default the manifest's ids)."""
        from mystocks_gpu.schemas.batch_codec import BatchDecoder
        from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

        hist = cls(BUCKET_BARS * bar_interval_ns(topic), directory)
        try:
            src = ReplaySource(kafka, topic, ReplayRange(start, end))
            total = sum(b.records for b in src.bounds())
            hist.stats.data_version = src.data_version()
            dec = BatchDecoder("mystocks.md.Bar", store, symbols=hist.table)
            keep = _Membership(universe, hist.table)
            lo = -(2**63) if start is None else int(start)
            hi = 2**63 - 1 if end is None else int(end)
            done = 0
            for chunk in src.chunks():
                d = dec.decode(chunk.values)
                c = d.columns
                n = len(chunk.values)
                done += n
                hist.stats.records += n
                hist.stats.undecodable += n - len(d)
                rows, bucket, n_range, n_outside = _select_rows(
                    c["symbol"], c["ts_event"], c["open"], c["high"], c["low"], c["close"], lo, hi,
                    keep.codes(), keep.all, hist.bars.bucket_ns)
                hist.stats.out_of_range += n_range
                hist.stats.outside_universe += n_outside
                hist._account(rows)
                hist.bars.add(rows, bucket)
                hist.stats.kept += rows.size
                if tick is not None:
                    tick(done, total)
        except BaseException:
            hist.close()
            raise
        return hist

    def _account(self, rows: np.ndarray) -> None:
        n = len(self.table)
        if self.count.size < n:
            grow = n - self.count.size
            self.count = np.concatenate([self.count, np.zeros(grow, np.int64)])
            self.first = np.concatenate([self.first, np.full(grow, 2**63 - 1, np.int64)])
        if rows.size:
            ts = np.ascontiguousarray(rows["ts"])
            _count_first(np.ascontiguousarray(rows["sym"]), ts, self.count, self.first)
            self.times.add(ts)

    def scan_signal(self, kafka: Any, topic: str, column: str, start: int | None, end: int | None,
                    tick: Callable[[int, int], None] | None = None, store: SchemaStore | None = None) -> ScanStats:
        """Replay a signal topic (feature vectors: ``values[column]``; bars: ``column``) over
        ``[start, end)`` into the signal spill (see :func:`signal_chunks`: records without a value of
        the column are counted as skipped); rows of symbols with no bar are dropped."""
        st = ScanStats()
        self.signal = Spill(SIGNAL_ROW, self.bars.bucket_ns, self._directory)
        to_hist = np.empty(0, np.int64)  # the chunk reader's symbol codes -> this history's codes
        for local, sym, ts, val in signal_chunks(kafka, topic, column, start, end, st, tick, store):
            if to_hist.size < len(local):
                new = [self.table.get(name) for name in local.symbols[to_hist.size:]]
                to_hist = np.concatenate([to_hist, np.array([-1 if c is None else c for c in new], np.int64)])
            codes = to_hist[sym]
            keep = codes >= 0  # symbols with no bar cannot be traded
            rows = np.empty(int(np.count_nonzero(keep)), SIGNAL_ROW)
            rows["sym"], rows["ts"], rows["signal"] = codes[keep], ts[keep], val[keep]
            st.kept += rows.size
            self.signal.add(rows)
        self.signal_stats = st
        return st

    # ---- the universe and the windows ----------------------------------------------------------
    def symbols(self) -> list[str]:
        """Symbols with at least one bar kept, sorted."""
        names = self.table.symbols
        return sorted(names[int(i)] for i in np.flatnonzero(self.count[:len(names)] > 0))

    def bar_times(self, universe: Sequence[str], max_rows: int = 1 << 20) -> int:
        """Distinct bar times of ``universe`` (the columns of the run), read one window of about
        ``max_rows`` rows at a time (a bar time lies in one bucket, so per-window counts add up)."""
        codes = self._codes(universe)
        member = np.zeros(len(self.table), bool)
        member[codes] = True
        if self._covers_all(member):
            return int(self.times.sorted().size)
        n = 0
        for lo, hi in self._windows(max_rows):
            rows = self.bars.read(lo, hi)
            n += np.unique(rows["ts"][member[rows["sym"]]]).size
        return n

    def _covers_all(self, member: np.ndarray) -> bool:
        """Whether ``member`` (bool by symbol code) holds every symbol with a bar kept: then the
        distinct times of the universe are those of the whole scan (``self.times``)."""
        count = self.count[:member.size]
        return not np.any(count[~member[:count.size]] > 0)

    def _codes(self, symbols: Sequence[str]) -> np.ndarray:
        """Codes of symbols seen by the scan (KeyError for others)."""
        codes = [self.table.get(s) for s in symbols]
        if None in codes:
            raise KeyError(f"symbols not in the history: {[s for s, c in zip(symbols, codes, strict=True) if c is None][:5]}")
        return np.asarray(codes, np.int64)

    def _windows(self, max_rows: int) -> Iterator[tuple[int, int]]:
        ids, rows = self.bars.buckets()
        i = 0
        while i < ids.size:
            j, acc = i, int(rows[i])
            while j + 1 < ids.size and acc + int(rows[j + 1]) <= max_rows:
                j += 1
                acc += int(rows[j])
            yield int(ids[i]), int(ids[j])
            i = j + 1

    def windows(self, symbols: Sequence[str], universe: Sequence[str], keys: Sequence[str],
                max_rows: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """``(matrices, bar times)`` per window in time order: ``matrices[key]`` float64
        ``(len(symbols), w)`` over the distinct bar times of ``universe`` (a superset of
        ``symbols``) in the window; about ``max_rows`` bar rows per window (at least one bucket).
        ``keys``: ``open``/``high``/``low``/``close`` (and ``signal``: the as-of signal)."""
        n_all = len(self.table)
        in_universe = np.zeros(n_all, bool)
        in_universe[self._codes(universe)] = True
        all_times = self.times.sorted() if self._covers_all(in_universe) else None
        row_of = np.full(n_all, -1, np.int64)
        codes = self._codes(symbols)
        row_of[codes] = np.arange(len(symbols))
        carry = np.full(len(symbols), np.nan)
        sig_done = -(2**63)
        prices = [k for k in BAR_PRICES if k in keys]
        # a few symbols over the universe's known bar times (e.g. the curve pass): read only the
        # segments that hold them (the bar times do not come from the rows read)
        few = np.sort(codes) if all_times is not None and len(symbols) < n_all else None
        for lo, hi in self._windows(max_rows):
            rows = self.bars.read(lo, hi, few)
            if all_times is not None:  # the window's bar times: those of the scan in its buckets
                a, b = np.searchsorted(all_times, [lo * self.bars.bucket_ns, (hi + 1) * self.bars.bucket_ns])
                ts = all_times[a:b]
            else:
                ts = np.unique(rows["ts"][in_universe[rows["sym"]]])
            out = np.full((len(prices), len(symbols), ts.size), np.nan)
            if ts.size:
                self.duplicates += int(_pivot(rows["sym"], rows["ts"], tuple(rows[k] for k in prices), row_of, ts,
                                              out, np.zeros(len(symbols) * ts.size, np.uint8)))
            mats = {k: out[i] for i, k in enumerate(prices)}
            if "signal" in keys:
                mats["signal"] = self._align_signal(sig_done, hi, ts, row_of, carry)
                sig_done = hi
            yield mats, ts

    def _align_signal(self, done: int, hi: int, ts: np.ndarray, row_of: np.ndarray, carry: np.ndarray) -> np.ndarray:
        """The signal at each bar time: the last value (by time, then arrival) at or before it;
        ``carry`` holds each symbol's last value before this window and is updated."""
        out = np.full((carry.size, ts.size), np.nan)
        if self.signal is None:
            return out
        rows = self.signal.read(done + 1, hi)
        r = row_of[rows["sym"]]
        rows, r = rows[r >= 0], r[r >= 0]
        order = np.lexsort((rows["ts"], r))  # by symbol row, then time; stable: arrival order kept
        rows, r = rows[order], r[order]
        starts = np.flatnonzero(np.concatenate([[True], r[1:] != r[:-1]])) if r.size else np.empty(0, np.int64)
        stops = np.append(starts[1:], r.size)
        has = np.zeros(carry.size, bool)
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            s = int(r[a])
            t, v = rows["ts"][a:b], rows["signal"][a:b]
            idx = np.searchsorted(t, ts, side="right") - 1
            out[s] = np.where(idx >= 0, v[np.maximum(idx, 0)], carry[s])
            carry[s] = v[-1]
            has[s] = True
        out[~has] = carry[~has, None]
        return out


class _Membership:
    """Which symbol codes belong to the universe (every code for ``"all"``), grown as codes appear."""

    def __init__(self, universe: Sequence[str] | str, table: SymbolTable) -> None:
        self.all = isinstance(universe, str)
        self.names = set() if isinstance(universe, str) else set(universe)
        self.table = table
        self.known = np.zeros(0, bool)

    def codes(self) -> np.ndarray:
        """``member[code]`` for every code of the table so far (empty when :attr:`all`)."""
        n = len(self.table)
        if not self.all and self.known.size < n:
            names = self.table.symbols
            self.known = np.concatenate([self.known, [names[i] in self.names for i in range(self.known.size, n)]])
        return self.known


def signal_chunks(kafka: Any, topic: str, column: str, start: int | None, end: int | None, st: ScanStats,
                  tick: Callable[[int, int], None] | None = None, store: SchemaStore | None = None,
                  ) -> Iterator[tuple[SymbolTable, np.ndarray, np.ndarray, np.ndarray]]:
    """Replay ``topic`` over ``[start, end)`` (event time, ns; every partition to the end offset
    captured at the start) and yield, per replayed chunk, ``(symbols, sym, ts, value)``: int32 codes
    into ``symbols`` (one table for the whole replay), int64 event times and float64 values of
    ``column`` — ``values[column]`` of feature vectors, or a numeric field of bars, model signals or
    any flat record with ``symbol`` and ``ts_event`` — for the rows in range.

    Decoded in batches (``schemas/batch_codec/numeric_columns.py``); the topic's schema is the one its
    first framed record of a readable schema names. Records that do not decode, are of another
    schema, or carry no value of ``column`` (absent from a feature vector, or NaN) are counted in
    ``st.undecodable`` (reported as skipped); rows out of range in ``st.out_of_range``;
    ``st.records`` counts all replayed records.
    ``tick(done, total)`` after every chunk."""
    from mystocks_gpu.schemas.batch_codec.numeric_columns import NumericColumnsDecoder, schema_of
    from mystocks_gpu.schemas.exceptions import SchemaError
    from mystocks_gpu.streams.replay import ReplayRange, ReplaySource

    src = ReplaySource(kafka, topic, ReplayRange(start, end))
    total = sum(b.records for b in src.bounds())
    st.data_version = src.data_version()
    lo = -(2**63) if start is None else int(start)
    hi = 2**63 - 1 if end is None else int(end)
    symbols = SymbolTable()
    dec: NumericColumnsDecoder | None = None
    done = 0
    for chunk in src.chunks():
        values = chunk.values
        n = len(values)
        st.records += n
        done += n
        if dec is None:  # the first framed record of a schema readable as columns decides
            for v in values:
                schema = schema_of(v, store)
                if schema is not None:
                    try:
                        dec = NumericColumnsDecoder(schema, [column], symbols, store)
                    except SchemaError:
                        continue
                    break
        if dec is None or column not in dec.columns:
            st.undecodable += n  # no record of a readable schema yet, or a bar topic without the column
        else:
            got = dec.decode(values)
            val = got.columns[column]
            has = ~np.isnan(val)
            st.undecodable += got.n_bad + int(np.count_nonzero(~has))
            in_range = has & (got.ts >= lo) & (got.ts < hi)
            st.out_of_range += int(np.count_nonzero(has & ~in_range))
            sel = np.flatnonzero(in_range)
            yield symbols, got.sym[sel], got.ts[sel], val[sel]
        if tick is not None:
            tick(done, total)
