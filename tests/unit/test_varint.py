"""The codecs' varint reader (``_read_long``: an unchecked fast path with 10 bytes left, a checked
tail near the end) against fastavro's long encoding and a plain-Python reading of random bytes."""

from __future__ import annotations

import io

import fastavro
import numba
import numpy as np
import pytest

from mystocks_gpu.schemas.batch_codec.primitives import _read_long
from mystocks_gpu.schemas.batch_codec.status import Status


@numba.njit(cache=False)
def _read(buf, p, end):  # pragma: no cover - numba
    return _read_long(buf, p, end)


def _python_read(data: bytes, p: int, end: int) -> tuple[int, int, int]:
    """Zig-zag LEB128 as the Avro spec reads it; a 10th byte may hold only bit 63."""
    u, shift = 0, 0
    while True:
        if p >= end:
            return 0, p, int(Status.TRUNCATED)
        b = data[p]
        p += 1
        if shift == 63 and b > 1:
            return 0, p, int(Status.VARINT_OVERFLOW)
        u |= (b & 0x7F) << shift
        if b < 0x80:
            v = (u >> 1) ^ -(u & 1)
            return v, p, 0
        shift += 7


EDGES = [0, 1, -1, 63, -64, 64, 2**31 - 1, -(2**31), 2**62, -(2**62), 2**63 - 1, -(2**63), 1_777_689_380_521_000_000]


@pytest.mark.parametrize("pad", [0, 3, 16])
def test_fastavro_longs_read_back_near_and_far_from_the_end(pad: int) -> None:
    for v in EDGES:
        f = io.BytesIO()
        fastavro.schemaless_writer(f, "long", v)
        enc = f.getvalue()
        buf = np.frombuffer(b"\x07" + enc + b"\xff" * pad, np.uint8)
        got, p, err = _read(buf, 1, 1 + len(enc) + pad)
        assert (got, p, err) == (v, 1 + len(enc), 0), v


def test_random_bytes_read_as_plain_python_reads_them() -> None:
    rng = np.random.default_rng(5)
    for _ in range(3000):
        n = int(rng.integers(1, 14))
        # bytes with continuation bits more often than not, so long and overflowing varints appear
        raw = (rng.integers(0, 256, n) | (rng.random(n) < 0.8) * 0x80).astype(np.uint8)
        raw[rng.random(n) < 0.15] &= 0x7F
        data = raw.tobytes()
        for end in range(n + 1):
            got = _read(raw, 0, end)
            assert tuple(int(x) for x in got) == _python_read(data, 0, end), (data, end)
