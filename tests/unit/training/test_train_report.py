"""The printed train result says over how long a span the long-short statistics are annualised."""

from __future__ import annotations

import re

from mystocks_gpu.processors.training.train_report import format_metrics


def _result(bars: int, bars_per_year: float) -> dict:
    return {"model": {"name": "m", "family": "ridge"}, "data": {}, "splits": [], "overall": {},
            "long_short": {"total_return": -0.01, "cagr": -0.88, "sharpe": -35.0, "quantile": 0.2, "fees": 0.0,
                           "bars": bars, "bars_per_year": bars_per_year}}


def test_a_short_span_is_named_with_its_trading_days_and_called_too_short() -> None:
    # 120 bars of 10 s: 20 minutes; a trading year of 252 days x 23,400 s has 589,680 such bars
    out = format_metrics(_result(120, 252 * 23_400 / 10))
    days = 120 * 10 / 23_400  # closed form: 20 minutes of a 6.5-hour trading day
    m = re.search(r"span 120 bars = ([0-9.e+-]+) trading days", out)
    assert m and abs(float(m.group(1)) - days) < 5e-4 * max(days, 1)
    assert "annualised at 589,680 bars a year" in out
    assert "under a trading month" in out


def test_a_long_span_has_no_warning() -> None:
    out = format_metrics(_result(504, 252.0))  # two years of daily bars
    assert "span 504 bars = 504 trading days" in out
    assert "under a trading month" not in out


def test_no_span_without_the_bar_count() -> None:
    r = _result(120, 252.0)
    del r["long_short"]["bars"]
    assert "span" not in format_metrics(r)
