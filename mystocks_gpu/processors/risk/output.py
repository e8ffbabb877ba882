"""Records the risk processor produces: ``risk.metrics`` snapshots (Avro ``mystocks.risk.RiskMetrics``)
and ``alerts`` (Avro ``mystocks.ops.Alert``, kind ``RISK_LIMIT``) built from the arrays of
:func:`~mystocks_gpu.gpu_ops.risk.risk_step`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import to_host
from mystocks_gpu.gpu_ops.risk import LIMIT_NAMES, Breach, StateBatch
from mystocks_gpu.processors.risk.config import RiskProcessorConfig
from mystocks_gpu.schemas import AvroCodec
from mystocks_gpu.schemas.batch_codec import BatchEncoder
from mystocks_gpu.schemas.symbols import SymbolTable

METRICS_SCHEMA = "mystocks.risk.RiskMetrics"
ALERT_SCHEMA = "mystocks.ops.Alert"


def conf_tag(c: float) -> str:
    """The metric-name suffix ``risk_step`` uses for a confidence (0.95 -> "95")."""
    return f"{round(c * 100, 4):g}".replace(".", "_")


def metrics_records(metrics: dict[str, Any], stack: StateBatch, names: Sequence[str], ts_event: int,
                    px_ts: np.ndarray, symbols: SymbolTable, cfg: RiskProcessorConfig) -> list[dict[str, Any]]:
    """One ``RiskMetrics`` record per account (in ``names`` order) as of ``ts_event``, as dicts.

    The per-record reference form (tests, tools): the processor itself encodes the same records
    column-wise with :func:`encode_metrics` (byte-identical, ~10x faster at 2,000 accounts).

    Every array is converted to Python scalars once (``tolist``), not element by element: the
    records are built in one pass per account with no NumPy scalar in the loop."""
    m = {k: to_host(v) for k, v in metrics.items()}
    h = {k: to_host(stack.arrays[k]) for k in ("symbols", "qty", "last_px", "win_count")}
    sectors = cfg.sector_names
    sector_of = cfg.sectors
    rc = cfg.risk
    stale_before = ts_event - cfg.stale_after_ns
    codes_a = np.asarray(h["symbols"])
    n_pos = np.sum(codes_a >= 0, axis=1).tolist()
    codes_l = codes_a.tolist()
    qty, px = h["qty"].tolist(), h["last_px"].tolist()
    expo, mvar, cvar = m["by_symbol"].tolist(), m["marginal_var"].tolist(), m["component_var"].tolist()
    # stale per symbol code: no price yet, or the last one before stale_before
    px_seen = np.asarray(px_ts)
    stale_code = ((px_seen < 0) | (px_seen < stale_before)).tolist()
    n_codes = len(stale_code)
    sym_cache: dict[int, str] = {}
    conf = [(float(c), conf_tag(c)) for c in rc.confidences]
    var_cols = [(c, m[f"var_{t}"].tolist(), m[f"cvar_{t}"].tolist(), m[f"hvar_{t}"].tolist(),
                 m[f"hcvar_{t}"].tolist()) for c, t in conf]
    scal = {k: m[k].tolist() for k in ("gross", "net", "pnl_day", "pnl_inception", "equity",
                                       "max_drawdown", "concentration")}
    win = h["win_count"].tolist()
    by_sector = m["by_sector"].tolist()
    lvs, lims, brs = m["limit_values"].tolist(), to_host(stack.limits).tolist(), m["breached"].tolist()
    horizon, interval, euler = float(rc.horizon), int(rc.interval_ns), float(rc.limit_confidence)
    ts = int(ts_event)
    out = []
    for i, acct in enumerate(names):
        pos = []
        ci, qi, pi, ei, mi, vi = codes_l[i], qty[i], px[i], expo[i], mvar[i], cvar[i]
        for j in range(n_pos[i]):
            c = int(ci[j])
            sym = sym_cache.get(c)
            if sym is None:
                sym = sym_cache[c] = symbols.symbol(c)
            pos.append({"symbol": sym, "sector": sector_of.get(sym, ""), "quantity": float(qi[j]),
                        "price": float(pi[j]), "exposure": float(ei[j]), "marginal_var": float(mi[j]),
                        "component_var": float(vi[j]),
                        "stale": bool(stale_code[c]) if c < n_codes else True})
        var = [{"confidence": c, "parametric_var": float(v[i]), "parametric_cvar": float(cv[i]),
                "historical_var": float(hv[i]), "historical_cvar": float(hcv[i])}
               for c, v, cv, hv, hcv in var_cols]
        lv, lim, br = lvs[i], lims[i], brs[i]
        bs = by_sector[i]
        out.append({
            "account": acct, "ts_event": ts, "gross": float(scal["gross"][i]), "net": float(scal["net"][i]),
            "pnl_day": float(scal["pnl_day"][i]), "pnl_inception": float(scal["pnl_inception"][i]),
            "equity": float(scal["equity"][i]), "max_drawdown": float(scal["max_drawdown"][i]),
            "concentration": float(scal["concentration"][i]), "horizon": horizon,
            "interval_ns": interval, "observations": int(win[i]), "var": var,
            "euler_confidence": euler, "positions": pos,
            "by_sector": {s: float(bs[j]) for j, s in enumerate(sectors)},
            "limits": [{"name": n, "value": float(lv[j]), "limit": float(lim[j]), "breached": bool(br[j])}
                       for j, n in enumerate(LIMIT_NAMES)],
        })
    return out


def metrics_columns(metrics: dict[str, Any], stack: StateBatch, names: Sequence[str], ts_event: int,
                    px_ts: np.ndarray, symbols: SymbolTable, cfg: RiskProcessorConfig,
                    rows: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """The ``RiskMetrics`` records of :func:`metrics_records` as :class:`BatchEncoder` input, built
    with array operations only: ``(columns, symbols by string field, map_keys)``.

    ``rows``: int64 account indices to include (default all, in ``names`` order). Columns are
    ``(n,)`` per account for the top-level fields; the arrays ``var`` (C confidences),
    ``positions`` (the first ``n_pos`` held slots of each account) and ``limits`` (``LIMIT_NAMES``)
    have element counts ``(n,)`` and item columns ``"field.item"`` of ``(sum counts,)`` rows,
    account-major. Money in price units, times in ns (as the schema docs)."""
    m = {k: to_host(v) for k, v in metrics.items()}
    h = {k: to_host(stack.arrays[k]) for k in ("symbols", "qty", "last_px", "win_count")}
    sel = np.arange(len(names), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    n = sel.size
    rc = cfg.risk

    def col(a: Any, dt: Any = np.float64) -> np.ndarray:
        return np.asarray(a)[sel].astype(dt, copy=False)

    cols: dict[str, np.ndarray] = {
        "account": sel, "ts_event": np.full(n, int(ts_event), np.int64),
        **{k: col(m[k]) for k in ("gross", "net", "pnl_day", "pnl_inception", "equity", "max_drawdown",
                                  "concentration")},
        "horizon": np.full(n, float(rc.horizon)), "interval_ns": np.full(n, int(rc.interval_ns), np.int64),
        "observations": col(h["win_count"], np.int64), "euler_confidence": np.full(n, float(rc.limit_confidence))}
    # var: one element per confidence
    conf = [(float(c), conf_tag(c)) for c in rc.confidences]
    cols["var"] = np.full(n, len(conf), np.int64)
    cols["var.confidence"] = np.tile(np.asarray([c for c, _ in conf], np.float64), n)
    for field, pre in (("parametric_var", "var"), ("parametric_cvar", "cvar"), ("historical_var", "hvar"),
                       ("historical_cvar", "hcvar")):
        cols[f"var.{field}"] = (np.stack([col(m[f"{pre}_{t}"]) for _, t in conf], axis=1).ravel() if conf
                                else np.zeros(0))
    # positions: the first n_pos slots of each account (held symbols are packed at the front)
    codes = np.asarray(h["symbols"])[sel]
    n_pos = np.sum(codes >= 0, axis=1)
    held = np.arange(codes.shape[1])[None, :] < n_pos[:, None]
    pc = codes[held].astype(np.int64)
    cols["positions"] = n_pos.astype(np.int64)
    cols["positions.symbol"] = pc
    sectors = cfg.sector_names
    sec_table = [*sectors, ""]
    sec_index = {s: j for j, s in enumerate(sectors)}
    uniq = np.unique(pc)
    code_sec = np.full(int(uniq[-1]) + 1 if uniq.size else 0, len(sectors), np.int64)
    for c in uniq.tolist():
        code_sec[c] = sec_index.get(cfg.sectors.get(symbols.symbol(c), ""), len(sectors))
    cols["positions.sector"] = code_sec[pc]
    for field, arr in (("quantity", h["qty"]), ("price", h["last_px"]), ("exposure", m["by_symbol"]),
                       ("marginal_var", m["marginal_var"]), ("component_var", m["component_var"])):
        cols[f"positions.{field}"] = np.asarray(arr)[sel][held].astype(np.float64, copy=False)
    # stale per symbol code: no price yet, or the last one before the stale horizon; unknown = stale
    px_seen = np.asarray(px_ts)
    stale_code = np.append((px_seen < 0) | (px_seen < ts_event - cfg.stale_after_ns), True)
    cols["positions.stale"] = stale_code[np.minimum(pc, px_seen.size)]
    # by_sector: map over the sector names (empty map without a sector map)
    cols["by_sector"] = np.ascontiguousarray(col(m["by_sector"])[:, :len(sectors)])
    # limits: one element per LIMIT_NAMES entry
    L = len(LIMIT_NAMES)
    cols["limits"] = np.full(n, L, np.int64)
    cols["limits.name"] = np.tile(np.arange(L, dtype=np.int64), n)
    cols["limits.value"] = col(m["limit_values"]).ravel()
    cols["limits.limit"] = col(to_host(stack.limits)).ravel()
    cols["limits.breached"] = col(m["breached"], np.bool_).ravel()
    tables = {"account": list(names), "positions.symbol": symbols, "positions.sector": sec_table,
              "limits.name": list(LIMIT_NAMES)}
    return cols, tables, {"by_sector": list(sectors)}


def encode_metrics(encoder: BatchEncoder, metrics: dict[str, Any], stack: StateBatch, names: Sequence[str],
                   ts_event: int, px_ts: np.ndarray, symbols: SymbolTable, cfg: RiskProcessorConfig,
                   rows: np.ndarray | None = None) -> tuple[list[bytes], list[bytes]]:
    """``(keys, values)`` of the ``risk.metrics`` records (key = account, UTF-8): the bytes
    ``encode_all(codec, METRICS_SCHEMA, metrics_records(...))`` gives, from
    :func:`metrics_columns` through the vectorised ``encoder`` (``BatchEncoder(METRICS_SCHEMA)``)."""
    cols, tables, keys = metrics_columns(metrics, stack, names, ts_event, px_ts, symbols, cfg, rows)
    sel = range(len(names)) if rows is None else np.asarray(rows).tolist()
    return [names[i].encode() for i in sel], encoder.encode(cols, tables, keys)


def alert_records(breaches: Sequence[Breach], names: Sequence[str], ts_event: int) -> list[dict[str, Any]]:
    """One ``RISK_LIMIT`` alert per new breach, with the value and the limit. The id is a function
    of (account, limit, time), so a re-processed window yields the same alert."""
    out = []
    for b in breaches:
        acct = names[b.account]
        out.append({"alert_id": f"risk:{acct}:{b.limit}:{ts_event}", "ts_event": int(ts_event), "kind": "RISK_LIMIT",
                    "severity": "CRITICAL", "source": acct,
                    "message": f"account {acct}: {b.limit} {b.value:.6g} breaches the limit {b.threshold:.6g}",
                    "value": float(b.value), "threshold": float(b.threshold),
                    "labels": {"account": acct, "limit": b.limit, "processor": "risk"}})
    return out


def encode_all(codec: AvroCodec, schema: str, records: list[dict[str, Any]]) -> list[bytes]:
    return [codec.encode(schema, r) for r in records]
