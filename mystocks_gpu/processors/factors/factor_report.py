"""Human output of the factor jobs: the ranked table printed by ``submit factors --wait``
(:func:`format_result`) and the ``--report DIR`` page (:func:`write_report`): rank IC time series,
quantile returns and spread, the correlation heat map, combination weights, plus ``index.html``.
The report reads the job's full results back from ``results.factors`` (the job's own result keeps
only the top rows)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

#: (column title, result key, format) of the ranked table
COLUMNS = (("rank_ic", "rank_ic_mean", "{:+.4f}"), ("rank_icir", "rank_icir", "{:+.3f}"),
           ("t", "rank_ic_tstat", "{:+.2f}"), ("ic", "ic_mean", "{:+.4f}"), ("spread", "spread", "{:+.5f}"),
           ("turn_top", "turnover_top", "{:.3f}"), ("autocorr", "rank_autocorr", "{:.3f}"),
           ("coverage", "coverage", "{:.3f}"), ("status", "status", "{}"))
#: factors drawn in the time-series and quantile plots
N_PLOTTED = 6


def _fmt(fmt: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "nan"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _table(rows: list[dict[str, Any]], width: int = 48) -> list[str]:
    head = ["#", "factor", *(c[0] for c in COLUMNS), "expression"]
    body = []
    for r in rows:
        expr = str(r.get("expression", ""))
        body.append([str(r.get("rank", "")), str(r["factor"]), *(_fmt(f, r.get(k)) for _, k, f in COLUMNS),
                     expr if len(expr) <= width else expr[: width - 3] + "..."])
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    fmt_row = lambda cells: "  ".join(c.rjust(w) if i < len(cells) - 1 else c  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return [fmt_row(head)] + [fmt_row(b) for b in body]


def format_result(result: dict[str, Any]) -> str:
    """The ranked table (best |mean rank IC| first at the rank horizon), the combination, the
    mining summary and the warnings, as text."""
    lines = []
    kind = result.get("kind", "factors")
    if kind == "factors_mine":
        lines.append(f"mined {result.get('candidates_evaluated', 0):,} candidates "
                     f"({result.get('candidates_per_s') or 0:,.0f}/s, seed {result.get('seed')}): "
                     f"kept {len(result.get('kept') or [])}")
        for g in result.get("history") or []:
            lines.append(f"  generation {g.get('generation')}: {g.get('evaluated')} evaluated, "
                         f"{g.get('passing')} passing, {g.get('kept_new')} kept "
                         f"(best |rank IC| {_fmt('{:.4f}', g.get('best_abs_rank_ic'))})")
    hz = result.get("horizons") or []
    lines.append(f"{kind}: {result.get('factors', 0)} factors x {result.get('symbols', 0)} symbols x "
                 f"{result.get('dates', 0)} dates (horizons {', '.join(map(str, hz))}; ranked by |rank IC| at "
                 f"{result.get('rank_horizon')} bar(s)) in {result.get('factor_batches', 0)} batch(es), "
                 f"{result.get('seconds', 0)} s")
    top = result.get("top") or []
    if top:
        lines.append(f"top {len(top)}:")
        lines += ["  " + ln for ln in _table(top)]
    for c in result.get("combination") or []:
        m = c.get("metrics") or {}
        w = ", ".join(f"{k} {_fmt('{:+.3f}', v)}" for k, v in (c.get("final_weights") or {}).items())
        lines.append(f"{c['name']} ({c['method']}, h={c['horizon']}): rank IC {_fmt('{:+.4f}', m.get('rank_ic_mean'))}, "
                     f"rank ICIR {_fmt('{:+.3f}', m.get('rank_icir'))}, spread {_fmt('{:+.5f}', m.get('spread'))}; "
                     f"final weights {w}")
    for wmsg in result.get("warnings") or []:
        lines.append(f"warning: {wmsg}")
    return "\n".join(lines)


def _dates(ns: np.ndarray) -> np.ndarray:
    return np.asarray(ns, dtype=np.int64).astype("datetime64[ns]")


def _rolling(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean over ``w`` dates of the finite values (NaN where none)."""
    v = np.where(np.isfinite(x), x, 0.0)
    c = np.where(np.isfinite(x), 1.0, 0.0)
    sv, sc = np.cumsum(v), np.cumsum(c)
    sv[w:] = sv[w:] - sv[:-w].copy()
    sc[w:] = sc[w:] - sc[:-w].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sc > 0, sv / sc, np.nan)


def write_report(result: dict[str, Any], directory: str | Path, settings: Any = None, job_id: str = "") -> Path:
    """Write ``ic.png``, ``quantiles.png``, ``correlation.png`` (and ``weights.png`` with a
    combination, ``mining.png`` for a mining job) and ``index.html`` into ``directory``; returns the page. Full metrics, series,
    correlation and weights are read from ``results.factors`` when ``settings`` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    full: dict[str, Any] = {"metrics": pd.DataFrame(result.get("top") or []), "series": {}, "dates": np.array([]),
                            "correlation": None, "weights": [], "complete": False}
    if settings is not None and job_id:
        from mystocks_gpu.processors.factors.factor_topics import read_factor_results

        full = read_factor_results(settings, job_id)
    h = int(result.get("rank_horizon") or 1)
    metrics = full["metrics"]
    if len(metrics):
        ranked = metrics[metrics["horizon"] == h].sort_values("rank")
    else:
        ranked = pd.DataFrame(result.get("top") or [])
    best = [f for f in ranked["factor"].tolist() if not str(f).startswith("COMBINED_")][:N_PLOTTED] if len(ranked) else []
    combined = [w["name"] for w in full["weights"]]
    shown = best + combined
    dates = _dates(full["dates"])
    images = []

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), dpi=100, sharex=True)
    for f in shown:
        s = full["series"].get((f, h))
        if s is None or dates.size != s["rank_ic"].size:
            continue
        ax1.plot(dates, _rolling(s["rank_ic"], 21), label=f, lw=1.2)
        ax2.plot(dates, np.nancumsum(s["rank_ic"]), label=f, lw=1.2)
    ax1.axhline(0, color="k", lw=0.6)
    ax1.set_ylabel("rank IC, 21-date mean")
    ax1.set_title(f"rank IC at horizon {h} (best {len(best)} factors" + (" + combined)" if combined else ")"))
    ax2.set_ylabel("cumulative rank IC")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if shown:
        ax1.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "ic.png")
    plt.close(fig)
    images.append(("Rank IC time series", "ic.png"))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    rows = ranked[ranked["factor"].isin(shown)] if len(ranked) else ranked
    nq = len(rows["quantile_returns"].iloc[0]) if len(rows) and "quantile_returns" in rows else 0
    width = 0.8 / max(len(rows), 1)
    for k, (_, r) in enumerate(rows.iterrows()):
        q = np.asarray(r["quantile_returns"], dtype=float) * 1e4
        ax1.bar(np.arange(1, nq + 1) + (k - len(rows) / 2) * width, q, width=width, label=r["factor"])
        s = full["series"].get((r["factor"], h))
        if s is not None and dates.size == s["spread"].size:
            ax2.plot(dates, np.nancumsum(s["spread"]), label=r["factor"], lw=1.2)
    ax1.set_xlabel("quantile (1 = lowest factor value)")
    ax1.set_ylabel("mean demeaned forward return (bp)")
    ax1.set_title(f"quantile returns, horizon {h}")
    ax2.set_ylabel("cumulative top-bottom spread / 2")
    ax2.set_title("quantile spread")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if len(rows):
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quantiles.png")
    plt.close(fig)
    images.append(("Quantile returns and spread", "quantiles.png"))

    corr = full["correlation"]
    if corr is not None and len(corr):
        n = len(corr)
        fig, ax = plt.subplots(figsize=(max(5, 0.3 * n + 2), max(4, 0.3 * n + 1.5)), dpi=100)
        im = ax.imshow(corr.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(n), corr.columns, rotation=90, fontsize=7)
        ax.set_yticks(range(n), corr.index, fontsize=7)
        ax.set_title(f"mean cross-sectional rank correlation (best {n})")
        fig.colorbar(im, ax=ax, shrink=0.8)
        fig.tight_layout()
        fig.savefig(out / "correlation.png")
        plt.close(fig)
        images.append(("Factor correlation", "correlation.png"))

    if full["weights"]:
        fig, axes = plt.subplots(1, len(full["weights"]), figsize=(6 * len(full["weights"]), 4), dpi=100,
                                 squeeze=False)
        for ax, w in zip(axes[0], full["weights"], strict=True):
            vals = np.asarray(w["values"], dtype=float).reshape(-1, len(w["factors"]))
            for j, f in enumerate(w["factors"]):
                ax.plot(_dates(np.asarray(w["refit_dates"])), vals[:, j], label=f, lw=1.0)
            ax.set_title(f"{w['name']} weights (walk-forward)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "weights.png")
        plt.close(fig)
        images.append(("Combination weights", "weights.png"))

    history = result.get("history") or []
    if history:  # a mining job: what each generation evaluated, passed and kept
        gens = [int(g["generation"]) for g in history]
        fig, ax1 = plt.subplots(figsize=(8, 4), dpi=100)
        ax1.bar(np.asarray(gens) - 0.2, [g.get("passing") or 0 for g in history], width=0.4, label="passing")
        ax1.bar(np.asarray(gens) + 0.2, [g.get("kept_total") or 0 for g in history], width=0.4, label="kept (total)")
        ax1.set_xlabel("generation")
        ax1.set_ylabel("candidates")
        ax2 = ax1.twinx()
        ax2.plot(gens, [np.nan if g.get("best_abs_rank_ic") is None else g["best_abs_rank_ic"] for g in history],
                 "k.-", label="best |rank IC|")
        ax2.set_ylabel("best |rank IC|")
        ax1.set_xticks(gens)
        ax1.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
        ax1.set_title(f"mining: {result.get('candidates_evaluated', 0):,} candidates, seed {result.get('seed')}")
        fig.tight_layout()
        fig.savefig(out / "mining.png")
        plt.close(fig)
        images.insert(0, ("Mining generations", "mining.png"))

    table_rows = ranked.to_dict("records") if len(ranked) else list(result.get("top") or [])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("#", "factor", *(c[0] for c in COLUMNS), "expression"))
    body = "".join(
        "<tr>" + f"<td>{r.get('rank', '')}</td><td>{html.escape(str(r['factor']))}</td>"
        + "".join(f"<td>{html.escape(_fmt(f, r.get(k)))}</td>" for _, k, f in COLUMNS)
        + f"<td style='text-align:left'><code>{html.escape(str(r.get('expression', '')))}</code></td></tr>"
        for r in table_rows[:200])
    kind_line = [ln for ln in format_result({**result, "top": [], "combination": []}).splitlines()
                 if ln.startswith(f"{result.get('kind', 'factors')}:")] if result else []
    summary = html.escape(kind_line[0] if kind_line else "")
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in result.get("warnings") or [])
    imgs = "".join(f"<h2>{html.escape(t)}</h2><img src='{f}'>" for t, f in images)
    page = out / "index.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>mystocks-gpu factors</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}</style>"
        f"<h1>Factor report {html.escape(job_id)}</h1><p>{summary}</p>"
        + (f"<ul>{warn}</ul>" if warn else "")
        + ("<p>(results.factors incomplete: showing the job result's top rows)</p>" if not full["complete"] else "")
        + f"<table><tr>{head}</tr>{body}</table>{imgs}")
    return page
