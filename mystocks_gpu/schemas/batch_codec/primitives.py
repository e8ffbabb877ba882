"""numba primitives inlined into every generated codec loop (varints, zig-zag), and the
globals a generated module sees. A change here changes the compile-cache key (``code_cache``)."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from mystocks_gpu.schemas.batch_codec.status import Status
from mystocks_gpu.schemas.symbols import utf8_ok

_TRUNC = int(Status.TRUNCATED)
_OVERFLOW = int(Status.VARINT_OVERFLOW)


@numba.njit(cache=True, inline="always")
def _unzigzag(u):  # pragma: no cover - numba
    """The int64 a zig-zag encoded uint64 holds (the inverse of :func:`_zigzag`)."""
    return np.int64((u >> np.uint64(1)) ^ (np.uint64(0) - (u & np.uint64(1))))


@numba.njit(cache=True, inline="always")
def _read_long_tail(buf, p, end):  # pragma: no cover - numba
    """:func:`_read_long` within 10 bytes of ``end``: every byte bounds-checked."""
    u = np.uint64(0)
    shift = 0
    while True:
        if p >= end:
            return np.int64(0), p, _TRUNC
        b = buf[np.uint64(p)]
        p += 1
        if shift == 63 and b > 1:  # a 10th byte may only hold bit 63
            return np.int64(0), p, _OVERFLOW
        u |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            return _unzigzag(u), p, 0
        shift += 7


@numba.njit(cache=True, inline="always")
def _read_long(buf, p, end):  # pragma: no cover - numba
    """Zig-zag LEB128 at ``buf[p:end]`` -> ``(int64 value, next p, status)``; ``0 <= p``.

    Indexed unsigned: numba adds a negative-index branch to every signed index, which cost this
    loop and every generated codec loop about a third of their time. With 10 bytes left (the
    longest varint) the bytes are read without a bounds check each; nearer ``end``,
    :func:`_read_long_tail` (same results)."""
    if p + 10 > end:
        return _read_long_tail(buf, p, end)
    q = np.uint64(p)
    u = np.uint64(0)
    for j in range(9):
        b = buf[q + np.uint64(j)]
        u |= np.uint64(b & 0x7F) << np.uint64(7 * j)
        if b < 0x80:
            return _unzigzag(u), p + j + 1, 0
    b = buf[q + np.uint64(9)]
    if b > 1:  # a 10th byte may only hold bit 63
        return np.int64(0), p + 10, _OVERFLOW
    u |= np.uint64(b) << np.uint64(63)
    return _unzigzag(u), p + 10, 0


@numba.njit(cache=True, inline="always")
def _varint_len(u):  # pragma: no cover - numba
    n = 1
    while u >= np.uint64(0x80):
        u >>= np.uint64(7)
        n += 1
    return n


@numba.njit(cache=True, inline="always")
def _zigzag(v):  # pragma: no cover - numba
    v = np.int64(v)
    return np.uint64((v << np.int64(1)) ^ (v >> np.int64(63)))


@numba.njit(cache=True, inline="always")
def _write_long(out, p, v):  # pragma: no cover - numba
    """Write ``v`` as a zig-zag varint at ``out[p:]``; returns the next position."""
    u = _zigzag(v)
    while u >= np.uint64(0x80):
        out[p] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        p += 1
    out[p] = np.uint8(u)
    return p + 1


NB_GLOBALS: dict[str, Any] = {
    "np": np, "_read_long": _read_long, "_utf8_ok": utf8_ok,
    "_zigzag": _zigzag, "_write_long": _write_long, "_varint_len": _varint_len,
    **{f"S_{s.name}": int(s) for s in Status},
}
