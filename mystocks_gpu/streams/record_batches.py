"""Kafka record batches (message format v2) to one buffer of values, with numba.

:func:`parse_fetched` takes the raw record bytes of one fetched partition
(:class:`~mystocks_gpu.streams.kafka_wire.FetchedPartition`) and returns the values of its records
as :class:`~mystocks_gpu.schemas.batch_codec.record_values.RecordValues` plus their offsets, applying
what a ``read_committed`` consumer applies:

- batches of aborted transactions are dropped: the response lists ``(producer_id, first_offset)``
  of the aborted transactions in the fetched range; a transactional batch of a producer with an
  aborted transaction begun at or before the batch's last offset is dropped, until that producer's
  ABORT marker (the algorithm of the Java consumer's ``CompletedFetch``);
- control batches (transaction markers) are never returned, but they advance the position;
- a final partial batch (the response is cut at ``max_bytes``) is left for the next fetch.

Batch headers are read in Python (one ``struct`` call per batch; a producer batch holds thousands
of records); compressed batches are decompressed with cramjam (gzip, snappy raw or xerial-framed,
lz4 frame, zstd) and joined into one buffer; when no kept batch is compressed (bar topics are
stored uncompressed), the records are parsed where they lie in the response, without a copy. The
records of every kept batch are parsed in one numba pass. Layout (Kafka
``DefaultRecordBatch``): baseOffset int64, batchLength int32, partitionLeaderEpoch int32, magic int8,
crc uint32, attributes int16, lastOffsetDelta int32, baseTimestamp int64, maxTimestamp int64,
producerId int64, producerEpoch int16, baseSequence int32, recordCount int32, records. A record:
length varint, attributes int8, timestampDelta varlong, offsetDelta varint, key (varint length,
-1 = null), value (likewise), header count varint, headers; varints are zigzag-encoded.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np

from mystocks_gpu.schemas.batch_codec.primitives import _read_long
from mystocks_gpu.schemas.batch_codec.record_values import RecordValues
from mystocks_gpu.streams.kafka_wire import READ_COMMITTED, FetchedPartition, RawFetchError

HEADER_LEN = 61
_ATTR_COMPRESSION, _ATTR_TRANSACTIONAL, _ATTR_CONTROL = 0x07, 0x10, 0x20
_CONTROL_ABORT = 0


def _decompress(codec: int, data: memoryview) -> memoryview:
    """The records of a compressed batch (a view of cramjam's output: not copied again)."""
    import cramjam

    if codec == 1:
        return memoryview(cramjam.gzip.decompress(data))
    if codec == 2:
        if bytes(data[:8]) == b"\x82SNAPPY\x00":  # xerial framing: 16-byte header, then [int32 len][block]
            out, p = [], 16
            while p + 4 <= len(data):
                (n,) = struct.unpack_from(">i", data, p)
                out.append(bytes(cramjam.snappy.decompress_raw(data[p + 4:p + 4 + n])))
                p += 4 + n
            return memoryview(b"".join(out))
        return memoryview(cramjam.snappy.decompress_raw(data))
    if codec == 3:
        return memoryview(cramjam.lz4.decompress(data))
    if codec == 4:
        return memoryview(cramjam.zstd.decompress(data))
    raise RawFetchError(f"record batch with unknown compression codec {codec}")


def _control_type(records: memoryview) -> int:
    """The type of the control record that starts ``records`` (0 = ABORT, 1 = COMMIT; -1 unreadable)."""
    buf = np.frombuffer(records, np.uint8)
    _len, p, e1 = _read_long(buf, 0, buf.size)
    _tsd, p, e2 = _read_long(buf, p + 1, buf.size)  # + 1: the attributes byte
    _od, p, e3 = _read_long(buf, p, buf.size)
    klen, p, e4 = _read_long(buf, p, buf.size)
    if e1 or e2 or e3 or e4 or klen < 4:
        return -1
    _version, ctype = struct.unpack_from(">hh", records, p)
    return int(ctype)


@numba.njit(cache=True, nogil=True)
def _parse_records(buf, seg_start, seg_end, seg_count, seg_base, offsets, starts, ends, null):  # pragma: no cover
    """Records of every segment (a batch's records region) into the output arrays; returns the
    number parsed, or ``-1 - k`` when record ``k`` is malformed."""
    k = 0
    for s in range(seg_start.size):
        p = seg_start[s]
        end = seg_end[s]
        for _r in range(seg_count[s]):
            ln, p, err = _read_long(buf, p, end)
            if err != 0 or ln < 0 or p + ln > end:
                return -1 - k
            rec_end = p + ln
            p += 1  # attributes
            _tsd, p, err = _read_long(buf, p, rec_end)
            if err != 0:
                return -1 - k
            od, p, err = _read_long(buf, p, rec_end)
            if err != 0:
                return -1 - k
            kl, p, err = _read_long(buf, p, rec_end)
            if err != 0 or p + max(kl, 0) > rec_end:
                return -1 - k
            p += max(kl, 0)
            vl, p, err = _read_long(buf, p, rec_end)
            if err != 0 or p + max(vl, 0) > rec_end:
                return -1 - k
            offsets[k] = seg_base[s] + od
            starts[k] = p
            if vl < 0:
                null[k] = True
                ends[k] = p
            else:
                null[k] = False
                ends[k] = p + vl
            k += 1
            p = rec_end  # headers: not needed by a replay
    return k


def _complete_batches(data: memoryview) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, base offset)`` of every complete batch in ``data``, in order (a partial
    batch at the end of the response is left out)."""
    size = len(data)
    p = 0
    while p + HEADER_LEN <= size:
        base, blen = struct.unpack_from(">qi", data, p)
        stop = p + 12 + blen
        if stop > size:
            return
        yield p, stop, base
        p = stop


def next_position(fp: FetchedPartition, from_offset: int) -> int:
    """The next fetch offset after ``fp`` (as :func:`parse_fetched` returns it), from the batch
    headers alone: a reader can ask for the next fetch before it parses this one."""
    nxt = from_offset
    for p, _stop, base in _complete_batches(fp.records):
        nxt = max(nxt, base + struct.unpack_from(">i", fp.records, p + 23)[0] + 1)
    return nxt


def parse_fetched(fp: FetchedPartition, from_offset: int, isolation: int = READ_COMMITTED
                  ) -> tuple[RecordValues, np.ndarray, int]:
    """``(values, offsets int64 (n,), next fetch offset)`` of the records of ``fp`` at or after
    ``from_offset`` (see the module doc). The next offset is past the last complete batch (control
    and dropped batches included); ``from_offset`` when no batch was complete."""
    data = fp.records
    pending = sorted((first, pid) for pid, first in fp.aborted)
    heapq.heapify(pending)
    aborted_pids: set[int] = set()
    payloads: list[Any] = []
    counts: list[int] = []
    bases: list[int] = []
    starts_in_data: list[int] = []  # where each payload starts in ``data`` (-1: decompressed)
    nxt = from_offset
    for p, stop, base in _complete_batches(data):
        if data[p + 16] != 2:
            raise RawFetchError(f"record batch at offset {base} has message format v{data[p + 16]} (only v2 is read raw)")
        attrs, last_delta = struct.unpack_from(">hi", data, p + 21)
        (pid,) = struct.unpack_from(">q", data, p + 43)
        (count,) = struct.unpack_from(">i", data, p + 57)
        last = base + last_delta
        nxt = max(nxt, last + 1)
        records = data[p + HEADER_LEN:stop]
        control = bool(attrs & _ATTR_CONTROL)
        if isolation == READ_COMMITTED and pid >= 0:
            while pending and pending[0][0] <= last:
                aborted_pids.add(heapq.heappop(pending)[1])
            if control:
                if _control_type(records) == _CONTROL_ABORT:
                    aborted_pids.discard(pid)
                continue
            if attrs & _ATTR_TRANSACTIONAL and pid in aborted_pids:
                continue
        if control or count <= 0 or last < from_offset:
            continue
        codec = attrs & _ATTR_COMPRESSION
        payloads.append(records if codec == 0 else _decompress(codec, records))
        starts_in_data.append(stop - len(records) if codec == 0 else -1)
        counts.append(count)
        bases.append(base)
    if not payloads:
        empty = np.empty(0, np.int64)
        return RecordValues(np.empty(0, np.uint8), empty, empty.copy(), np.empty(0, np.bool_)), empty, nxt
    lens = np.fromiter((memoryview(x).nbytes for x in payloads), np.int64, len(payloads))
    if min(starts_in_data) >= 0:  # all uncompressed: parsed where they are, in the response
        seg_start = np.asarray(starts_in_data, np.int64)
        seg_end = seg_start + lens
        buf = np.frombuffer(data, np.uint8)
    else:
        seg_end = np.cumsum(lens)
        seg_start = seg_end - lens
        payloads.append(b"\0")  # never an empty buffer; one copy of everything
        buf = np.frombuffer(b"".join(payloads), np.uint8)[:-1]
    n = int(sum(counts))
    offsets, starts, ends = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    null = np.empty(n, np.bool_)
    got = _parse_records(buf, seg_start, seg_end, np.asarray(counts, np.int64), np.asarray(bases, np.int64),
                         offsets, starts, ends, null)
    if got < 0:
        raise RawFetchError(f"malformed record {-1 - got} in a fetch of partition {fp.partition}")
    keep = slice(0, got)
    if got and offsets[0] < from_offset:  # the first batch began before the position
        first = int(np.searchsorted(offsets[:got], from_offset))
        keep = slice(first, got)
    return RecordValues(buf, starts[keep], ends[keep], null[keep]), offsets[keep], nxt
