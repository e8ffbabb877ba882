"""BacktestSpec: every rejection reason, defaults, round trips and a stable normalised form."""

from __future__ import annotations

import json
import pickle

import pytest

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.processors.backtest.spec import BacktestSpec
from mystocks_gpu.processors.exceptions import InvalidSpec

BASE = {"strategy": "ma_cross", "params": {"fast": [5, 10], "slow": [20, 50]}}


def _spec(**kw) -> BacktestSpec:
    return BacktestSpec.from_dict({**BASE, **kw})


def test_defaults_and_types():
    s = _spec()
    assert s.universe == "all" and s.bar_topic == "md.bars.1d" and s.initial_cash == 100_000.0
    assert (s.sizing, s.size, s.fees, s.fixed_fees, s.slippage) == (
        "fraction",
        1.0,
        0.001,
        0.0,
        0.0,
    )
    assert (s.direction, s.execution, s.metric, s.n_curves, s.top_n) == (
        "long_only",
        "next_open",
        "sharpe",
        5,
        None,
    )
    assert (s.max_grid, s.bars_per_year, s.memory_budget_bytes) == (10_000, 252.0, 1 << 30)
    assert s.n_param_sets == 4
    assert issubclass(InvalidSpec, MyStocksError)


def test_time_parsing():
    s = _spec(start="2020-01-02", end="2020-01-03T00:00:00+00:00")
    assert s.start == 1_577_923_200_000_000_000 and s.end == s.start + 86_400_000_000_000
    assert _spec(start=5, end=6).start == 5
    assert _spec(start="2020-01-02T01:00:00+01:00").start == 1_577_923_200_000_000_000


REJECTIONS = [
        ({"strategy": "momentum"}, "unknown strategy"),
        ({"universe": []}, "universe: empty"),
        ({"universe": "some"}, "universe"),
        ({"universe": ["AAPL", ""]}, "invalid symbol"),
        ({"start": "2021-01-01", "end": "2020-01-01"}, "inverted"),
        ({"start": 10, "end": 10}, "inverted or empty"),
        ({"start": "not a date"}, "cannot parse"),
        ({"start": True}, "not a time"),
        ({"bar_topic": "md.ticks"}, "bar_topic"),
        ({"bar_topic": "md.bars.1d."}, "bar_topic"),
        ({"params": {"fast": list(range(1, 101)), "slow": list(range(101, 202))}}, "max_grid"),
        ({"params": {"fast": [5], "slow": [20]}, "max_grid": 0}, "max_grid"),
        ({"params": {"fast": [5], "slow": [20], "mid": [7]}}, "unknown parameter"),
        ({"params": {"fast": [5]}}, "missing parameter"),
        ({"params": {"fast": [], "slow": [20]}}, "empty value list"),
        ({"params": {"fast": [5.5], "slow": [20]}}, "not an integer"),
        ({"params": {"fast": [0], "slow": [20]}}, "below the minimum"),
        ({"params": {"fast": ["5"], "slow": [20]}}, "not a number"),
        ({"params": {"fast": [50], "slow": [20]}}, "no valid parameter combination"),
        ({"params": [5, 20]}, "params"),
        (
            {"strategy": "zscore", "params": {"window": [20], "entry_z": [0.0], "exit_z": [0.0]}},
            "entry_z",
        ),
        (
            {"strategy": "zscore", "params": {"window": [20], "entry_z": [1.0], "exit_z": [2.0]}},
            "exit_z <= entry_z",
        ),
        ({"strategy": "rsi", "params": {"period": [14], "lower": [30], "upper": [120]}}, "upper"),
        (
            {"strategy": "rsi", "params": {"period": [14], "lower": [70], "upper": [30]}},
            "lower <= upper",
        ),
        ({"strategy": "breakout", "params": {"window": [float("nan")]}}, "not finite"),
        (
            {"strategy": "signal", "params": {"threshold_long": [0.5], "threshold_exit": [0.0]}},
            "signal_topic",
        ),
        ({"signal_topic": "features.x"}, "only valid with strategy 'signal'"),
        ({"initial_cash": 0}, "initial_cash"),
        ({"sizing": "kelly"}, "sizing"),
        ({"sizing": "fixed"}, "needs size"),
        ({"sizing": "fixed", "size": -5}, "must be > 0"),
        ({"size": 1.5}, r"must be in \(0, 1\]"),
        ({"fees": -0.001}, "fees: -0.001 is negative"),
        ({"fixed_fees": -1}, "fixed_fees"),
        ({"slippage": -0.1}, "slippage"),
        ({"fees": 1.0}, "must be < 1"),
        ({"direction": "short_only"}, "direction"),
        ({"execution": "vwap"}, "execution"),
        ({"metric": "alpha"}, "metric"),
        ({"top_n": 0}, "top_n"),
        ({"n_curves": -1}, "n_curves"),
        ({"bars_per_year": 0}, "bars_per_year"),
        ({"max_cells": 0}, "max_cells"),
        ({"memory_budget_bytes": 100}, "memory_budget_bytes"),
        ({"colour": "blue"}, "unknown field"),
    ]


@pytest.mark.parametrize(("kw", "match"), REJECTIONS)
def test_rejections(kw, match):
    with pytest.raises(InvalidSpec, match=match):
        _spec(**kw)


def test_from_json_errors():
    with pytest.raises(InvalidSpec, match="not valid JSON"):
        BacktestSpec.from_json("{nope")
    with pytest.raises(InvalidSpec, match="JSON object"):
        BacktestSpec.from_json("[1, 2]")


def test_fast_ge_slow_combinations_are_dropped():
    s = _spec(params={"fast": [5, 20, 50], "slow": [20, 50]})
    assert s.n_param_sets == 3  # (5,20) (5,50) (20,50); (20,20) (50,20) (50,50) dropped


def test_round_trip_and_normalisation_stable():
    a = BacktestSpec.from_dict(
        {
            "universe": ["MSFT", "AAPL", "MSFT"],
            "strategy": "bollinger",
            "params": {"window": [30, 10, 20], "exit_z": [0.5, 0], "entry_z": [2, 1.5]},
            "start": "2020-01-01",
            "fees": 0.002,
        }
    )
    b = BacktestSpec.from_dict(
        {
            "fees": 0.002,
            "start": 1_577_836_800_000_000_000,
            "params": {"entry_z": [1.5, 2.0, 2], "exit_z": [0.0, 0.5], "window": [20, 10, 30]},
            "strategy": "zscore",
            "universe": ["AAPL", "MSFT"],
        }
    )
    assert a == b and hash(a) == hash(b)
    assert a.normalised() == b.normalised()
    assert a.to_json() == b.to_json() and a.cache_key() == b.cache_key()
    n = a.normalised()
    assert list(n) == sorted(n) and n["universe"] == ["AAPL", "MSFT"] and n["strategy"] == "zscore"
    assert n["params"] == {"entry_z": [1.5, 2.0], "exit_z": [0.0, 0.5], "window": [10, 20, 30]}
    json.dumps(n)  # JSON-able
    assert BacktestSpec.from_dict(a.to_dict()) == a
    assert BacktestSpec.from_json(a.to_json()) == a
    # limits do not change the cache key; anything semantic does
    c = BacktestSpec.from_dict({**a.to_dict(), "memory_budget_bytes": 1 << 20})
    assert c.cache_key() == a.cache_key() and c.normalised() != a.normalised()
    assert BacktestSpec.from_dict({**a.to_dict(), "fees": 0.003}).cache_key() != a.cache_key()


def test_frozen_and_picklable():
    s = _spec()
    with pytest.raises(AttributeError):
        s.fees = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.params["fast"] = (1,)  # type: ignore[index]
    assert pickle.loads(pickle.dumps(s)) == s


def test_a_huge_grid_is_rejected_at_once_with_an_estimate():
    """10^8 combinations: rejected from the product of the value counts, never expanded (it took
    ~40 s to build the combinations before failing)."""
    import time

    huge = {"fast": list(range(1, 10_001)), "slow": list(range(2, 10_002))}
    t0 = time.perf_counter()
    with pytest.raises(InvalidSpec, match=r"100,000,000 parameter sets, more than max_grid=10,000.*MB"):
        _spec(params=huge)
    with pytest.raises(InvalidSpec, match="above the ceiling of 1,000,000"):
        _spec(params=huge, max_grid=10**9)
    with pytest.raises(InvalidSpec, match="more than max_grid=1,000,000"):
        _spec(params=huge, max_grid=10**6)
    assert time.perf_counter() - t0 < 5.0
    # the largest grid allowed is counted without expanding it
    s = _spec(params={"fast": list(range(1, 1001)), "slow": list(range(2, 1002))}, max_grid=10**6)
    assert s.n_param_sets == sum(1 for f in range(1, 1001) for w in range(2, 1002) if f < w)


def _spec_dicts():
    """(spec dict, accepted by BacktestSpec?) over the test_rejections cases and valid variants."""
    valid = [BASE, {**BASE, "universe": ["A", "B"], "bar_topic": "md.bars.1d.sp500", "start": "2020-01-01", "end": 1_700_000_000_000_000_000},
             {"strategy": "rsi", "params": {"period": [14], "lower": [30], "upper": [70]}, "direction": "long_short"},
             {"strategy": "bollinger", "params": {"window": [20], "entry_z": [2], "exit_z": [0]}, "metric": "cagr"},
             {"strategy": "breakout", "params": {"window": 20}, "sizing": "fixed", "size": 1000, "top_n": 3},
             {"strategy": "signal", "params": {"threshold_long": [0.5], "threshold_exit": [0.0]},
              "signal_topic": "features.ticks", "signal_column": "ret_1"},
             {"params": {"fast": [5], "slow": [20]}, "max_grid": 1_000_000, "memory_budget_bytes": 4096}]
    return valid


@pytest.mark.parametrize(("kw", "match"), REJECTIONS)
def test_json_schema_rejects_what_the_spec_rejects(kw, match):
    import jsonschema

    from mystocks_gpu.processors.backtest.spec_doc import json_schema

    d = {**BASE, **kw}
    schema_ok = jsonschema.Draft202012Validator(json_schema()).is_valid(json.loads(json.dumps(d, allow_nan=True)))
    # the schema cannot express cross-field rules (fast < slow leaving nothing, start < end, the
    # grid's size, NaN): those are the spec's own; everything else the schema rejects too
    cross_field = ("inverted", "max_grid", "no valid", "exit_z <= entry_z", "lower <= upper", "not finite",
                   "needs size", "cannot parse", "must be in")
    if not any(c in match for c in cross_field):
        assert not schema_ok, d


def test_json_schema_accepts_valid_specs_and_documents_every_field():
    import jsonschema

    from mystocks_gpu.processors.backtest.spec_doc import SPEC_HELP, json_schema

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    for d in _spec_dicts():
        BacktestSpec.from_dict(d)
        assert v.is_valid(d), list(v.iter_errors(d))
    from dataclasses import fields

    names = {f.name for f in fields(BacktestSpec)}
    assert set(schema["properties"]) == names
    for name in names:  # --help documents every field
        assert name in SPEC_HELP, name
