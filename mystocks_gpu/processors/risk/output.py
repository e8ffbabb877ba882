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
    """One ``RiskMetrics`` record per account (in ``names`` order) as of ``ts_event``."""
    m = {k: to_host(v) for k, v in metrics.items()}
    h = {k: to_host(stack.arrays[k]) for k in ("symbols", "qty", "last_px", "win_count")}
    sectors = cfg.sector_names
    rc = cfg.risk
    stale_before = ts_event - cfg.stale_after_ns
    out = []
    for i, acct in enumerate(names):
        codes = h["symbols"][i]
        k = int(np.sum(codes >= 0))
        pos = []
        for j in range(k):
            c = int(codes[j])
            sym = symbols.symbol(c)
            seen = int(px_ts[c]) if c < px_ts.shape[0] else -1
            pos.append({"symbol": sym, "sector": cfg.sectors.get(sym, ""), "quantity": float(h["qty"][i, j]),
                        "price": float(h["last_px"][i, j]), "exposure": float(m["by_symbol"][i, j]),
                        "marginal_var": float(m["marginal_var"][i, j]),
                        "component_var": float(m["component_var"][i, j]),
                        "stale": bool(seen < 0 or seen < stale_before)})
        var = [{"confidence": float(c), "parametric_var": float(m[f"var_{conf_tag(c)}"][i]),
                "parametric_cvar": float(m[f"cvar_{conf_tag(c)}"][i]),
                "historical_var": float(m[f"hvar_{conf_tag(c)}"][i]),
                "historical_cvar": float(m[f"hcvar_{conf_tag(c)}"][i])} for c in rc.confidences]
        lv, lim, br = m["limit_values"][i], to_host(stack.limits)[i], m["breached"][i]
        out.append({
            "account": acct, "ts_event": int(ts_event), "gross": float(m["gross"][i]), "net": float(m["net"][i]),
            "pnl_day": float(m["pnl_day"][i]), "pnl_inception": float(m["pnl_inception"][i]),
            "equity": float(m["equity"][i]), "max_drawdown": float(m["max_drawdown"][i]),
            "concentration": float(m["concentration"][i]), "horizon": float(rc.horizon),
            "interval_ns": int(rc.interval_ns), "observations": int(h["win_count"][i]), "var": var,
            "euler_confidence": float(rc.limit_confidence), "positions": pos,
            "by_sector": {s: float(m["by_sector"][i, j]) for j, s in enumerate(sectors)},
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
