"""Human output of an ``optimize`` job result: a text summary (per portfolio: status, risk,
return, the largest weights; infeasible ones with their conflicting constraints) and a report
directory with PNG plots (efficient frontier, weights, rebalancing equity) and ``index.html``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "nan"
    return f"{100 * v:.2f}%" if pct else f"{v:.4g}"


def _top(row: dict[str, Any], symbols: list[str], k: int) -> str:
    w = row.get("weights")
    if not w:
        return ""
    order = sorted(range(len(w)), key=lambda i: -abs(w[i]))[:k]
    return " ".join(f"{symbols[i]}={w[i]:.4f}" for i in order)


def format_summary(result: dict[str, Any]) -> str:
    """A header line, then one line per portfolio (at most 25; frontier/rebalance are sampled)."""
    rows = result.get("portfolios") or []
    syms = result.get("symbols") or []
    k = int(result.get("top_weights", 10))
    st = ", ".join(f"{n} {s}" for s, n in sorted((result.get("statuses") or {}).items()))
    lines = [f"optimize {result.get('mode')} {result.get('objective')} ({result.get('estimator')}): "
             f"{result.get('problems')} problem(s) x {len(syms)} assets over {result.get('bars')} bars on "
             f"{result.get('backend')} in {result.get('seconds')} s — {st}"]
    step = max(1, len(rows) // 25 + (len(rows) % 25 > 0))
    for r in rows[::step]:
        if r.get("weights") is None:
            conf = ", ".join(r.get("conflicts") or []) or "none named"
            lines.append(f"  {r['label']:>28s}  {r['status'].upper()}  conflicting constraints: {conf}  {r.get('message', '')}")
            continue
        risk = (f"vol {_f(r.get('ann_volatility'), True)} ret {_f(r.get('ann_return'), True)} "
                f"sharpe {_f(r.get('sharpe'))}" if r.get("ann_volatility") is not None else "")
        extra = f" turnover {r['turnover']:.4f} cost {r['cost']:.6f}" if "turnover" in r else ""
        obj = f"objective {_f(r.get('objective'))} " if r.get("objective") is not None else ""
        lines.append(f"  {r['label']:>28s}  {r['status']}  {obj}{risk}{extra}  "
                     f"weights: {_top(r, syms, k)}")
    reb = result.get("rebalance")
    if reb:
        s = reb.get("stats") or {}
        lines.append(f"  rebalancing backtest: {reb.get('dates')} dates, total return {_f(s.get('total_return'), True)}, "
                     f"ann vol {_f(s.get('ann_volatility'), True)}, sharpe {_f(s.get('sharpe'))}, max drawdown "
                     f"{_f(s.get('max_drawdown'), True)}, turnover {reb.get('total_turnover', 0):.4f}, costs "
                     f"{_f(s.get('total_costs'))}")
    return "\n".join(lines)


def write_report(result: dict[str, Any], directory: str | Path) -> Path:
    """``weights.png`` (+ ``frontier.png`` or ``equity.png``) and ``index.html`` in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in result.get("portfolios") or [] if r.get("weights") is not None]
    syms = result.get("symbols") or []
    plots = []
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    if rows:
        W = np.array([r["weights"] for r in rows])
        x = np.arange(len(rows))
        if len(rows) == 1:
            ax.bar(syms, W[0])
            ax.tick_params(axis="x", rotation=90)
        else:
            ax.stackplot(x, np.clip(W.T, 0, None), labels=syms)
            ax.set_xlabel("portfolio (frontier point / rebalance date)")
            if len(syms) <= 20:
                ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_ylabel("weight")
    ax.set_title(f"weights: {result.get('objective')} ({result.get('mode')})")
    fig.tight_layout()
    fig.savefig(out / "weights.png")
    plt.close(fig)
    plots.append(("Weights", "weights.png"))
    front = [p for p in result.get("frontier") or [] if p.get("ann_volatility") is not None]
    if front:
        fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
        ax.plot([100 * p["ann_volatility"] for p in front], [100 * p["ann_return"] for p in front], "o-")
        ax.set_xlabel("annualised volatility, %")
        ax.set_ylabel("annualised expected return, %")
        ax.set_title("efficient frontier")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "frontier.png")
        plt.close(fig)
        plots.append(("Efficient frontier", "frontier.png"))
    reb = result.get("rebalance")
    if reb:
        fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
        c = reb["curve"]
        ax.plot(np.asarray(c["ts"], dtype="datetime64[ns]"), c["equity"])
        ax.set_ylabel("equity (start = 1)")
        ax.set_title("rebalancing backtest (after costs)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "equity.png")
        plt.close(fig)
        plots.append(("Equity", "equity.png"))
    table = "".join(
        f"<tr><td>{html.escape(r['label'])}</td><td>{html.escape(r['status'])}</td><td>{_f(r.get('objective'))}</td>"
        f"<td>{_f(r.get('ann_volatility'), True)}</td><td>{_f(r.get('ann_return'), True)}</td>"
        f"<td>{html.escape(_top(r, syms, int(result.get('top_weights', 10))) or ', '.join(r.get('conflicts') or []))}</td></tr>"
        for r in (result.get("portfolios") or [])[:200])
    page = out / "index.html"
    summary = format_summary(result).splitlines()[0]
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>mystocks-gpu optimize</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
        f"<h1>Portfolio optimisation report</h1><p>{html.escape(summary)}</p>"
        "<table><tr><th>portfolio</th><th>status</th><th>objective</th><th>ann vol</th><th>ann return</th>"
        f"<th>largest weights / conflicts</th></tr>{table}</table>"
        + "".join(f"<h2>{t}</h2><img src='{f}'>" for t, f in plots))
    return page
