"""Human output of a backtest job: the top-N table (``submit --wait``) and a report directory
(``--report DIR``: ``equity.png``, ``drawdown.png``, ``index.html``) built from the job's full output
read back from ``results.backtest`` (rows and curves stay there, never in the job result).

A report is never silently empty: with no rows, no curves, or an incomplete set of messages on
the topic (retention, a different cluster) :class:`ReportError` says what is missing and why.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import MyStocksError

COLUMNS = ("total_return", "cagr", "ann_volatility", "sharpe", "sortino", "max_drawdown", "max_drawdown_duration",
           "win_rate", "n_trades", "exposure", "fees_paid")


class ReportError(MyStocksError):
    """The report cannot be written (its data is not on results.backtest); the message says why."""

    exit_code = 1


def _fmt(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def headline(result: dict[str, Any]) -> str:
    """``top N by METRIC — S symbols x B bars x P parameter sets (C cells)`` plus bar records."""
    rows = result.get("top") or []
    recs = result.get("bar_records")
    bars = f"{result.get('bars', '?')} bar times" + (f", {recs:,} bars" if isinstance(recs, int) else "")
    return (f"top {len(rows)} by {result.get('metric', 'sharpe')} — {result.get('symbols', '?')} symbols, {bars}, "
            f"{result.get('param_sets', '?')} parameter sets ({result.get('cells', 0):,} cells)")


def format_top(result: dict[str, Any]) -> str:
    """Warnings (if any), then the result's top table as aligned text (best first by the job's metric)."""
    rows = result.get("top") or []
    head = ["#", "symbol", "params", *COLUMNS]
    body = [[str(i + 1), r["symbol"], json.dumps(r["params"], sort_keys=True), *(_fmt(r.get(c)) for c in COLUMNS)]
            for i, r in enumerate(rows)]
    widths = [max(len(h), *(len(b[k]) for b in body)) if body else len(h) for k, h in enumerate(head)]
    lines = [f"warning: {w}" for w in result.get("warnings") or []]
    lines.append(headline(result))
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    if result.get("messages"):
        lines.append(f"all {result.get('symbols', 0) * result.get('param_sets', 0):,} rows and "
                     f"{result.get('curves', 0)} equity curves are on {result.get('results_topic', 'results.backtest')} "
                     "(key = job id); --report DIR plots them")
    return "\n".join(lines)


def write_report(result: dict[str, Any], directory: str | Path, settings: Any, job_id: str,
                 output: Any = None) -> Path:
    """Write ``equity.png``, ``drawdown.png`` and ``index.html`` into ``directory`` from the job's rows
    and curves on results.backtest (``output``: a :class:`~.results.JobOutput` already read);
    returns the page. Raises :class:`ReportError` when there is nothing to plot."""
    from mystocks_gpu.processors.backtest.results import read_results

    if output is None:
        output = read_results(settings, job_id, int(result.get("results_offset", -1)))
    if not output.rows:
        raise ReportError(
            f"no result rows of job {job_id} on results.backtest (the job result says {result.get('messages', 0)} "
            "message(s) were published); the topic's retention may have removed them, or this client reads "
            "another cluster")
    if not output.complete:
        missing = {c: f"{seen}/{n}" for c, (seen, n) in output.parts.items() if seen != n}
        raise ReportError(f"job {job_id}'s output on results.backtest is incomplete: chunks {output.chunk_count}, "
                          f"parts read {missing or output.parts}")
    try:
        import matplotlib
    except ImportError:
        raise ReportError("--report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mystocks_gpu.gpu_ops.backtest.stats import HIGHER_IS_BETTER

    metric = str(result.get("metric", "sharpe"))
    higher = HIGHER_IS_BETTER.get(metric, True)

    def rank(row: dict[str, Any]) -> float:
        v = row.get(metric)
        if v is None or v != v:
            return float("inf")
        return -v if higher else v

    rows = sorted(output.rows, key=rank)
    keyed = {(r["symbol"], json.dumps(r["params"], sort_keys=True)): i for i, r in enumerate(rows)}
    curves = sorted(output.curves, key=lambda c: keyed.get((c["symbol"], json.dumps(c["params"], sort_keys=True)),
                                                           len(rows)))
    curves = curves[:int(result.get("n_curves", len(curves)))]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, key, ylabel in (("equity.png", "equity", "equity"), ("drawdown.png", "drawdown", "drawdown")):
        fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
        for c in curves:
            ts = np.asarray(c["ts"], dtype="datetime64[ns]")
            ax.plot(ts, np.asarray(c[key], dtype=float), label=f"{c['symbol']} {json.dumps(c['params'], sort_keys=True)}")
        ax.set_ylabel(ylabel)
        ax.set_title(f"best {len(curves)} by {metric}: {ylabel}" if curves else
                     f"no equity curves were published (n_curves = 0): {ylabel}")
        if curves:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
    top = rows[:max(len(result.get("top") or []), 20)]
    table = "".join(
        "<tr>" + f"<td>{i + 1}</td><td>{html.escape(r['symbol'])}</td><td>{html.escape(json.dumps(r['params'], sort_keys=True))}</td>"
        + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in COLUMNS) + "</tr>"
        for i, r in enumerate(top))
    warn = "".join(f"<p style='color:#a60'>warning: {html.escape(w)}</p>" for w in result.get("warnings") or [])
    page = out / "index.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>mystocks-gpu backtest</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
        f"<h1>Backtest report</h1><p>job {html.escape(job_id)}: {html.escape(headline({**result, 'top': top}))}; "
        f"{len(output.rows):,} rows read from results.backtest</p>{warn}"
        "<table><tr><th>#</th><th>symbol</th><th>params</th>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>"
        f"{table}</table><h2>Equity</h2><img src='equity.png'><h2>Drawdown</h2><img src='drawdown.png'>")
    return page
