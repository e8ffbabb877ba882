"""Record values held in one buffer: a read-only sequence of ``bytes | None`` with no per-record
Python objects until one is asked for.

The raw replay reader (:mod:`mystocks_gpu.streams.record_batches`) parses Kafka record batches
straight into ``(buffer, starts, ends, null)``; the batch decoders take that as it is
(:func:`~mystocks_gpu.schemas.batch_codec.decoder.gather_values` recognises it), so a replayed
record becomes a decoded row without ever being a Python ``bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np


class RecordValues(Sequence[bytes | None]):
    """Values ``buffer[starts[i]:ends[i]]`` (``None`` where ``null[i]``).

    Args:
        buffer: uint8 ``(nbytes,)``; made read-only here.
        starts: int64 ``(n,)`` first byte of each value.
        ends: int64 ``(n,)`` one past the last byte (``== starts`` for a null value).
        null: bool ``(n,)`` tombstones (null values).
    """

    __slots__ = ("buffer", "ends", "null", "starts")

    def __init__(self, buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray, null: np.ndarray) -> None:
        if not (starts.shape == ends.shape == null.shape) or starts.ndim != 1:
            raise ValueError(f"starts/ends/null must be 1-D of one length: {starts.shape} {ends.shape} {null.shape}")
        buffer = buffer.view()
        buffer.flags.writeable = False
        self.buffer, self.starts, self.ends, self.null = buffer, starts, ends, null

    def __len__(self) -> int:
        return int(self.starts.size)

    @overload
    def __getitem__(self, i: int) -> bytes | None: ...

    @overload
    def __getitem__(self, i: slice) -> RecordValues: ...

    def __getitem__(self, i: int | slice) -> bytes | None | RecordValues:
        if isinstance(i, slice):
            return RecordValues(self.buffer, self.starts[i], self.ends[i], self.null[i])
        if self.null[i]:
            return None
        return self.buffer[self.starts[i]:self.ends[i]].tobytes()

    def __iter__(self) -> Iterator[bytes | None]:
        buf = self.buffer
        for s, e, z in zip(self.starts.tolist(), self.ends.tolist(), self.null.tolist(), strict=True):
            yield None if z else buf[s:e].tobytes()

    def gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(buffer, starts, ends, null rows int64 or None)``, the form of ``gather_values``."""
        nz = np.flatnonzero(self.null)
        return self.buffer, self.starts, self.ends, (nz if nz.size else None)

    @classmethod
    def of(cls, values: Sequence[bytes | None]) -> RecordValues:
        """From a list of values (tests, and readers that have Python bytes already)."""
        n = len(values)
        lens = np.fromiter((0 if v is None else len(v) for v in values), np.int64, n)
        ends = np.cumsum(lens)
        starts = ends - lens
        buf = np.frombuffer(b"".join(v or b"" for v in values) + b"\0", np.uint8)[:-1]
        return cls(buf, starts, ends, np.fromiter((v is None for v in values), np.bool_, n))
