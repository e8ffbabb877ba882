"""The backtest spec as a user reads it: ``submit backtest --help`` (:data:`SPEC_HELP`) and a JSON
schema (:func:`json_schema`, ``submit backtest --print-schema``). ``tests/unit/test_backtest_spec.py``
checks that the schema accepts and rejects what :class:`~.spec.BacktestSpec` does."""

from __future__ import annotations

from typing import Any

from mystocks_gpu.gpu_ops.backtest.stats import STAT_COLUMNS
from mystocks_gpu.gpu_ops.backtest.strategies import ALIASES, STRATEGIES
from mystocks_gpu.processors.backtest.spec import MAX_PARAM_SETS, MIN_MEMORY_BUDGET

SPEC_HELP = f"""\
backtest spec (JSON object; --spec FILE, '-' for stdin, or inline JSON). Every field is optional
except the strategy's params; unknown fields are rejected. Print the JSON schema with
--print-schema. Example:

  {{"universe": ["AAPL", "MSFT"], "start": "2015-01-01", "end": "2025-01-01",
   "strategy": "ma_cross", "params": {{"fast": [5, 10, 20], "slow": [50, 100, 200]}},
   "fees": 0.001, "slippage": 0.0005, "top_n": 10}}

data
  bar_topic       bars to replay: md.bars.<n><s|m|h|d>[.<dataset>]            [md.bars.1d]
  universe        list of symbols, or "all" (every symbol with a bar)       ["all"]
                  symbols without a bar in the range are reported (warning + missing_symbols)
  start, end      ISO date/time (naive = UTC) or ns since the epoch; bars with
                  start <= ts_event < end ("end": "2021-01-01" includes all of 2020)  [unbounded]

strategies and params (each value a list; the grid is their Cartesian product, combinations that
break the rule are dropped; signals are computed at each bar's close)
  ma_cross        fast, slow (ints, fast < slow): SMA(fast) crosses above SMA(slow) -> long entry
                  (and short exit); crosses below -> long exit (and short entry)
  breakout        window (int): close above the highest high of the previous `window` bars ->
                  long entry; below the lowest low -> long exit
  zscore          window (int >= 2), entry_z (> 0), exit_z (<= entry_z): z of close over the window
  (bollinger)     (population std); z < -entry_z -> long entry, z > -exit_z -> long exit,
                  z > entry_z -> short entry, z < exit_z -> short exit
  rsi             period (int), lower, upper (0..100, lower <= upper): Wilder RSI < lower -> long
                  entry (short exit), RSI > upper -> long exit (short entry)
  signal          threshold_long, threshold_exit (<= threshold_long): the column signal_column of
                  signal_topic (feature vectors' values, or a bar field), the last value at or before
                  each bar; v > threshold_long -> long entry, v < threshold_exit -> long exit
                  (mirrored for shorts); needs signal_topic and signal_column

fills, fees, slippage, sizing
  execution       next_open: the signal at bar t's close fills at bar t+1's open (no look-ahead);
                  close: fills at bar t's close (look-ahead risk)                [next_open]
  direction       long_only | long_short (reversals are two orders)            [long_only]
  initial_cash    starting cash per (symbol, parameter set) cell               [100000]
  sizing, size    fraction: each entry spends size x cash (0 < size <= 1, default 1), fees included;
                  fixed: each entry buys `size` of cash at the unslipped price  [fraction]
  fees            fraction of notional per order                               [0.001]
  fixed_fees      currency per order                                           [0]
  slippage        buys fill at px x (1 + slippage), sells at px x (1 - slippage)  [0]
  a bar without a finite open and close (a halt, before listing) is skipped: no signal, no fill,
  an order due at it is dropped; an open position at the end is marked to market, not closed

statistics and output
  bars_per_year   annualisation of cagr, volatility, sharpe, sortino (252 daily, 98280 minute) [252]
  metric          ranking metric: {", ".join(STAT_COLUMNS)}  [sharpe]
  top_n           rows of the top table in the job result and the --wait output (<= 20)  [20]
  n_curves        equity/drawdown curves of the best cells, on results.backtest and in --report  [5]
  every (symbol, parameter set) row goes to results.backtest (key = job id); `--report DIR` reads
  rows and curves back from there and writes index.html with equity and drawdown plots

limits
  max_grid        parameter sets allowed (after the product, before dropping)  [10000, <= {MAX_PARAM_SETS:,}]
  max_cells       parameter sets x symbols x bars allowed                      [10**12]
  memory_budget_bytes  working set of one engine chunk; larger histories and grids are chunked
                  (by symbols, time windows, parameter ranges)                 [1 GiB, >= {MIN_MEMORY_BUDGET}]
"""


def _param_schema(strategy: str) -> dict[str, Any]:
    sdef = STRATEGIES[strategy]
    props: dict[str, Any] = {}
    for p in sdef.params:
        item: dict[str, Any] = {"type": "integer" if p.kind == "int" else "number"}
        if p.kind == "int":
            item["minimum"] = int(p.lo)
        else:
            if p.lo_open:
                item["exclusiveMinimum"] = p.lo
            elif p.lo != float("-inf"):
                item["minimum"] = p.lo
            if p.hi != float("inf"):
                item["maximum"] = p.hi
        props[p.name] = {"oneOf": [item, {"type": "array", "items": item, "minItems": 1}],
                         "description": f"{p.name} value(s) of {strategy}"}
    return {"type": "object", "properties": props, "required": sorted(props), "additionalProperties": False}


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the backtest spec. Cross-field rules the schema cannot say (``fast <
    slow`` leaving no combination, ``start < end``, ``max_grid`` on the product) are checked by the
    spec itself."""
    strategies = sorted([*STRATEGIES, *ALIASES])
    time_value = {"oneOf": [{"type": "integer"}, {"type": "string", "minLength": 1}, {"type": "null"}]}
    branches = []
    for name in sorted(STRATEGIES):
        names = [name] + [a for a, t in ALIASES.items() if t == name]
        cond: dict[str, Any] = {"properties": {"strategy": {"enum": names}}}
        if name == "ma_cross":  # the default strategy: also when "strategy" is absent
            cond = {"anyOf": [cond | {"required": ["strategy"]}, {"not": {"required": ["strategy"]}}]}
        else:
            cond["required"] = ["strategy"]
        then: dict[str, Any] = {"properties": {"params": _param_schema(name)}, "required": ["params"]}
        if name == "signal":
            then["required"] = ["params", "signal_topic", "signal_column"]
            then["properties"] |= {"signal_topic": {"type": "string", "pattern": r"\S"},
                                   "signal_column": {"type": "string", "pattern": r"\S"}}
        else:
            then["properties"] |= {"signal_topic": {"type": "null"}, "signal_column": {"type": "null"}}
        branches.append({"if": cond, "then": then})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://mystocks-gpu/schemas/backtest-spec.json",
        "title": "mystocks-gpu backtest spec",
        "description": "submit backtest --spec FILE; see `mystocks-gpu submit backtest --help`",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "universe": {"oneOf": [{"const": "all"},
                                   {"type": "array", "items": {"type": "string", "pattern": r"\S"}, "minItems": 1}],
                         "default": "all"},
            "start": time_value | {"description": "ns since the epoch or ISO date/time (naive = UTC), inclusive"},
            "end": time_value | {"description": "ns since the epoch or ISO date/time (naive = UTC), exclusive"},
            "bar_topic": {"type": "string", "pattern": r"^md\.bars\.[1-9][0-9]*[smhd](\.[A-Za-z0-9_-]+)?$", "default": "md.bars.1d"},
            "strategy": {"enum": strategies, "default": "ma_cross"},
            "params": {"type": "object"},
            "initial_cash": {"type": "number", "exclusiveMinimum": 0, "default": 100_000},
            "sizing": {"enum": ["fraction", "fixed"], "default": "fraction"},
            "size": {"type": ["number", "null"], "exclusiveMinimum": 0},
            "fees": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.001},
            "fixed_fees": {"type": "number", "minimum": 0, "default": 0},
            "slippage": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0},
            "direction": {"enum": ["long_only", "long_short"], "default": "long_only"},
            "execution": {"enum": ["next_open", "close"], "default": "next_open"},
            "bars_per_year": {"type": "number", "exclusiveMinimum": 0, "default": 252},
            "metric": {"enum": list(STAT_COLUMNS), "default": "sharpe"},
            "top_n": {"type": ["integer", "null"], "minimum": 1},
            "n_curves": {"type": "integer", "minimum": 0, "default": 5},
            "signal_topic": {"type": ["string", "null"]},
            "signal_column": {"type": ["string", "null"]},
            "max_grid": {"type": "integer", "minimum": 1, "maximum": MAX_PARAM_SETS, "default": 10_000},
            "max_cells": {"type": "integer", "minimum": 1, "default": 10**12},
            "memory_budget_bytes": {"type": "integer", "minimum": MIN_MEMORY_BUDGET, "default": 1 << 30},
        },
        "required": ["params"],
        "allOf": branches,
    }
