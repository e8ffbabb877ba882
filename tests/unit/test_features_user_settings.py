"""The features pipeline as a user configures and reads it: ``[features]`` settings (TOML, env,
CLI) validated and taking effect, recorded in the output headers, documented in ``--help`` and the
README; DLQ messages naming the late interval; event time going backwards; the loader's exact
decimal timestamps. Values are checked against the independent pandas reference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mystocks_gpu.data.history_loader import LoadError, LoadOptions, load_file
from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.gpu_ops.features import TickFeatureEngine
from mystocks_gpu.gpu_ops.features_config import FeatureConfig, feature_docs
from mystocks_gpu.infra.config import load_settings, with_section
from mystocks_gpu.processors.tick_features import (
    BARS_HEADER,
    FEATURES_HEADER,
    FeaturesProcessorConfig,
    TickFeaturesProcessor,
    config_from_settings,
)
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.topics import get
from tests.conftest import ROOT, run_cli
from tests.harness import cut, run_batches
from tests.unit.reference_features import (
    random_ticks,
    reference_bars,
    reference_features,
    to_columns,
)
from tests.unit.test_features_ops import assert_features

CODEC = AvroCodec()
SEC = 10**9
T0 = 1_777_689_360 * SEC  # a multiple of 60 s


def _valid(df: pd.DataFrame) -> pd.DataFrame:
    """The reference generator's ticks as the topic validation accepts them (trades with size > 0)."""
    return df.assign(size=np.where((df["kind"] == 0) & (df["size"] <= 0), 1.0, df["size"]))


def _values(df: pd.DataFrame, names: list[str], seq: np.ndarray | None = None) -> list[bytes]:
    cols = {k: df[k].to_numpy() for k in ("sym", "ts", "kind", "price", "size", "side", "bid", "ask",
                                          "bid_size", "ask_size")}
    cols["side"] = cols["side"].astype(np.int32)
    cols["seq"] = np.arange(len(df), dtype=np.int64) if seq is None else seq
    return BatchEncoder("mystocks.md.Tick").encode(cols, names)


# ---- settings ---------------------------------------------------------------------------------------
def test_features_section_layers_toml_env_and_cli(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('[features]\nwindow_ticks = 5\nfeatures = ["ret", "ema", "roll_mean"]\nema_spans = [3]\n'
                 "allowed_lateness_s = 1.5\n")
    s = load_settings(f, environ={"MYSTOCKS_FEATURES__BAR_INTERVALS_S": "1, 5", "MYSTOCKS_FEATURES__WINDOW_S": "0.25"})
    fs = s.features
    assert (fs.window_ticks, fs.features, fs.ema_spans, fs.bar_intervals_s, fs.window_s) == (
        5, ("ret", "ema", "roll_mean"), (3,), (1.0, 5.0), 0.25)
    s = with_section(s, "features", {"allowed_lateness_s": "0.001", "max_disorder_s": "2", "close_on_stop": "false"})
    cfg = config_from_settings(s.features)
    assert cfg.allowed_lateness_ns == 1_000_000 and cfg.features.max_disorder_ns == 2 * SEC  # exact ns, CLI wins
    assert cfg.features.window_ns == 250_000_000 and cfg.bar_intervals_ns == (SEC, 5 * SEC)
    assert cfg.features.output_names() == ["ret", "ema_3", "roll_mean"]
    assert not s.features.close_on_stop
    assert TickFeaturesProcessor(cfg).output_topics == ("features.ticks", "md.bars.1s", "md.bars.5s")
    assert get("md.bars.5s").schema == "mystocks.md.Bar" and get("md.bars.5s.dlq").schema is None


@pytest.mark.parametrize("env, words", [
    ({"MYSTOCKS_FEATURES__FEATURES": "ret,bogus"}, "unknown feature name(s) ['bogus']"),
    ({"MYSTOCKS_FEATURES__WINDOW_TICKS": "1"}, "window_ticks must be in [2, 4096]"),
    ({"MYSTOCKS_FEATURES__WINDOW_TICKS": "ten"}, "features.window_ticks: expected an integer"),
    ({"MYSTOCKS_FEATURES__BAR_INTERVALS_S": "1,0.0005"}, "features.bar_intervals_s: 0.0005 s is not a whole number"),
    ({"MYSTOCKS_FEATURES__BAR_INTERVALS_S": "1,1"}, "duplicates"),
    ({"MYSTOCKS_FEATURES__ALLOWED_LATENESS_S": "-1"}, "features.allowed_lateness_s must be >= 0"),
    ({"MYSTOCKS_FEATURES__EMA_SPANS": "10,x"}, "features.ema_spans[1]: expected an integer"),
])
def test_config_show_rejects_bad_features_settings_in_one_line(env: dict[str, str], words: str) -> None:
    r = run_cli("config", "show", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("mystocks-gpu: error: ") and words in line, line


def test_config_show_prints_the_effective_features_settings() -> None:
    r = run_cli("config", "show", env={"MYSTOCKS_FEATURES__ALLOWED_LATENESS_S": "1.5",
                                       "MYSTOCKS_FEATURES__IDLE_CLOSE_S": "5"})
    assert r.returncode == 0, r.stderr
    fs = json.loads(r.stdout)["features"]
    assert fs["allowed_lateness_s"] == 1.5 and fs["idle_close_s"] == 5.0 and fs["bar_intervals_s"] == [1.0, 60.0]
    assert fs["features"] == ["all"] and fs["window_ticks"] == 20 and fs["close_on_stop"] is True


def test_run_flags_for_features_only() -> None:
    r = run_cli("run", "aggregate", "--window-s", "2")
    assert r.returncode == 2 and "applies to `run features` only" in r.stderr, r.stderr


# ---- settings take effect; recorded with the output --------------------------------------------------
def test_settings_shape_the_values_bars_and_headers() -> None:
    df = _valid(random_ticks(seed=4, n=2500, n_symbols=6, late_symbol=False))
    names = [f"S{i}" for i in range(6)]
    s = with_section(load_settings(environ={}), "features", {
        "features": "ret,ema,roll_mean,roll_std,time_mean,vwap_roll", "ema_spans": "3,7", "window_ticks": "5",
        "window_s": "0.25", "bar_intervals_s": "0.5,5", "allowed_lateness_s": "10"})
    proc = TickFeaturesProcessor(config_from_settings(s.features, backend="cpu"))
    res = run_batches(proc, cut(_values(df, names), [300] * 20), flush=True)
    recs = [CODEC.decode(v) for v in res.outputs.records["features.ticks"][1]]
    want_cfg = FeatureConfig(features=("ret", "ema", "roll_mean", "roll_std", "time_mean", "vwap_roll"),
                             ema_spans=(3, 7), window_ticks=5, window_ns=250_000_000)
    ref = reference_features(df, want_cfg)
    assert set(recs[0]["values"]) == set(ref) == {"ret", "ema_3", "ema_7", "roll_mean", "roll_std", "time_mean",
                                                  "vwap_roll"}
    for name, want in ref.items():
        np.testing.assert_allclose([r["values"][name] for r in recs], want, rtol=1e-9, atol=1e-12, equal_nan=True,
                                   err_msg=name)
    for ivl, topic in ((SEC // 2, "md.bars.500ms"), (5 * SEC, "md.bars.5s")):
        got = pd.DataFrame([CODEC.decode(v) for v in res.outputs.records[topic][1]])
        want = reference_bars(df, ivl)
        assert len(got) == len(want) and (got["interval_ns"] == ivl).all()
        got = got.assign(sym=[names.index(x) for x in got["symbol"]]).sort_values(["sym", "ts_event"])
        np.testing.assert_array_equal(got["ts_event"].to_numpy(), want["ts_open"].to_numpy())
        np.testing.assert_allclose(got["close"].to_numpy(), want["close"].to_numpy(), rtol=0)
        assert json.loads(res.outputs.headers[topic][0][1]) == {"interval_ns": ivl, "allowed_lateness_ns": 10 * SEC}
        assert res.outputs.headers[topic][0][0] == BARS_HEADER
    (hname, hval), = res.outputs.headers["features.ticks"]
    head = json.loads(hval)
    assert hname == FEATURES_HEADER
    assert (head["window_ticks"], head["window_ns"], head["ema_spans"], head["max_disorder_ns"]) == (
        5, 250_000_000, [3, 7], 0)


# ---- documentation ---------------------------------------------------------------------------------
def test_every_feature_is_documented_in_help_and_readme() -> None:
    docs = feature_docs()
    assert len(docs) == 23
    r = run_cli("run", "features", "--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    for name, unit, _ in docs:
        assert f"{name} [{unit}]:" in flat, name
        assert re.search(rf"`{name}`", readme), f"README lacks {name}"
    for words in ("late for interval I", "max_disorder_s", "allowed_lateness_s", "NaN until N trades"):
        assert words in flat, words
    for flag in ("--window-s", "--bar-intervals-s", "--allowed-lateness-s", "--idle-close-s", "--features"):
        assert flag in r.stdout


# ---- DLQ message names the interval ---------------------------------------------------------------
def test_late_dead_letter_names_the_interval_that_rejected_it() -> None:
    def tick(t_s: float, kind: int, price: float) -> dict[str, float]:
        return {"sym": 0, "ts": T0 + int(t_s * SEC), "kind": kind, "price": price, "size": 1.0 if kind == 0 else 0.0,
                "side": 1, "bid": price - 0.01, "ask": price + 0.01, "bid_size": 5.0, "ask_size": 5.0}

    # trade in [0, 1) s, a quote at 2.5 s closes that 1-s bar, then a trade stamped 0.7 s arrives:
    # late for the 1-s bar, not for the 1-min bar (which closes at 60 s)
    df = pd.DataFrame([tick(0.5, 0, 100.0), tick(2.5, 1, 100.5), tick(0.7, 0, 101.0), tick(3.0, 0, 102.0)])
    cfg = FeaturesProcessorConfig(FeatureConfig(max_disorder_ns=5 * SEC), backend="cpu")
    res = run_batches(TickFeaturesProcessor(cfg), [_values(df, ["X"])], flush=True)
    assert [(r.index, r.error_class) for r in res.rejected] == [(2, "late")]
    msg = res.rejected[0].message
    assert "late for the 1s bar [2026-05-02T02:36:00.000000000Z, +1s) had already closed" in msg, msg
    assert "allowed lateness 0 s" in msg and "still counted in the 1m bars" in msg, msg
    bars_1m = [CODEC.decode(v) for v in res.outputs.records["md.bars.1m"][1]]
    assert [b["trades"] for b in bars_1m] == [3]  # the late trade counted in the 1-min bar
    assert len(res.outputs.records["features.ticks"][1]) == 4  # and it got its feature vector


# ---- event time going backwards ---------------------------------------------------------------------
def _clocked(df: pd.DataFrame, bound: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The definition, row by row: a trade behind its symbol's trade clock by <= bound is used at the
    clock's time; further behind, rejected. Returns (frame with effective times, rejected mask)."""
    ts = df["ts"].to_numpy().copy()
    rej = np.zeros(len(df), bool)
    clock: dict[int, int] = {}
    for i, (s, k) in enumerate(zip(df["sym"].tolist(), df["kind"].tolist(), strict=True)):
        if k != 0:
            continue
        c = clock.get(s)
        if c is not None and ts[i] < c:
            if c - ts[i] > bound:
                rej[i] = True
                continue
            ts[i] = c
        clock[s] = ts[i]
    return df.assign(ts=ts), rej


@pytest.mark.parametrize("bound", [0, 40_000_000, 400_000_000])
def test_backwards_trades_are_clamped_within_the_bound_and_rejected_beyond(bound: int) -> None:
    df = random_ticks(seed=11, n=3000, n_symbols=6, late_symbol=False)
    rng = np.random.default_rng(bound)
    trades = np.flatnonzero(df["kind"].to_numpy() == 0)
    back = rng.choice(trades, 200, replace=False)
    ts = df["ts"].to_numpy().copy()
    ts[back] -= rng.integers(1, 600_000_000, back.size)  # stamped up to 0.6 s in the past
    df = df.assign(ts=ts)
    cfg = FeatureConfig(max_disorder_ns=bound)
    eng = TickFeatureEngine(cfg, "cpu")
    st = eng.initial_state(0)
    outs, rejs = [], []
    for lo in range(0, len(df), 700):  # any batch cut
        out, rej, st = eng.process_host_full(to_columns(df.iloc[lo:lo + 700]), st)
        outs.append(out)
        rejs.append(rej)
    got = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    rejected = np.concatenate(rejs)
    eff, want_rej = _clocked(df, bound)
    np.testing.assert_array_equal(rejected, want_rej)
    assert want_rej.any() == (bound < 600_000_000)
    keep = ~want_rej
    ref = reference_features(eff[keep].reset_index(drop=True), cfg)  # rejected trades do not exist for features
    assert_features({k: v[keep] for k, v in got.items()}, ref, cfg.output_names(), eff["price"].to_numpy()[keep])


def test_processor_sends_out_of_order_trades_to_the_dlq_without_a_vector() -> None:
    df = _valid(random_ticks(seed=3, n=600, n_symbols=3, late_symbol=False))
    i = int(np.flatnonzero(df["kind"].to_numpy() == 0)[100])
    df.loc[i, "ts"] -= 5 * SEC
    proc = TickFeaturesProcessor(FeaturesProcessorConfig(FeatureConfig(max_disorder_ns=SEC), bar_intervals_ns=(),
                                                         backend="cpu"))
    res = run_batches(proc, cut(_values(df, ["A", "B", "C"]), [128] * 10))
    assert [(r.index, r.error_class) for r in res.rejected] == [(i, "out_of_order")]
    assert "more than the allowed disorder of 1 s" in res.rejected[0].message
    seqs = [CODEC.decode(v)["seq"] for v in res.outputs.records["features.ticks"][1]]
    assert len(seqs) == len(df) - 1 and i not in seqs


# ---- loader: exact decimal timestamps -----------------------------------------------------------------
def test_loader_parses_decimal_timestamps_exactly(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("timestamp,symbol,price,size\n1777689380.521,BTCUSD,97000.5,0.1\n"
                 "1777689380.5215,BTCUSD,97001,0.2\n1777689381,BTCUSD,97002,0.3\n")
    items = list(load_file(f, get("md.ticks"), CODEC, LoadOptions()))
    assert [CODEC.decode(v)["ts_event"] for _, v, _ in items] == [
        1_777_689_380_521_000_000, 1_777_689_380_521_500_000, 1_777_689_381_000_000_000]
    assert [ts for _, _, ts in items] == [1_777_689_380_521, 1_777_689_380_521, 1_777_689_381_000]  # Kafka ms
    g = tmp_path / "ms.csv"  # fractional milliseconds are kept, not truncated
    g.write_text("timestamp,symbol,price,size\n1777689380521.25,X,1,1\n")
    (_, v, _), = load_file(g, get("md.ticks"), CODEC, LoadOptions(ts_unit="ms"))
    assert CODEC.decode(v)["ts_event"] == 1_777_689_380_521_250_000
    p = tmp_path / "t.parquet"  # a float64 column: its decimal text, not its binary value
    pd.DataFrame({"timestamp": [1777689380.521, 1777689380.999], "symbol": ["X", "X"], "price": [1.0, 2.0],
                  "size": [1.0, 1.0]}).to_parquet(p)
    assert [CODEC.decode(v)["ts_event"] for _, v, _ in load_file(p, get("md.ticks"), CODEC, LoadOptions())] == [
        1_777_689_380_521_000_000, 1_777_689_380_999_000_000]
    h = tmp_path / "sub.csv"
    h.write_text("timestamp,symbol,price\n1777689380.1234567891,X,1\n")
    with pytest.raises(LoadError, match=r"sub.csv:2: time 1777689380.1234567891 s has digits below a nanosecond"):
        list(load_file(h, get("md.ticks"), CODEC, LoadOptions()))


def test_bad_interval_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="duplicates"):
        FeaturesProcessorConfig(bar_intervals_ns=(SEC, SEC))
    with pytest.raises(ConfigError, match="not a whole number of milliseconds"):
        TickFeaturesProcessor(FeaturesProcessorConfig(bar_intervals_ns=(1_500_000,), backend="cpu")).output_topics  # noqa: B018
