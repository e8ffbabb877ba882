"""Human output of an ``execsim`` result: the per-strategy table (``submit --wait``) and a report
directory (``--report DIR``) with PNG plots and an ``index.html``:

* ``shortfall_by_strategy.png``: mean realised vs expected implementation shortfall (bps) per
  strategy;
* ``realised_vs_expected.png``: every (order, strategy) row, expected E[IS] against realised IS
  (bps), with the diagonal;
* ``fills.png``: cumulative filled fraction over time of the first orders, one line per strategy.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

SUMMARY_COLUMNS = ("strategy", "orders", "fill_rate", "realised_is_bps", "expected_is_bps", "z_score", "realised_is",
                   "expected_is")
ROW_COLUMNS = ("order_id", "symbol", "strategy", "quantity", "executed_qty", "arrival_price", "avg_price",
               "realised_is_bps", "expected_is_bps", "z_score")


def _fmt(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: tuple[str, ...]) -> list[str]:
    body = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[k]) for b in body)) if body else len(c) for k, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return lines


def format_summary(result: dict[str, Any], max_rows: int = 12) -> str:
    """Per-strategy realised vs expected shortfall, then the first rows and any errors, as text."""
    lines = [f"execsim: {result.get('orders', 0)} orders x {len(result.get('strategies', []))} strategies over "
             f"{result.get('symbols', 0)} symbols, {result.get('ticks', 0):,} ticks replayed; "
             f"{result.get('simulated', 0)} simulations (all rows on {result.get('results_topic', 'results.execsim')})",
             "implementation shortfall by strategy (bps of arrival notional; positive = cost):"]
    lines += _table(result.get("summary") or [], SUMMARY_COLUMNS)
    rows = result.get("rows") or []
    if rows and max_rows > 0:
        lines.append(f"first {min(max_rows, len(rows))} of {result.get('rows_total', len(rows))} rows:")
        lines += _table(rows[:max_rows], ROW_COLUMNS)
    errors = result.get("errors") or {}
    if errors:
        lines.append(f"{len(errors)} order(s) not simulated:")
        lines += [f"  {k}: {v}" for k, v in list(errors.items())[:20]]
    return "\n".join(lines)


def write_report(result: dict[str, Any], directory: str | Path) -> Path:
    """Write the three plots and ``index.html`` into ``directory``; returns the page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.get("summary") or []
    names = [s["strategy"] for s in summary]

    def val(v: Any) -> float:
        return float("nan") if v is None else float(v)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [val(s["expected_is_bps"]) for s in summary], 0.4, label="expected E[IS]")
    ax.bar(x + 0.2, [val(s["realised_is_bps"]) for s in summary], 0.4, label="realised IS")
    ax.set_xticks(x, names)
    ax.set_ylabel("shortfall, bps")
    ax.set_title("implementation shortfall by strategy (mean over orders)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "shortfall_by_strategy.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 6), dpi=100)
    rows = result.get("rows") or []
    for k, s in enumerate(names):  # distinct markers: strategies that coincide stay visible
        pts = [(val(r["expected_is_bps"]), val(r["realised_is_bps"])) for r in rows if r["strategy"] == s]
        if pts:
            a = np.asarray(pts)
            ax.scatter(a[:, 0], a[:, 1], s=40 - 8 * k, marker="os^Dv"[k % 5], label=s, alpha=0.7)
    finite = [v for r in rows for v in (val(r["expected_is_bps"]), val(r["realised_is_bps"])) if np.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("expected E[IS], bps")
    ax.set_ylabel("realised IS, bps")
    ax.set_title("per order: realised vs pre-trade estimate")
    if names:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "realised_vs_expected.png")
    plt.close(fig)

    fills = result.get("fills") or []
    ids = list(dict.fromkeys(f["order_id"] for f in fills))
    fig, axes = plt.subplots(max(1, len(ids)), 1, figsize=(9, 2.6 * max(1, len(ids))), dpi=100, squeeze=False)
    for ax, oid in zip(axes[:, 0], ids or [None], strict=False):
        for k, f in enumerate(f for f in fills if f["order_id"] == oid):
            ts = np.asarray(f["ts"], dtype="datetime64[ns]")
            cum = np.cumsum(np.asarray(f["fill_qty"], dtype=float)) / max(1, f["quantity"])
            ax.step(ts, cum, where="post", label=f["strategy"], ls=("-", "--", ":", "-.")[k % 4], lw=2.2 - 0.4 * k)
        ax.set_ylabel("filled fraction")
        ax.set_title(f"order {oid}" if oid else "no fills")
        ax.grid(alpha=0.3)
        if oid:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fills.png")
    plt.close(fig)

    def html_table(rows: list[dict[str, Any]], cols: tuple[str, ...]) -> str:
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                       for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    errors = result.get("errors") or {}
    err_html = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in errors.items())
    page = out / "index.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>mystocks-gpu execsim</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
        f"<h1>Execution simulation</h1><p>{html.escape(format_summary(result).splitlines()[0])}</p>"
        f"<h2>By strategy</h2>{html_table(summary, SUMMARY_COLUMNS)}"
        "<img src='shortfall_by_strategy.png'><img src='realised_vs_expected.png'>"
        f"<h2>Fills</h2><img src='fills.png'><h2>Rows</h2>{html_table(rows, ROW_COLUMNS)}"
        + (f"<h2>Not simulated</h2><ul>{err_html}</ul>" if errors else ""))
    return page
