"""Batch encoder of the execution processor's outputs: ``OrderSchedule`` and ``OrderScore``
records (Confluent-framed Avro) for all accepted rows of a :class:`BatchSchedules` at once,
compiled with numba. Byte-identical to :class:`~mystocks_gpu.schemas.AvroCodec` (fastavro) on the
records of :func:`~mystocks_gpu.processors.execution.order_records.schedule_record` /
``score_record`` (checked by ``tests/unit/execution/test_order_encoder.py``), and about two
orders of magnitude faster: fastavro spends ~1 us per array item, and a schedule has up to
``max_slices`` x 3 of them.

Avro binary (the spec): ``long``/``int``/enum index = zig-zag varint; ``double`` = 8 bytes
little-endian; ``boolean`` = one byte; ``string`` = varint length + UTF-8; ``["null", T]`` =
varint branch (0 null, 1 T) + T; an array = one block (varint count + items) then 0, or just 0
when empty. Field order = the ``.avsc`` files'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from mystocks_gpu.schemas.batch_codec import split_values
from mystocks_gpu.schemas.batch_codec.primitives import _write_long
from mystocks_gpu.schemas.codec import PREFIX

#: the double fields of OrderScore between ``price`` and ``n_slices``, then max_participation
_SCORE_DOUBLES = ("expected_shortfall", "expected_shortfall_bps", "variance", "timing_risk", "impact_cost",
                  "permanent_impact", "temporary_impact", "spread_cost", "sqrt_impact_cost", "objective",
                  "risk_aversion", "kappa", "max_participation")


def _counts(a: np.ndarray) -> np.ndarray:
    """Share counts as int64 (NaN of rejected rows -> 0; those rows are not encoded)."""
    return np.where(np.isnan(a), 0.0, a).astype(np.int64)


def _bits(a: Any) -> np.ndarray:
    """A float64 array's bits as uint64 (contiguous)."""
    return np.ascontiguousarray(a, np.float64).view(np.uint64)


@numba.njit(cache=True, inline="always")
def _u64(out, p, u):  # pragma: no cover - numba
    """The 8 little-endian bytes of ``u`` (a double's bits) at ``out[p:]``."""
    for i in range(8):
        out[p + i] = np.uint8((u >> np.uint64(8 * i)) & np.uint64(0xFF))
    return p + 8


@numba.njit(cache=True, inline="always")
def _bytes(out, p, buf, a, b):  # pragma: no cover - numba
    p = _write_long(out, p, np.int64(b - a))
    for i in range(a, b):
        out[p] = buf[i]
        p += 1
    return p


@numba.njit(cache=True)
def _encode(rows, prefix_sched, prefix_score, id_buf, id_off, sym_buf, sym_off, warn_buf, warn_off,
            ts_event, ts_ingest, quantity, price, side, strategy, start, end, tau, has_limit, limit, n_slices,
            offsets, shares, vol, part, sc, executed, unfilled, out_s, off_s, out_c, off_c):  # pragma: no cover
    """Doubles arrive as their uint64 bits. ``sc`` rows: 0 es, 1 es_bps, 2 var, 3 timing, 4 impact,
    5 perm, 6 temp, 7 spread, 8 sqrt, 9 obj, 10 lam, 11 kappa, 12 max_participation."""
    ps = 0
    pc = 0
    for r in range(rows.size):
        j = rows[r]
        n = n_slices[j]
        a = offsets[j]
        H = end[j] - start[j]
        base, rem = H // n, H % n
        sd = np.int64(0) if side[j] == 1 else np.int64(1)
        # ---- OrderSchedule
        off_s[r] = ps
        for i in range(5):
            out_s[ps + i] = prefix_sched[i]
        ps += 5
        ps = _bytes(out_s, ps, id_buf, id_off[r], id_off[r + 1])
        ps = _write_long(out_s, ps, ts_event[r])
        ps = _write_long(out_s, ps, ts_ingest[r])
        ps = _bytes(out_s, ps, sym_buf, sym_off[r], sym_off[r + 1])
        ps = _write_long(out_s, ps, sd)
        ps = _write_long(out_s, ps, np.int64(strategy[j]))
        ps = _write_long(out_s, ps, quantity[r])
        ps = _write_long(out_s, ps, start[j])
        ps = _write_long(out_s, ps, end[j])
        ps = _u64(out_s, ps, tau[j])
        if not has_limit[j]:
            ps = _write_long(out_s, ps, np.int64(0))
        else:
            ps = _write_long(out_s, ps, np.int64(1))
            ps = _u64(out_s, ps, limit[j])
        ps = _write_long(out_s, ps, n)
        for k in range(n):
            ps = _write_long(out_s, ps, start[j] + k * base + (k * rem) // n)
        ps = _write_long(out_s, ps, np.int64(0))
        ps = _write_long(out_s, ps, n)
        for k in range(n):
            ps = _write_long(out_s, ps, shares[a + k])
        ps = _write_long(out_s, ps, np.int64(0))
        ps = _write_long(out_s, ps, n)
        for k in range(n):
            ps = _u64(out_s, ps, vol[a + k])
        ps = _write_long(out_s, ps, np.int64(0))
        # ---- OrderScore
        off_c[r] = pc
        for i in range(5):
            out_c[pc + i] = prefix_score[i]
        pc += 5
        pc = _bytes(out_c, pc, id_buf, id_off[r], id_off[r + 1])
        pc = _write_long(out_c, pc, ts_event[r])
        pc = _write_long(out_c, pc, ts_ingest[r])
        pc = _bytes(out_c, pc, sym_buf, sym_off[r], sym_off[r + 1])
        pc = _write_long(out_c, pc, sd)
        pc = _write_long(out_c, pc, np.int64(strategy[j]))
        pc = _write_long(out_c, pc, quantity[r])
        pc = _u64(out_c, pc, price[r])
        for c in range(12):
            pc = _u64(out_c, pc, sc[c, j])
        pc = _write_long(out_c, pc, n)
        un = unfilled[j]
        pc = _write_long(out_c, pc, executed[j])
        pc = _write_long(out_c, pc, un)
        out_c[pc] = np.uint8(1) if un > 0 else np.uint8(0)
        pc += 1
        pc = _u64(out_c, pc, sc[12, j])
        pc = _write_long(out_c, pc, n)
        for k in range(n):
            pc = _u64(out_c, pc, part[a + k])
        pc = _write_long(out_c, pc, np.int64(0))
        pc = _bytes(out_c, pc, warn_buf, warn_off[r], warn_off[r + 1])
    off_s[rows.size] = ps
    off_c[rows.size] = pc


def _strings(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(items) + 1, np.int64)
    if items:
        np.cumsum([len(b) for b in items], out=off[1:])
    return np.frombuffer(b"".join(items), np.uint8) if items else np.zeros(0, np.uint8), off


def encode_outputs(res: Any, rows: np.ndarray, order_ids: Sequence[bytes], symbols: Sequence[bytes],
                   warnings: Sequence[bytes], ts_event: np.ndarray, ts_ingest: np.ndarray, quantity: np.ndarray,
                   price: np.ndarray, schedule_id: int, score_id: int) -> tuple[list[bytes], list[bytes]]:
    """Framed ``OrderSchedule`` and ``OrderScore`` values of rows ``rows`` (indices into the host
    :class:`BatchSchedules` ``res``, none rejected); the other arguments are per output row (same
    length as ``rows``): order id / symbol / warning UTF-8 bytes, decision time and ingest time
    (ns), parent quantity (shares), the parameters' reference price."""
    rows = np.ascontiguousarray(rows, np.int64)
    m = rows.size
    if m == 0:
        return [], []
    id_buf, id_off = _strings(order_ids)
    sym_buf, sym_off = _strings(symbols)
    warn_buf, warn_off = _strings(warnings)
    n = np.asarray(res.n_slices, np.int64)[rows]
    strings = (id_off[-1] + sym_off[-1]) + 10 * 2 * m
    cap_s = int(5 * m + strings + m * 140 + 28 * int(n.sum()))
    cap_c = int(5 * m + strings + warn_off[-1] + 10 * m + m * 240 + 8 * int(n.sum()))
    out_s, out_c = np.empty(cap_s, np.uint8), np.empty(cap_c, np.uint8)
    off_s, off_c = np.empty(m + 1, np.int64), np.empty(m + 1, np.int64)
    sc_host = {k: np.asarray(v, np.float64) for k, v in res.scores.items()}
    sc_host["impact_cost"] = sc_host["permanent_impact"] + sc_host["temporary_impact"]
    sc = np.ascontiguousarray(np.stack([sc_host[k] for k in _SCORE_DOUBLES]))
    q = np.asarray(res.shares, np.int64).astype(np.float64)
    vol = np.ascontiguousarray(res.expected_volume, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        part = np.where(q > 0, q / np.where(vol > 0, vol, 0.0), 0.0)  # Schedule.participation
    limit = np.ascontiguousarray(res.limit_price, np.float64)
    _encode(rows, np.frombuffer(PREFIX.pack(0, schedule_id), np.uint8), np.frombuffer(PREFIX.pack(0, score_id), np.uint8),
            id_buf, id_off, sym_buf, sym_off, warn_buf, warn_off, np.ascontiguousarray(ts_event, np.int64),
            np.ascontiguousarray(ts_ingest, np.int64), np.ascontiguousarray(quantity, np.int64),
            _bits(price), np.asarray(res.side, np.int8), np.asarray(res.strategy, np.int8),
            np.asarray(res.start_ns, np.int64), np.asarray(res.end_ns, np.int64), _bits(res.tau_s),
            ~np.isnan(limit), _bits(limit), np.asarray(res.n_slices, np.int64), np.asarray(res.offsets, np.int64),
            np.asarray(res.shares, np.int64), _bits(vol), _bits(part), sc.view(np.uint64),
            _counts(sc_host["executed_qty"]), _counts(sc_host["unfilled_qty"]),
            out_s, off_s, out_c, off_c)
    return split_values(out_s, off_s), split_values(out_c, off_c)
