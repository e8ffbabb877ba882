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
from mystocks_gpu.schemas.symbols import SymbolTable

METRICS_SCHEMA = "mystocks.risk.RiskMetrics"
ALERT_SCHEMA = "mystocks.ops.Alert"


def conf_tag(c: float) -> str:
    """The metric-name suffix ``risk_step`` uses for a confidence (0.95 -> "95")."""
    return f"{round(c * 100, 4):g}".replace(".", "_")


def metrics_records(metrics: dict[str, Any], stack: StateBatch, names: Sequence[str], ts_event: int,
                    px_ts: np.ndarray, symbols: SymbolTable, cfg: RiskProcessorConfig) -> list[dict[str, Any]]:
    """One ``RiskMetrics`` record per account (in ``names`` order) as of ``ts_event``.

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
