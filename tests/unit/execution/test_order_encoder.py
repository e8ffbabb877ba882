"""The execution processor's numba batch encoder writes exactly the bytes fastavro writes for the
same ``OrderSchedule`` / ``OrderScore`` records (built from the single-order API's Schedule)."""

from __future__ import annotations

import numpy as np

from mystocks_gpu.gpu_ops.execution import OrderColumns, ParamsTable, schedule, schedule_batch
from mystocks_gpu.processors.execution.order_encoder import encode_outputs
from mystocks_gpu.processors.execution.order_records import (
    ORDER_SCHEDULE,
    ORDER_SCORE,
    cap_warning,
    schedule_record,
    score_record,
)
from mystocks_gpu.schemas import AvroCodec
from tests.unit.execution.exec_helpers import T0, random_orders, random_params, u_shaped_profile


def test_batch_encoder_is_byte_identical_to_fastavro() -> None:
    rng = np.random.default_rng(17)
    ps = random_params(rng, 9, u_shaped_profile())
    table, codes = ParamsTable.from_params(ps)
    orders = random_orders(rng, 400, [p.symbol for p in ps], T0)
    orders += [o.__class__(o.order_id + "é", o.symbol, o.side, o.quantity, o.end_ns) for o in orders[:5]]  # UTF-8 ids
    res = schedule_batch(OrderColumns.from_orders(orders, codes), table, now_ns=T0, backend="cpu")
    ok = np.flatnonzero(res.reject == 0)
    assert 300 < ok.size < len(orders)  # some rows rejected (horizons in the past), skipped by the encoder
    by_sym = {p.symbol: p for p in ps}
    ingest = T0 + 123_456_789
    scheds = [schedule(orders[j], by_sym[orders[j].symbol], now_ns=T0) for j in ok]
    caps = [o.max_participation if o.max_participation is not None else 0.25 for o in (orders[j] for j in ok)]
    warnings = [cap_warning(c, s.score.executed_qty, s.score.unfilled_qty).encode() for c, s in zip(caps, scheds, strict=True)]
    assert any(warnings) and not all(warnings)
    codec = AvroCodec()
    sv, cv = encode_outputs(res, ok, [orders[j].order_id.encode() for j in ok], [orders[j].symbol.encode() for j in ok],
                            warnings, np.full(ok.size, T0), np.full(ok.size, ingest),
                            np.array([orders[j].quantity for j in ok]), np.array([by_sym[orders[j].symbol].price for j in ok]),
                            codec.schema_id(ORDER_SCHEDULE), codec.schema_id(ORDER_SCORE))
    for k, (j, s) in enumerate(zip(ok, scheds, strict=True)):
        o = orders[j]
        assert sv[k] == codec.encode(ORDER_SCHEDULE, schedule_record(s, o.quantity, T0, ingest)), o
        assert cv[k] == codec.encode(ORDER_SCORE, score_record(s, o.quantity, by_sym[o.symbol].price, T0, ingest,
                                                               caps[k])), o
    assert encode_outputs(res, np.zeros(0, np.int64), [], [], [], *([np.zeros(0)] * 4), 1, 2) == ([], [])
