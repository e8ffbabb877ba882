"""The batch scheduler's additions for the stream processor: the one-thread planner for small
batches equals the parallel one bit for bit (and ``schedule_batch`` picks by size), per-row
decision times equal the single-order API with each row's ``now_ns``, and a table built in one
pass (``ParamsTable.from_items``) equals one built with repeated ``set``."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.execution import (
    ExecutionConfig,
    ExecutionInputError,
    OrderColumns,
    ParamsTable,
    schedule,
    schedule_batch,
)
from mystocks_gpu.gpu_ops.execution.schedule_batch import prepare_batch
from mystocks_gpu.gpu_ops.execution.schedule_cpu import plan_batch_cpu, plan_batch_serial
from tests.unit.execution.exec_helpers import NS, T0, random_orders, random_params, u_shaped_profile

sb = importlib.import_module("mystocks_gpu.gpu_ops.execution.schedule_batch")


def _universe(n: int, seed: int = 99) -> tuple:
    rng = np.random.default_rng(seed)
    ps = random_params(rng, 10, u_shaped_profile())
    table, codes = ParamsTable.from_params(ps)
    return ps, table, codes, random_orders(rng, n, list(codes), T0), rng


def test_serial_planner_equals_parallel_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    _, table, codes, orders, _ = _universe(3000)
    cols = OrderColumns.from_orders(orders, codes)
    plan = prepare_batch(cols, table, ExecutionConfig(), T0, np)
    for a, b in zip(plan_batch_cpu(*plan.args), plan_batch_serial(*plan.args), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    calls: list[str] = []
    for name in ("plan_batch_cpu", "plan_batch_serial"):
        fn = getattr(sb, name)
        monkeypatch.setattr(sb, name, lambda *a, _f=fn, _n=name: calls.append(_n) or _f(*a))
    schedule_batch(cols, table, now_ns=T0, backend="cpu")
    small = OrderColumns(**{k: getattr(cols, k)[: sb.PARALLEL_MIN_ROWS - 1] for k in cols.__dataclass_fields__})
    schedule_batch(small, table, now_ns=T0, backend="cpu")
    assert calls == ["plan_batch_cpu", "plan_batch_serial"]


def test_per_row_decision_times_equal_the_single_api() -> None:
    ps, table, codes, orders, rng = _universe(300, seed=5)
    now = T0 + rng.integers(-3600, 3600, len(orders)) * NS
    out = schedule_batch(OrderColumns.from_orders(orders, codes), table, now_ns=now, backend="cpu")
    by_sym = {p.symbol: p for p in ps}
    n_ok = n_bad = 0
    for i, o in enumerate(orders):
        try:
            s = schedule(o, by_sym[o.symbol], now_ns=int(now[i]))
        except ExecutionInputError:
            assert out.reject[i] != 0
            n_bad += 1
            continue
        n_ok += 1
        r = out.row(i, o.order_id, o.symbol)
        assert np.array_equal(r.quantities, s.quantities) and np.array_equal(r.times_ns, s.times_ns)
        assert r.score.expected_shortfall == s.score.expected_shortfall and r.start_ns == s.start_ns
    assert n_ok > 150 and n_bad > 10
    with pytest.raises(ExecutionInputError, match="now_ns"):
        schedule_batch(OrderColumns.from_orders(orders, codes), table, now_ns=now[:5], backend="cpu")


def test_params_table_from_items_equals_repeated_set() -> None:
    ps, table, _, _, _ = _universe(1)
    items = [(2 * i + 1, p) for i, p in enumerate(ps)]  # sparse codes
    a = ParamsTable()
    for c, p in items:
        a.set(c, p)
    b = ParamsTable.from_items(items)
    for name in ("price", "sigma", "adv", "spread", "lot", "eta", "gamma", "prof_row", "prof_cum"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.symbols == b.symbols and (a.prof_bucket_s, a.prof_open_s) == (b.prof_bucket_s, b.prof_open_s)
    assert len(ParamsTable.from_items([])) == 0
    other = ps[1].__class__(ps[1].symbol, 1.0, 0.02, 1e6, 0.01, profile=u_shaped_profile(10, 60.0))
    with pytest.raises(ExecutionInputError, match="grid"):
        ParamsTable.from_items([(0, ps[1]), (1, other)])
