"""The execution stream processor without a broker (``tests/harness.py``): its batched outputs
equal the single-order API on the same inputs (however the input is cut into batches and with the
state round-tripped through its changelog), parameters apply in log order, every bad input of the
issue is rejected with its reason, and every setting takes effect."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.backend import gpu_available
from mystocks_gpu.gpu_ops.execution import (
    ExecutionConfig,
    MarketParams,
    ParentOrder,
    schedule,
)
from mystocks_gpu.processors.execution.exec_processor import (
    ExecutionProcessor,
    ExecutionProcessorConfig,
    make,
)
from mystocks_gpu.processors.execution.order_records import (
    MARKET_PARAMS,
    PARENT_ORDER,
    order_to_record,
    params_to_record,
)
from mystocks_gpu.schemas import AvroCodec
from tests.harness import cut, fresh_interpreter_json, run_batches
from tests.unit.execution.exec_helpers import NS, T0, random_params, u_shaped_profile

CODEC = AvroCodec()
SCHED, SCORED = "orders.schedule", "orders.scored"


def _params_value(p: MarketParams, ts: int = T0 - NS) -> bytes:
    return CODEC.encode(MARKET_PARAMS, params_to_record(p, ts, "test"))


def _order_value(o: ParentOrder, ts: int, horizon_ns: int = 0) -> bytes:
    return CODEC.encode(PARENT_ORDER, order_to_record(o, ts, horizon_ns))


def _workload(seed: int, n_orders: int = 300, n_syms: int = 12) -> tuple[list[MarketParams], list[tuple[ParentOrder, int, int]]]:
    """Parameters (half with a U-shaped profile, two lot sizes) and orders ``(order, ts_event,
    horizon_ns)``: mixed strategies, sides, start times, optional fields, end or horizon given."""
    rng = np.random.default_rng(seed)
    ps = random_params(rng, n_syms, u_shaped_profile())
    out = []
    for i in range(n_orders):
        p = ps[int(rng.integers(n_syms))]
        ts = T0 + int(rng.integers(0, 3_600)) * NS + int(rng.integers(0, NS))
        start = ts + int(rng.integers(-300, 600)) * NS if i % 3 == 0 else 0
        horizon = int(rng.integers(2, 240)) * 60 * NS + int(rng.integers(0, 60 * NS))
        use_horizon = i % 2 == 0
        end = max(start, ts) + horizon
        o = ParentOrder(f"o{i}", p.symbol, ("buy", "sell")[i % 2], int(rng.integers(1, int(0.05 * p.adv) + 2)), end,
                        start, ("ac", "twap", "vwap", "pov")[i % 4],
                        risk_aversion=float(10 ** rng.uniform(-9, -4)) if i % 5 else None,
                        max_participation=float(rng.uniform(0.01, 1.0)) if i % 4 else None,
                        pov_rate=float(rng.uniform(0.01, 0.5)) if i % 7 == 0 else None,
                        limit_price=float(p.price * rng.uniform(0.9, 1.1)) if i % 6 == 0 else None)
        out.append((o, ts, horizon if use_horizon else 0))
    return ps, out


def _values(ps: list[MarketParams], orders: list[tuple[ParentOrder, int, int]]) -> list[bytes | None]:
    return [_params_value(p) for p in ps] + [_order_value(o, ts, h) for o, ts, h in orders]


def _decoded(res: Any, topic: str) -> list[dict[str, Any]]:
    return [CODEC.decode(v) for v in res.outputs.records.get(topic, ([], [], []))[1]]


def _assert_equals_single_api(got_sched: dict[str, Any], got_score: dict[str, Any], o: ParentOrder, p: MarketParams,
                              ts: int, cfg: ExecutionConfig | None = None) -> None:
    want = schedule(o, p, cfg, now_ns=ts)
    sc = want.score
    assert got_sched["slice_qty"] == want.quantities.tolist()
    assert got_sched["slice_ts"] == want.times_ns.tolist()
    assert got_sched["expected_volume"] == want.expected_volume.tolist()
    assert (got_sched["start_ns"], got_sched["end_ns"], got_sched["tau_s"]) == (want.start_ns, want.end_ns, want.tau_s)
    assert got_sched["strategy"] == o.strategy.upper() and got_sched["side"] == ("BUY" if o.side == "buy" else "SELL")
    for k in ("expected_shortfall", "expected_shortfall_bps", "variance", "timing_risk", "permanent_impact",
              "temporary_impact", "spread_cost", "sqrt_impact_cost", "objective", "risk_aversion", "kappa",
              "max_participation"):
        assert got_score[k] == getattr(sc, k), k  # bit for bit
    assert got_score["impact_cost"] == sc.impact_cost
    assert (got_score["executed_qty"], got_score["unfilled_qty"], got_score["n_slices"]) == \
        (sc.executed_qty, sc.unfilled_qty, want.n_slices)
    assert got_score["capped"] == (sc.unfilled_qty > 0)
    np.testing.assert_array_equal(got_score["participation"], want.participation)
    assert got_score["ts_event"] == ts and got_score["price"] == p.price


@pytest.mark.parametrize(("sizes", "warm"), [([10_000], False), ([1] * 40 + [17, 3, 64], False), ([7] * 100, False),
                                           ([7] * 100, True)])
def test_batched_outputs_equal_the_single_order_api(sizes: list[int], warm: bool) -> None:
    ps, orders = _workload(seed=3)
    values = _values(ps, orders)
    proc = make(backend="cpu")
    if warm:  # the warm-up's throwaway symbols, parameters and orders leave no trace in what follows
        proc.warm_up()
    res = run_batches(proc, cut(values, sizes), roundtrip_state=True)
    assert not res.rejected, res.rejected[:3]
    sched = {r["order_id"]: r for r in _decoded(res, SCHED)}
    score = {r["order_id"]: r for r in _decoded(res, SCORED)}
    assert len(sched) == len(score) == len(orders)
    by_sym = {p.symbol: p for p in ps}
    capped = 0
    for o, ts, _ in orders:
        _assert_equals_single_api(sched[o.order_id], score[o.order_id], o, by_sym[o.symbol], ts)
        capped += score[o.order_id]["capped"]
    assert 0 < capped < len(orders)  # the workload exercises the participation cap both ways
    # keys are the order ids, timestamps the decision times (ms), outputs in input order
    keys, _, ts_ms = res.outputs.records[SCORED]
    assert [k.decode() for k in keys] == [o.order_id for o, _, _ in orders]
    assert ts_ms == [ts // 1_000_000 for _, ts, _ in orders]


_WARM_UP_SCRIPT = """
import json
from mystocks_gpu.gpu_ops.execution import schedule_cpu
from mystocks_gpu.processors.execution import order_encoder
from mystocks_gpu.processors.execution.exec_processor import ExecutionProcessor, ExecutionProcessorConfig
kernels = {"serial": schedule_cpu.plan_batch_serial, "parallel": schedule_cpu.plan_batch_cpu,
           "kappa": schedule_cpu.ac_kappa_cpu, "encoder": order_encoder._encode}
proc = ExecutionProcessor(ExecutionProcessorConfig(backend="cpu"))
before = {k: len(d.signatures) for k, d in kernels.items()}
proc.warm_up()
print(json.dumps({"before": before, "after": {k: len(d.signatures) for k, d in kernels.items()}}))
"""


def test_warm_up_compiles_both_planners_and_the_encoder() -> None:
    """In a fresh interpreter: the one-thread and parallel planners, the Almgren-Chriss kappa and
    the output encoder have no compiled signature before ``warm_up`` and one after."""
    got = fresh_interpreter_json(_WARM_UP_SCRIPT)
    assert got["before"] == dict.fromkeys(got["before"], 0), got
    assert all(n >= 1 for n in got["after"].values()), got


def test_batch_cuts_and_changelog_roundtrip_give_identical_bytes() -> None:
    ps, orders = _workload(seed=4, n_orders=120)
    values = _values(ps, orders)
    a = run_batches(make(backend="cpu"), [values])
    b = run_batches(make(backend="cpu"), cut(values, [5, 1, 30, 2] * 30), roundtrip_state=True)
    for t in (SCHED, SCORED):
        assert a.outputs.records[t][1] == b.outputs.records[t][1]
    # the changelog holds one entry per symbol: the parameter record itself
    proc = make(backend="cpu")
    entries = proc.changelog_entries(b.state, np.arange(len(b.symbols)), b.symbols)
    assert sorted(k.decode() for k, _ in entries) == sorted(p.symbol for p in ps)
    assert {k.decode(): v for k, v in entries} == {p.symbol: _params_value(p) for p in ps}
    blob = proc.state_to_bytes(b.state, b.symbols)
    again = proc.state_from_bytes(blob, b.symbols)
    assert sorted(again.params) == sorted(b.state.params)


def test_parameters_apply_in_log_order() -> None:
    p1 = MarketParams("AAA", 50.0, 0.02, 2e6, 0.05)
    p2 = MarketParams("AAA", 55.0, 0.03, 1e6, 0.08)
    end = T0 + 3_600 * NS
    o = [ParentOrder(f"x{i}", "AAA", "buy", 50_000, end) for i in range(3)]
    values = [_order_value(o[0], T0), _params_value(p1), _order_value(o[1], T0), _params_value(p2),
              _order_value(o[2], T0)]
    for sizes in ([5], [1] * 5, [2, 3]):
        res = run_batches(make(backend="cpu"), cut(values, sizes), roundtrip_state=True)
        assert [r.index for r in res.rejected] == [0]
        assert res.rejected[0].error_class == "MissingMarketParams" and "'AAA'" in res.rejected[0].message
        sched = {r["order_id"]: r for r in _decoded(res, SCHED)}
        score = {r["order_id"]: r for r in _decoded(res, SCORED)}
        _assert_equals_single_api(sched["x1"], score["x1"], o[1], p1, T0)
        _assert_equals_single_api(sched["x2"], score["x2"], o[2], p2, T0)


def test_two_volume_profile_grids_are_both_served() -> None:
    a = MarketParams("AAA", 50.0, 0.02, 2e6, 0.05, profile=u_shaped_profile(78, 300.0))
    b = MarketParams("BBB", 20.0, 0.03, 5e5, 0.02, profile=u_shaped_profile(39, 600.0))
    c = MarketParams("CCC", 80.0, 0.01, 9e5, 0.04)
    end = T0 + 2 * 3_600 * NS
    orders = [ParentOrder(f"v{s}", s, "sell", 40_000, end, 0, "vwap") for s in ("AAA", "BBB", "CCC")]
    res = run_batches(make(backend="cpu"), [[_params_value(p) for p in (a, b, c)] + [_order_value(o, T0) for o in orders]])
    assert not res.rejected
    sched = {r["order_id"]: r for r in _decoded(res, SCHED)}
    score = {r["order_id"]: r for r in _decoded(res, SCORED)}
    for o, p in zip(orders, (a, b, c), strict=True):
        _assert_equals_single_api(sched[o.order_id], score[o.order_id], o, p, T0)
    assert len(res.state.tables) == 2


def _bad_cases() -> list[tuple[str, bytes | None, str, str]]:
    """(name, value, error class, text in the message) for every bad input of the issue."""
    end = T0 + 3_600 * NS
    ok = order_to_record(ParentOrder("b", "AAA", "buy", 10_000, end), T0)

    def rec(**kw: Any) -> bytes:
        return CODEC.encode(PARENT_ORDER, {**ok, **kw})

    nan_params = {**params_to_record(MarketParams("ZZZ", 10.0, 0.02, 1e6, 0.01), T0), "sigma": math.nan}
    return [
        ("zero quantity", rec(order_id="q0", quantity=0), "InvalidOrder", "quantity: must be > 0 shares, got 0"),
        ("negative quantity", rec(order_id="q-", quantity=-500), "InvalidOrder", "got -500"),
        ("horizon in the past", rec(order_id="past", end_ns=T0 - NS), "InvalidOrder", "horizon is in the past"),
        ("horizon shorter than a slice", rec(order_id="short", end_ns=T0 + 30 * NS), "InvalidOrder",
         "shorter than one slice (60 s)"),
        ("short horizon_ns", rec(order_id="short2", end_ns=0, horizon_ns=59 * NS), "InvalidOrder", "shorter than one slice"),
        ("end and horizon", rec(order_id="both", horizon_ns=3_600 * NS), "InvalidOrder", "not both"),
        ("no horizon", rec(order_id="none", end_ns=0), "InvalidOrder", "no horizon"),
        ("unknown symbol", rec(order_id="unk", symbol="NOPE"), "MissingMarketParams", "no market parameters for 'NOPE'"),
        ("NaN risk aversion", rec(order_id="nan1", risk_aversion=math.nan), "InvalidOrder", "risk_aversion: is NaN"),
        ("negative risk aversion", rec(order_id="neg", risk_aversion=-1.0), "InvalidOrder", "risk_aversion"),
        ("NaN participation", rec(order_id="nan2", max_participation=math.nan), "InvalidOrder", "max_participation"),
        ("participation > 1", rec(order_id="cap", max_participation=1.5), "InvalidOrder",
         "max_participation: must be in (0, 1], got 1.5"),
        ("zero pov rate", rec(order_id="pov", pov_rate=0.0), "InvalidOrder", "pov_rate"),
        ("negative limit", rec(order_id="lim", limit_price=-1.0), "InvalidOrder", "limit_price"),
        ("inf limit", rec(order_id="lim2", limit_price=math.inf), "InvalidOrder", "limit_price"),
        ("empty order id", rec(order_id=""), "InvalidOrder", "order_id"),
        ("garbage bytes", b"\xde\xad\xbe\xef not avro", "DecodeError", "magic"),
        ("unknown schema id", b"\x00\x00\x00\x30\x39" + rec(order_id="sid")[5:], "UnknownSchemaId", "12345"),
        ("tombstone", None, "DecodeError", "tombstone"),
        ("wrong schema", CODEC.encode("mystocks.md.Trade", {"symbol": "AAA", "ts_event": T0, "seq": 1, "price": 1.0,
                                                            "size": 1.0, "side": 1}), "WrongSchema", "Trade"),
        ("NaN market parameter", CODEC.encode(MARKET_PARAMS, nan_params), "InvalidMarketParams", "sigma"),
        ("negative ADV", CODEC.encode(MARKET_PARAMS, {**params_to_record(MarketParams("ZZ", 10.0, 0.02, 1e6, 0.01), T0),
                                                      "adv": -5.0}), "InvalidMarketParams", "adv"),
    ]


def test_every_bad_input_is_rejected_with_its_reason() -> None:
    p = MarketParams("AAA", 50.0, 0.02, 2e6, 0.05)
    cases = _bad_cases()
    good = ParentOrder("good", "AAA", "sell", 20_000, T0 + 3_600 * NS)
    values = [_params_value(p), *(c[1] for c in cases), _order_value(good, T0)]
    res = run_batches(make(backend="cpu"), cut(values, [3, 4, 100]))
    got = {r.index: r for r in res.rejected}
    assert sorted(got) == list(range(1, len(cases) + 1))  # every bad one, nothing else
    for i, (name, _, cls, text) in enumerate(cases, start=1):
        assert got[i].error_class == cls, (name, got[i])
        assert text in got[i].message, (name, got[i].message)
    assert [r["order_id"] for r in _decoded(res, SCORED)] == ["good"]
    assert res.outputs.sources[SCORED].tolist() == [len(values) - 1]  # an output names its input (oversize -> DLQ)


def test_a_cap_that_cannot_fill_is_flagged_in_the_score_not_rejected() -> None:
    p = MarketParams("AAA", 50.0, 0.02, 1e6, 0.05)  # 1M shares / 23 400 s: ~2 564 shares per minute
    o = ParentOrder("big", "AAA", "buy", 200_000, T0 + 30 * 60 * NS, max_participation=0.1)
    res = run_batches(make(backend="cpu"), [[_params_value(p), _order_value(o, T0)]])
    assert not res.rejected
    (score,) = _decoded(res, SCORED)
    (sched,) = _decoded(res, SCHED)
    # by hand: 30 slices of 60 s, each capped at floor(0.1 * 1e6 / 23400 * 60 / 100) lots of 100
    per_slice = math.floor(0.1 * 1e6 / 23_400 * 60 / 100) * 100
    assert sched["slice_qty"] == [per_slice] * 30
    assert score["capped"] and score["executed_qty"] == 30 * per_slice
    assert score["unfilled_qty"] == 200_000 - 30 * per_slice
    assert f"cannot fill {200_000 - 30 * per_slice:,} of 200,000 shares" in score["warning"]
    assert max(score["participation"]) <= 0.1


def test_settings_take_effect() -> None:
    p = MarketParams("AAA", 50.0, 0.02, 2e6, 0.05)
    o = ParentOrder("s", "AAA", "buy", 30_000, T0 + 3_600 * NS)
    values = [_params_value(p), _order_value(o, T0)]
    model = ExecutionConfig(slice_ns=300 * NS, risk_aversion=1e-5, max_participation=0.5)
    cfg = ExecutionProcessorConfig(model=model, schedule_topic="a.schedule", scored_topic="a.scored", backend="cpu")
    res = run_batches(ExecutionProcessor(cfg), [values])
    (sched,) = [CODEC.decode(v) for v in res.outputs.records["a.schedule"][1]]
    (score,) = [CODEC.decode(v) for v in res.outputs.records["a.scored"][1]]
    _assert_equals_single_api(sched, score, o, p, T0, model)
    assert score["n_slices"] == 12 and score["risk_aversion"] == 1e-5
    # decision time = the batch's ingest time instead of the order's event time
    later = T0 + 600 * NS
    ing = run_batches(ExecutionProcessor(ExecutionProcessorConfig(decision_time="ingest", backend="cpu")), [values],
                      ingest_ns=later)
    (s2,) = _decoded(ing, SCHED)
    assert s2["start_ns"] == later and s2["ts_event"] == later
    _assert_equals_single_api(s2, _decoded(ing, SCORED)[0], o, p, later)
    # --output-topic mapping of `run execution`
    assert make(output_topic="t.out.x.scored").output_topics == ("t.out.x.schedule", "t.out.x.scored")
    assert make(output_topic="mine").output_topics == ("mine.schedule", "mine")
    for bad in ({"decision_time": "soon"}, {"backend": "tpu"}, {"scored_topic": "orders.schedule"},
                {"model": {"slice_ns": 1}}):
        with pytest.raises(ConfigError):
            ExecutionProcessorConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available()[0], reason=f"no GPU: {gpu_available()[1]}")
def test_gpu_backend_processor_equals_cpu() -> None:
    ps, orders = _workload(seed=8, n_orders=400)
    values = _values(ps, orders)
    cpu = run_batches(make(backend="cpu"), cut(values, [50] * 20))
    gpu = run_batches(make(backend="gpu"), cut(values, [50] * 20))
    assert cpu.outputs.records[SCHED][1] == gpu.outputs.records[SCHED][1]  # schedules byte for byte
    for a, b in zip(_decoded(cpu, SCORED), _decoded(gpu, SCORED), strict=True):
        assert a.keys() == b.keys()
        for k, v in a.items():
            if isinstance(v, float):
                assert v == pytest.approx(b[k], rel=1e-13, nan_ok=True), k  # kappa's log: libm vs CUDA
            else:
                assert v == b[k], k
