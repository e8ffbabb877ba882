"""The tick features as the peers of ``bench/features_e2e.py`` compute them, one tick at a time in
pure Python (``step``: the faust peer's loop and the per-record baseline of ``bench/batch_overhead.py``),
and :class:`RefIndex`, the reference every contender's output is checked against (the last vector of
each symbol, by ``seq``). Not a public API."""

from __future__ import annotations

import math
from typing import Any

import _common as C
import numpy as np

from mystocks_gpu.gpu_ops.features_config import FeatureConfig

TICK = "mystocks.md.Tick"
FV = "mystocks.features.FeatureVector"
FEATURES = ("ret", "ema", "roll_mean", "roll_std", "vwap_session")
FCFG = FeatureConfig(features=FEATURES)
NAMES: tuple[str, ...] = tuple(FCFG.output_names())  # ret, ema_10, ema_50, roll_mean, roll_std, vwap_session
NWIN = FCFG.window_ticks
A10, A50 = (float(a) for a in FCFG.ema_alphas())
NAN = float("nan")


# ---- the peers' per-tick features (pure Python, JSON-safe state: None stands for NaN) ----------
def new_state() -> list[Any]:
    """[trades, prev price, sum(p v), sum(v), ema_10, ema_50, ring of the last NWIN prices, last output]."""
    return [0, 0.0, 0.0, 0.0, 0.0, 0.0, [0.0] * NWIN, [None] * len(NAMES)]


def _ema(e: float, x: float, a: float) -> float:
    if e != x:  # the same arithmetic as our kernel (pandas ewm(adjust=False))
        om = 1.0 - a
        e = (om * e + a * x) / (om + a)
    return e


def step(st: list[Any], trade: bool, p: float, v: float) -> list[Any]:
    """Update ``st`` with one tick; returns the feature values (None = NaN) in :data:`NAMES` order."""
    if trade:
        n = st[0]
        ret = p / st[1] - 1.0 if n >= 1 else None
        cpv, cv = st[2] + p * v, st[3] + v
        st[2], st[3] = cpv, cv
        vw = cpv / cv if cv != 0.0 else None
        if n == 0:
            e10 = e50 = p
        else:
            e10, e50 = _ema(st[4], p, A10), _ema(st[5], p, A50)
        st[4], st[5] = e10, e50
        ring = st[6]
        ring[n % NWIN] = p
        mean = std = None
        if n + 1 >= NWIN:  # shifted two-pass mean / std over the ring, like the kernel
            acc = 0.0
            for x in ring:
                acc += x - p
            mean = p + acc / NWIN
            ss = cc = 0.0
            for x in ring:
                d = x - mean
                ss += d * d
                cc += d
            var = (ss - cc * cc / NWIN) / (NWIN - 1)
            std = math.sqrt(var) if var > 0.0 else 0.0
        st[0], st[1] = n + 1, p
        st[7] = [ret, e10, e50, mean, std, vw]
    return st[7]  # type: ignore[no-any-return]


def values_map(out: list[Any]) -> dict[str, float]:
    return {k: (NAN if x is None else x) for k, x in zip(NAMES, out, strict=True)}


def step_tick(st: list[Any], v: dict[str, Any]) -> list[Any]:
    """:func:`step` for a decoded Tick record ``v`` (fastavro dict)."""
    return step(st, v["kind"] == "TRADE", v["price"], v["size"])


def vector_of(v: dict[str, Any], res: list[Any], ingest_ns: int) -> dict[str, Any]:
    """The FeatureVector record (fastavro dict) of tick ``v`` with feature values ``res``."""
    return {"symbol": v["symbol"], "ts_event": v["ts_event"], "seq": v["seq"], "ts_ingest": ingest_ns,
            "values": values_map(res)}


def reference(cols: dict[str, np.ndarray]) -> np.ndarray:
    """(n, len(NAMES)) float64 reference features of every input row (NaN = not yet valid)."""
    states: dict[int, list[Any]] = {}
    out = np.full((len(cols["sym"]), len(NAMES)), np.nan)
    for i, (s, k, p, v) in enumerate(zip(cols["sym"].tolist(), cols["kind"].tolist(), cols["price"].tolist(),
                                         cols["size"].tolist(), strict=True)):
        st = states.get(s)
        if st is None:
            st = states[s] = new_state()
        out[i] = [NAN if x is None else x for x in step(st, k == 0, p, v)]
    return out


class RefIndex:
    """Reference rows by (symbol, seq)."""

    def __init__(self, cols: dict[str, np.ndarray], names: list[str]) -> None:
        self.feats = reference(cols)
        self.row = {(names[s], q): i for i, (s, q) in enumerate(zip(cols["sym"].tolist(), cols["seq"].tolist(),
                                                                   strict=True))}

    def check(self, s: Any, topic: str) -> dict[str, Any]:
        """Output count of ``topic`` and the last vector per symbol vs the reference."""
        count, last = C.count_topic(s, topic, last_per_key=True)
        dec = C.avro_reader(FV)
        worst, nan_bad, missing = 0.0, 0, 0
        for v in last.values():
            rec = dec(v)
            i = self.row.get((rec["symbol"], rec["seq"]))
            if i is None:
                missing += 1
                continue
            got = np.array([rec["values"].get(k, np.nan) for k in NAMES])
            want = self.feats[i]
            nan_bad += int((np.isnan(got) != np.isnan(want)).sum())
            ok = ~np.isnan(want) & ~np.isnan(got)
            if ok.any():
                worst = max(worst, float(np.max(np.abs(got[ok] - want[ok]) / np.maximum(np.abs(want[ok]), 1e-300))))
        return {"outputs": count, "symbols_checked": len(last), "max_rel_diff": worst, "nan_mismatch": nan_bad,
                "unknown_rows": missing, "ok": nan_bad == 0 and missing == 0 and worst <= 1e-9}
