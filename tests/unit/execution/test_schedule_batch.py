"""Batched scheduling: == the single-order API row by row, the GPU-structured array program (run with
xp = numpy) == the numba CPU twin, reject codes == the single API's error fields, GPU == CPU."""

from __future__ import annotations

import numpy as np
import pytest

from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.gpu_ops.execution import (
    REJECTS,
    SCORE_COLUMNS,
    ExecutionConfig,
    ExecutionInputError,
    OrderColumns,
    ParamsTable,
    ParentOrder,
    VolumeProfile,
    prepare,
    schedule,
    schedule_batch,
)
from mystocks_gpu.gpu_ops.execution.schedule_batch import prepare_batch
from mystocks_gpu.gpu_ops.execution.schedule_cpu import ac_kappa_cpu, plan_batch_cpu
from mystocks_gpu.gpu_ops.execution.schedule_xp import plan_batch_xp
from tests.unit.execution.exec_helpers import NS, T0, random_orders, random_params, u_shaped_profile

_GPU_OK, _GPU_WHY = gpu_available()
needs_gpu = pytest.mark.skipif(not _GPU_OK, reason=f"no GPU: {_GPU_WHY}")


@pytest.fixture(scope="module")
def universe() -> tuple[list, ParamsTable, dict[str, int], list[ParentOrder]]:
    rng = np.random.default_rng(12345)
    ps = random_params(rng, 12, u_shaped_profile())
    table, codes = ParamsTable.from_params(ps)
    orders = random_orders(rng, 400, list(codes), T0)
    return ps, table, codes, orders


def test_batch_equals_single(universe: tuple) -> None:
    ps, table, codes, orders = universe
    cfg = ExecutionConfig()
    out = schedule_batch(OrderColumns.from_orders(orders, codes), table, cfg, now_ns=T0, backend="cpu")
    models = {p.symbol: prepare(p, cfg) for p in ps}
    n_ok = 0
    for i, o in enumerate(orders):
        try:
            s = schedule(o, models[o.symbol], now_ns=T0)
        except ExecutionInputError as exc:
            assert out.reject[i] != 0 and REJECTS[int(out.reject[i])][0] == exc.field
            continue
        n_ok += 1
        assert out.reject[i] == 0, out.reject_message(i)
        r = out.row(i, o.order_id, o.symbol)
        assert np.array_equal(r.quantities, s.quantities)
        assert np.array_equal(r.expected_volume, s.expected_volume)
        assert np.array_equal(r.times_ns, s.times_ns)
        assert (r.side, r.strategy, r.n_slices, r.tau_s, r.limit_price) == \
            (s.side, s.strategy, s.n_slices, s.tau_s, s.limit_price)
        for name in SCORE_COLUMNS:
            assert getattr(r.score, name) == pytest.approx(getattr(s.score, name), rel=1e-14, abs=0), name
    assert n_ok > 300


def test_xp_program_equals_numba_twin(universe: tuple) -> None:
    _, table, codes, orders = universe
    plan = prepare_batch(OrderColumns.from_orders(orders, codes), table, ExecutionConfig(), T0, np)
    cpu = plan_batch_cpu(*plan.args)
    gpu_structured = plan_batch_xp(np, *plan.args)
    for a, b in zip(cpu, gpu_structured, strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b, equal_nan=True)  # bit for bit


def test_rejects_name_the_same_fields_as_the_single_api() -> None:
    p = random_params(np.random.default_rng(3), 1, None)[0]
    table, codes = ParamsTable.from_params([p])
    table.set(3, p)  # code 2 never set: missing parameters
    base = {"order_id": "x", "symbol": p.symbol, "side": "buy", "quantity": 1000, "end_ns": T0 + 3600 * NS}
    bad = [
        ({"side": "hold"}, "side"), ({"strategy": "moon"}, "strategy"), ({"quantity": 0}, "quantity"),
        ({"end_ns": T0 - NS}, "end_ns"), ({"end_ns": T0 + 10 * NS}, "end_ns"),
        ({"risk_aversion": -1.0}, "risk_aversion"), ({"max_participation": 1.5}, "max_participation"),
        ({"pov_rate": 0.0}, "pov_rate"), ({"limit_price": -3.0}, "limit_price"),
    ]
    orders = [ParentOrder(**{**base, **kw}) for kw, _ in bad]  # type: ignore[arg-type]
    cols = OrderColumns.from_orders(orders, codes)
    out = schedule_batch(cols, table, now_ns=T0, backend="cpu")
    for i, (o, (_, field)) in enumerate(zip(orders, bad, strict=True)):
        with pytest.raises(ExecutionInputError) as ei:
            schedule(o, p, now_ns=T0)
        assert ei.value.field == field
        assert REJECTS[int(out.reject[i])][0] == field
        assert out.reject_message(i).startswith(field)
        assert np.isnan(out.scores["expected_shortfall"][i]) and out.offsets[i + 1] == out.offsets[i]
    sym = np.array([0, 2, 9, -1, 3], dtype=np.int32)
    ok = OrderColumns.from_orders([ParentOrder(**base)] * 5, codes)  # type: ignore[arg-type]
    ok.sym = sym
    out = schedule_batch(ok, table, now_ns=T0, backend="cpu")
    assert out.reject.tolist() == [0, 11, 10, 10, 0]
    with pytest.raises(ExecutionInputError):
        out.row(1)


def test_nan_columns_mean_defaults_and_eta_reject() -> None:
    p = random_params(np.random.default_rng(4), 1, None)[0]
    table, codes = ParamsTable.from_params([p])
    o = ParentOrder("a", p.symbol, "sell", 5000, T0 + 1800 * NS)
    out = schedule_batch(OrderColumns.from_orders([o], codes), table, now_ns=T0, backend="cpu")
    assert out.scores["risk_aversion"][0] == ExecutionConfig().risk_aversion
    assert out.limit_price[0] != out.limit_price[0]  # NaN: no limit
    from dataclasses import replace

    table.set(0, replace(p, eta=1e-12, gamma=1.0))
    out = schedule_batch(OrderColumns.from_orders([o], codes), table, now_ns=T0, backend="cpu")
    assert REJECTS[int(out.reject[0])][0] == "eta"


def test_profile_grid_must_match() -> None:
    a, b = random_params(np.random.default_rng(5), 2, None)
    from dataclasses import replace

    t = ParamsTable()
    t.set(0, replace(a, profile=u_shaped_profile()))
    with pytest.raises(ExecutionInputError) as ei:
        t.set(1, replace(b, profile=VolumeProfile((1.0, 2.0), 60.0)))
    assert ei.value.field == "profile"


@pytest.mark.gpu
@needs_gpu
def test_gpu_batch_equals_cpu(universe: tuple) -> None:
    _, table, codes, orders = universe
    cols = OrderColumns.from_orders(orders, codes)
    cpu = schedule_batch(cols, table, now_ns=T0, backend="cpu")
    gpu = schedule_batch(cols, table, now_ns=T0, backend="gpu").to_host()
    assert np.array_equal(cpu.reject, gpu.reject) and np.array_equal(cpu.offsets, gpu.offsets)
    assert np.array_equal(cpu.shares, gpu.shares)
    assert np.array_equal(cpu.expected_volume, gpu.expected_volume)
    for k in SCORE_COLUMNS:  # same IEEE operations; kappa's log (libm vs CUDA) may differ in the last bit
        np.testing.assert_allclose(cpu.scores[k], gpu.scores[k], rtol=1e-13, err_msg=k)


def test_batch_kappa_is_the_c_library_log_bit_for_bit() -> None:
    """The CPU batch's kappa is ``-math.log(q) / tau`` exactly, as the single-order API computes it
    (NumPy's SIMD ``log`` on AVX-512 machines differs from it in the last bit for ~0.6 % of inputs)."""
    import math

    rng = np.random.default_rng(5)
    q = rng.uniform(1e-9, 1.0, 20_000)
    q[:3] = (0.0, 1.0, 0.5)
    tau = rng.uniform(0.1, 600.0, q.size)
    is_ac = rng.random(q.size) < 0.8
    is_ac[:3] = True
    got = ac_kappa_cpu(is_ac, q, tau)
    want = [(-math.log(a) / t if a > 0.0 else math.inf) if ac else 0.0 for a, t, ac in zip(q, tau, is_ac, strict=True)]
    assert got.tolist() == want
    assert got[0] == math.inf and got[1] == 0.0 and not np.any(got[~is_ac])
