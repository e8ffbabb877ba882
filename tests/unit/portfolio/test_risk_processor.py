"""The risk processor (no broker): its ``risk.metrics`` equal closed forms computed here with
numpy / pandas / scipy on the same closes (not with gpu_ops code); outputs do not depend on how the
stream is cut into batches or on changelog restores; positions apply at their event time; every
processor setting takes effect; bad inputs are rejected with the reason."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.processors.risk.config import RiskProcessorConfig, load_processor_config
from mystocks_gpu.processors.risk.positions import encode_positions
from mystocks_gpu.processors.risk.risk_processor import RiskProcessor
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from tests.harness import fresh_interpreter_json
from tests.risk_helpers import S, make_data, run_in_process, same, side_records

DAY = 86_400 * S
T0 = 1_767_571_200 * S  # 2026-01-05 00:00 UTC
SYMS = ["AAA", "BBB", "CCC", "DDD"]
QTY = np.array([100.0, -50.0, 200.0, 80.0])
COST = np.array([40.0, 95.0, 20.0, 60.0])
CAPITAL = 30_000.0


def _closes(T: int = 45, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.array([0.01, 0.02, 0.015, 0.03])
    z = rng.standard_normal((T, 4)) @ np.linalg.cholesky(np.array(
        [[1, .3, .2, .1], [.3, 1, .4, .2], [.2, .4, 1, .3], [.1, .2, .3, 1]])).T
    return np.array([40.0, 90.0, 21.0, 55.0]) * np.exp(np.cumsum(z * vol, axis=0))


def _bars(closes: np.ndarray) -> list[bytes]:
    T, n = closes.shape
    sym = np.tile(np.arange(n, dtype=np.int32), T)
    c = closes.reshape(-1)
    cols = {"symbol": sym, "ts_event": T0 + np.repeat(np.arange(T), n) * DAY, "interval_ns": np.full(T * n, DAY),
            "open": c, "high": c, "low": c, "close": c, "volume": np.ones(T * n), "vwap": c,
            "trades": np.ones(T * n, np.int64)}
    return BatchEncoder("mystocks.md.Bar").encode(cols, SYMS)


def _cfg(**proc: object) -> RiskProcessorConfig:
    return load_processor_config(data={
        "risk": {"interval_ns": DAY, "window": 20, "horizon": 10.0, "confidences": [0.95, 0.99], "lam": 0.94},
        "processor": {"emit_interval_ns": DAY, **proc},
        "sectors": {"AAA": "tech", "BBB": "tech", "CCC": "energy", "DDD": "banks"}}, backend="cpu")


def _positions(limits: dict[str, float] | None = None) -> list[tuple[bytes, bytes | None, int]]:
    hold = list(zip(SYMS, QTY.tolist(), COST.tolist(), strict=True))
    return [(b"A1", encode_positions("A1", T0, hold, limits=limits, capital=CAPITAL), T0 // 1_000_000)]


def _ewma_cov(Rd: np.ndarray, lam: float) -> np.ndarray:
    """RiskMetrics zero-mean EWMA = pandas ewm(adjust=False) of the cross products."""
    k = Rd.shape[1]
    return np.array([[pd.Series(Rd[:, i] * Rd[:, j]).ewm(alpha=1 - lam, adjust=False).mean().iloc[-1]
                      for j in range(k)] for i in range(k)])


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warmed-up"])
def test_metrics_equal_closed_forms_on_the_same_closes(warm: bool) -> None:
    proc = RiskProcessor(_cfg())
    if warm:  # the warm-up's throwaway account, symbols and prices leave no trace in what follows
        proc.warm_up()
        assert not proc.__dict__.get("_key_cache") and not proc._ticks._by_table and not proc._bars._by_table
    closes = _closes()
    T = closes.shape[0]
    R = pd.DataFrame(closes).pct_change().to_numpy()[1:]  # returns of days 1..T-1
    lam, h, W = 0.94, 10.0, 20
    # the VaR limit: the median of the reference 99 % VaR path, so the account breaches and recovers
    ref99 = [norm.ppf(0.99) * math.sqrt(QTY * closes[d] @ _ewma_cov(R[:d], lam) @ (QTY * closes[d]) * h)
             for d in range(2, T - 1)]
    limit = float(np.round(np.median(ref99), 2))
    res = run_in_process(proc, _bars(closes), side_records(_positions({"var": limit})))
    snaps = sorted(res.metrics, key=lambda r: r["ts_event"])
    assert [r["ts_event"] for r in snaps] == [T0 + (d + 1) * DAY for d in range(T - 1)]
    equity = CAPITAL + (closes - COST) @ QTY
    alerts_ref = []
    breached = False
    for d, snap in enumerate(snaps):  # snapshot of day d: closes of day d, returns of days 1..d
        e = QTY * closes[d]
        assert snap["gross"] == pytest.approx(np.abs(e).sum(), rel=1e-12)
        assert snap["net"] == pytest.approx(e.sum(), rel=1e-12)
        assert snap["pnl_inception"] == pytest.approx(((closes[d] - COST) * QTY).sum(), rel=1e-12)
        assert snap["pnl_day"] == pytest.approx(((closes[d] - closes[max(d - 1, 0)]) * QTY).sum(), abs=1e-9)
        assert snap["equity"] == pytest.approx(equity[d], rel=1e-12)
        peak = np.maximum.accumulate(equity[:d + 1])
        assert snap["max_drawdown"] == pytest.approx(np.max(1 - equity[:d + 1] / peak), abs=1e-12)
        assert snap["concentration"] == pytest.approx(np.abs(e).max() / np.abs(e).sum(), rel=1e-12)
        assert snap["by_sector"] == pytest.approx({"tech": e[0] + e[1], "energy": e[2], "banks": e[3]}, rel=1e-12)
        assert snap["observations"] == min(d, W)
        var99 = math.nan
        if d >= 2:
            Rd = R[:d]
            cov = _ewma_cov(Rd, lam)
            sig = math.sqrt(e @ cov @ e) * math.sqrt(h)
            loss = -(R[max(0, d - W):d] @ e) * math.sqrt(h)
            for lvl in snap["var"]:
                c = lvl["confidence"]
                z = norm.ppf(c)
                assert lvl["parametric_var"] == pytest.approx(z * sig, rel=1e-9)
                assert lvl["parametric_cvar"] == pytest.approx(sig * norm.pdf(z) / (1 - c), rel=1e-9)
                hv = np.quantile(loss, c)
                assert lvl["historical_var"] == pytest.approx(hv, rel=1e-9)
                assert lvl["historical_cvar"] == pytest.approx(loss[loss >= hv].mean(), rel=1e-9)
            var99 = norm.ppf(0.99) * sig
            marg = norm.ppf(0.99) * math.sqrt(h) * (cov @ e) / math.sqrt(e @ cov @ e)
            got_m = np.array([p["marginal_var"] for p in snap["positions"]])
            got_c = np.array([p["component_var"] for p in snap["positions"]])
            np.testing.assert_allclose(got_m, marg, rtol=1e-9)
            np.testing.assert_allclose(got_c, e * marg, rtol=1e-9)
            assert got_c.sum() == pytest.approx(var99, rel=1e-9)
        else:
            assert all(math.isnan(lvl["parametric_var"]) for lvl in snap["var"])
        lim = {x["name"]: x for x in snap["limits"]}
        assert lim["var"]["limit"] == limit and math.isinf(lim["gross_exposure"]["limit"])
        now = bool(var99 > limit)
        assert lim["var"]["breached"] == now
        if now and not breached:
            alerts_ref.append((snap["ts_event"], var99))
        breached = now
    assert len(alerts_ref) >= 2, "the scenario should breach, recover and breach again"
    got = sorted((a["ts_event"], a["value"]) for a in res.alerts)
    assert [t for t, _ in got] == [t for t, _ in alerts_ref]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in alerts_ref], rtol=1e-9)
    assert all(a["kind"] == "RISK_LIMIT" and a["threshold"] == limit and a["labels"]["account"] == "A1"
               for a in res.alerts)


_WARM_UP_SCRIPT = """
import json
from mystocks_gpu.gpu_ops.risk import measures
from mystocks_gpu.processors.risk.config import RiskProcessorConfig
from mystocks_gpu.processors.risk.risk_processor import RiskProcessor
proc = RiskProcessor(RiskProcessorConfig(backend="cpu"))
before = {"scenario_pnl": len(measures._scenario_pnl_cpu.signatures), "metrics_encoder": proc._metrics_enc is not None}
proc.warm_up()
print(json.dumps({"before": before, "after": {"scenario_pnl": len(measures._scenario_pnl_cpu.signatures),
                                              "metrics_encoder": proc._metrics_enc is not None}}))
"""


def test_warm_up_compiles_the_historical_var_kernel_and_the_metrics_encoder() -> None:
    """In a fresh interpreter: the historical-VaR scenario kernel has no compiled signature and the
    metrics encoder does not exist before ``warm_up``; after it, both do (a snapshot was emitted)."""
    got = fresh_interpreter_json(_WARM_UP_SCRIPT)
    assert got["before"] == {"scenario_pnl": 0, "metrics_encoder": False}, got
    assert got["after"]["scenario_pnl"] >= 1 and got["after"]["metrics_encoder"], got


def test_outputs_do_not_depend_on_batch_cuts_or_changelog_restores() -> None:
    data = make_data(n_ticks=12_000, n_symbols=16, n_accounts=6, seed=21)
    cfg = load_processor_config(data={"risk": {"interval_ns": S, "window": 15},
                                      "processor": {"emit_interval_ns": 2 * S}}, backend="cpu")
    pos = side_records(data.positions)
    one = run_in_process(RiskProcessor(cfg), data.ticks, pos)
    cuts = run_in_process(RiskProcessor(cfg), data.ticks, pos, sizes=[1, 7, 313, 50, 2000] * 10, roundtrip=True)
    assert len(one.metrics) > 20 and one.alerts
    assert same(one.metrics, cuts.metrics) and same(one.alerts, cuts.alerts)
    # positions take effect at their event time: acc002's new holdings from a third of the way in
    mid = data.t0 + (int(data.cols["ts"][-1]) - data.t0) // 3
    acc2 = [r for r in one.metrics if r["account"] == "acc002"]
    assert {len(r["positions"]) for r in acc2 if r["ts_event"] <= mid} == {6}
    assert {len(r["positions"]) for r in acc2 if r["ts_event"] > mid} == {8}


def test_every_processor_setting_takes_effect() -> None:
    data = make_data(n_ticks=6_000, n_symbols=12, n_accounts=3, seed=8)
    pos = side_records(data.positions)
    base = {"risk": {"interval_ns": S, "window": 10}, "processor": {"emit_interval_ns": 2 * S}}

    def run(sizes: list[int] | None = None, **proc: object) -> object:
        d = {"risk": base["risk"], "processor": {**base["processor"], **proc}}
        return run_in_process(RiskProcessor(load_processor_config(data=d, backend="cpu")), data.ticks, pos, sizes)

    ref = run()
    n_windows = len({r["ts_event"] for r in ref.metrics})  # type: ignore[attr-defined]
    assert len({r["ts_event"] for r in run(emit_interval_ns=S).metrics}) > n_windows  # type: ignore[attr-defined]
    batch = run(sizes=[1000] * 6, emit="batch")
    assert len({r["ts_event"] for r in batch.metrics}) == 6  # type: ignore[attr-defined]
    assert {r["ts_event"] for r in batch.metrics} != {r["ts_event"] for r in ref.metrics}  # type: ignore[attr-defined]
    stale = run(stale_after_ns=1)
    assert any(p["stale"] for r in stale.metrics for p in r["positions"])  # type: ignore[attr-defined]
    assert not any(p["stale"] for r in ref.metrics[3:] for p in r["positions"])  # type: ignore[attr-defined]
    out = run(output_topic="x.metrics", alerts_topic="x.alerts")
    assert same(out.metrics, ref.metrics)  # type: ignore[attr-defined]
    assert RiskProcessor(load_processor_config(data={"processor": {"positions_topic": "x.pos"}})).side_topic == "x.pos"
    lim = run_in_process(RiskProcessor(load_processor_config(data={**base, "default_limits": {"gross_exposure": 1.0}},
                                                             backend="cpu")), data.ticks, pos)
    assert {a["labels"]["limit"] for a in lim.alerts} >= {"gross_exposure"}
    assert all(x["limit"] == 1.0 for r in lim.metrics for x in r["limits"] if x["name"] == "gross_exposure"
               and r["account"] != "acc001")
    # late_ns: a price 3 s older than the stream is applied at the newest time, or dead-lettered
    ticks = list(data.ticks)
    enc = BatchEncoder("mystocks.md.Tick")
    old = {k: v[100:101].copy() for k, v in data.cols.items()}
    old["ts"] = old["ts"] - 3 * S
    ticks.insert(2000, enc.encode(old, data.names)[0])
    d = {"risk": base["risk"], "processor": base["processor"]}
    kept = run_in_process(RiskProcessor(load_processor_config(data=d, backend="cpu")), ticks, pos)
    d2 = {"risk": base["risk"], "processor": {**base["processor"], "late_ns": S}}
    dropped = run_in_process(RiskProcessor(load_processor_config(data=d2, backend="cpu")), ticks, pos)
    assert not [r for r in kept.rejected if r.error_class == "late"]
    assert [r.index for r in dropped.rejected if r.error_class == "late"] == [2000]
    # sectors: the map is also the universe
    sect = load_processor_config(data={"sectors": {data.names[0]: "a"}}, backend="cpu")
    _, rej = RiskProcessor(sect).decode_side(pos, None)  # type: ignore[arg-type]
    assert rej and all(r.error_class == "UnknownSymbol" for r in rej if r.error_class != "ValidationError")
    assert sect.risk.n_sectors == 1 and sect.sector_names == ("a",)


def test_config_errors_name_the_key(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_processor_config(data={"processor": {"emitt": "batch"}})
    with pytest.raises(ConfigError, match="emit must be"):
        load_processor_config(data={"processor": {"emit": "sometimes"}})
    with pytest.raises(ConfigError, match=r"\[risk\]"):
        load_processor_config(data={"risk": {"lam": 2.0}})
    with pytest.raises(ConfigError, match="unknown limit"):
        load_processor_config(data={"default_limits": {"leverage": 2.0}})
    with pytest.raises(ConfigError, match="unknown section"):
        load_processor_config(data={"limits": {}})


def test_positions_validation_messages() -> None:
    proc = RiskProcessor(_cfg())
    good = [("AAA", 1.0, 1.0)]
    recs = side_records([
        (b"a", encode_positions("a", T0, [("AAA", float("inf"), 1.0)]), 0),
        (b"b", encode_positions("b", T0, [("ZZZ", 1.0, 1.0)]), 0),
        (b"c", encode_positions("c", T0, good, capital=-1.0), 0),
        (b"d", encode_positions("d", T0, good, limits={"drawdown": 0.1}), 0),
        (b"e", None, 0),
    ])
    dec, rej = proc.decode_side(recs, None)  # type: ignore[arg-type]
    assert [(r.index, r.error_class) for r in rej] == [(0, "ValidationError"), (1, "UnknownSymbol"),
                                                        (2, "ValidationError")]
    assert "NaN or infinite" in rej[0].message and "ZZZ" in rej[1].message and "capital" in rej[2].message
    assert [u.account for u in dec] == ["d", "e"] and dec[1].symbols is None
    assert math.isnan(dec[0].limits[0]) and dec[0].limits[3] == 0.1
