"""Human output of a ``train`` job result: the metrics table printed by ``submit train --wait``,
and ``--report DIR``: ``ic.png`` (daily IC and rank IC with their rolling means, test windows
shaded), ``equity.png`` (long-short equity curve and drawdown) and ``index.html``."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

METRICS = ("n_rows", "n_dates", "mse", "r2", "ic_mean", "rank_ic_mean", "icir", "rank_icir", "hit_rate")
LS = ("total_return", "cagr", "ann_volatility", "sharpe", "max_drawdown", "n_trades", "fees_paid", "exposure")


def _fmt(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def _date(ns: Any) -> str:
    if ns is None:
        return "-"
    import pandas as pd

    ts = pd.Timestamp(int(ns), unit="ns", tz="UTC")
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.strftime("%Y-%m-%d %H:%M:%S")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]


def annualisation_note(ls: dict[str, Any]) -> str:
    """How long the long-short backtest ran, in bars and trading days (``bars / bars_per_year x 252``),
    and that cagr, ann_volatility and sharpe extrapolate it to a year; a span under 21 trading days
    is called out as too short to read them (a demo's 20 minutes annualise to a cagr near -1).
    Empty when the result lacks ``bars`` or ``bars_per_year``."""
    bars, bpy = ls.get("bars"), ls.get("bars_per_year")
    if not bars or not bpy:
        return ""
    days = 252.0 * float(bars) / float(bpy)
    note = (f"  span {int(bars)} bars = {days:.3g} trading days; cagr, ann_volatility and sharpe are annualised "
            f"at {float(bpy):,.0f} bars a year")
    if days < 21:
        note += ": under a trading month, read total_return and max_drawdown instead"
    return note


def format_metrics(result: dict[str, Any]) -> str:
    """Model identity, data counts, metrics per split and overall, and the long-short summary."""
    m, d = result.get("model") or {}, result.get("data") or {}
    ver = m.get("version")
    lines = [f"model {m.get('name')} " + (f"v{ver}" if ver is not None else "(not published)")
             + f"  {m.get('family')}  sha256 {str(m.get('content_sha256'))[:16]}  {m.get('bytes')} bytes",
             f"data: {', '.join(d.get('inputs') or [])} {_date(d.get('first_date'))} .. {_date(d.get('last_date'))}: "
             f"{d.get('rows_used')} rows used of {d.get('panel_rows')} ({d.get('symbols')} symbols x "
             f"{d.get('dates')} dates); dropped {d.get('rows_dropped')}",
             f"features: {', '.join(m.get('features') or [])}"]
    head = ["split", "test from", "test to", "n_train", *METRICS]
    rows = [[str(s["index"]), _date(s["test_first"]), _date(s["test_last"]), str(s["n_train"]),
             *(_fmt(s["metrics"].get(k)) for k in METRICS)] for s in result.get("splits") or []]
    ov = result.get("overall") or {}
    rows.append(["all", "", "", "", *(_fmt(ov.get(k)) for k in METRICS)])
    lines += _table(head, rows)
    ls = result.get("long_short")
    if ls:
        lines.append("long-short backtest of the out-of-sample predictions (top/bottom "
                     f"{_fmt(ls.get('quantile'))}, fees {_fmt(ls.get('fees'))}): "
                     + "  ".join(f"{k} {_fmt(ls.get(k))}" for k in LS))
        span = annualisation_note(ls)
        if span:
            lines.append(span)
    if ver is not None:
        lines.append(f"published to {m.get('registry_topic')}; live scores: mystocks-gpu run signals --model {m.get('name')}"
                     f"  -> {m.get('signals_topic')}")
    return "\n".join(lines)


def _rolling(values: list[Any], k: int) -> list[float]:
    out, window = [], []
    for v in values:
        window.append(math.nan if v is None else float(v))
        window = window[-k:]
        good = [x for x in window if not math.isnan(x)]
        out.append(sum(good) / len(good) if good else math.nan)
    return out


def write_report(result: dict[str, Any], directory: str | Path) -> Path:
    """Write ``ic.png``, ``equity.png`` and ``index.html`` into ``directory``; returns the page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ic = result.get("ic_series") or {}
    dates = np.asarray(ic.get("dates") or [], dtype="int64").astype("datetime64[ns]")
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for key, label in (("ic", "IC"), ("rank_ic", "rank IC")):
        vals = [math.nan if v is None else v for v in ic.get(key) or []]
        ax.plot(dates, vals, lw=0.6, alpha=0.5, label=label)
        ax.plot(dates, _rolling(vals, 20), lw=1.5, label=f"{label}, 20-point mean")
    for s in result.get("splits") or []:
        ax.axvspan(np.datetime64(int(s["test_first"]), "ns"), np.datetime64(int(s["test_last"]), "ns"),  # type: ignore[arg-type]
                   color="grey", alpha=0.08)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_title(f"out-of-sample IC per date ({ic.get('bucket', 1)} date(s) per point; test windows shaded)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ic.png")
    plt.close(fig)
    eq = result.get("equity_curve") or {}
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5.5), dpi=100, sharex=True, height_ratios=(3, 1))
    if eq:
        ts = np.asarray(eq["ts"], dtype="int64").astype("datetime64[ns]")
        e = np.asarray([math.nan if v is None else v for v in eq["equity"]], dtype=float)
        a1.plot(ts, e, lw=1.2)
        a2.fill_between(ts, 0, -(1 - e / np.maximum.accumulate(np.r_[1.0, e])[1:]), color="tab:red", alpha=0.4)
    a1.set_title("long-short book of the out-of-sample predictions: equity (start 1)")
    a1.grid(alpha=0.3)
    a2.set_ylabel("drawdown")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "equity.png")
    plt.close(fig)
    text = html.escape(format_metrics(result))
    page = out / "index.html"
    m = result.get("model") or {}
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>mystocks-gpu train report</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}</style>"
        f"<h1>Model {html.escape(str(m.get('name')))}</h1><pre>{text}</pre>"
        "<h2>Information coefficient</h2><img src='ic.png'>"
        "<h2>Long-short equity</h2><img src='equity.png'>")
    return page
