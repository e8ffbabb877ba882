"""Human output of a backtest job result: the top-N table, and a report directory with PNG plots of
the best equity curves and drawdowns plus an ``index.html`` page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

COLUMNS = ("total_return", "cagr", "ann_volatility", "sharpe", "sortino", "max_drawdown", "max_drawdown_duration",
           "win_rate", "n_trades", "exposure", "fees_paid")


def _fmt(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def format_top(result: dict[str, Any]) -> str:
    """The result's top table as aligned text (best first by the job's metric)."""
    rows = result.get("top") or []
    head = ["#", "symbol", "params", *COLUMNS]
    body = [[str(i + 1), r["symbol"], json.dumps(r["params"], sort_keys=True), *(_fmt(r.get(c)) for c in COLUMNS)]
            for i, r in enumerate(rows)]
    widths = [max(len(h), *(len(b[k]) for b in body)) if body else len(h) for k, h in enumerate(head)]
    lines = [f"top {len(rows)} by {result.get('metric', 'sharpe')} — {result.get('symbols', '?')} symbols x "
             f"{result.get('bars', '?')} bars x {result.get('param_sets', '?')} parameter sets "
             f"({result.get('cells', 0):,} cells)"]
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def write_report(result: dict[str, Any], directory: str | Path) -> Path:
    """Write ``equity.png``, ``drawdown.png`` and ``index.html`` into ``directory``; returns the page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    curves = result.get("curves") or []
    for name, key, ylabel in (("equity.png", "equity", "equity"), ("drawdown.png", "drawdown", "drawdown")):
        fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
        for c in curves:
            ts = np.asarray(c["ts"], dtype="datetime64[ns]")
            ax.plot(ts, np.asarray(c[key], dtype=float), label=f"{c['symbol']} {json.dumps(c['params'], sort_keys=True)}")
        ax.set_ylabel(ylabel)
        ax.set_title(f"best {len(curves)} by {result.get('metric', 'sharpe')}: {ylabel}")
        if curves:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
    rows = "".join(
        "<tr>" + f"<td>{i + 1}</td><td>{html.escape(r['symbol'])}</td><td>{html.escape(json.dumps(r['params'], sort_keys=True))}</td>"
        + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in COLUMNS) + "</tr>"
        for i, r in enumerate(result.get("top") or []))
    page = out / "index.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>mystocks-gpu backtest</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
        f"<h1>Backtest report</h1><p>{html.escape(format_top(result).splitlines()[0])}</p>"
        "<table><tr><th>#</th><th>symbol</th><th>params</th>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>"
        f"{rows}</table><h2>Equity</h2><img src='equity.png'><h2>Drawdown</h2><img src='drawdown.png'>")
    return page
