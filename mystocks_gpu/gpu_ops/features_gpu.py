"""GPU implementation of the tick-feature kernel (CuPy ``RawKernel``), twin of ``features_cpu``.

Layout: one CUDA thread per symbol. The batch's rows are grouped by symbol on the device
with a sort of the unique key ``sym << 32 | row`` (so the grouping is stable: each symbol's
rows stay in arrival order), segment offsets come from ``bincount``/``cumsum``, and thread
``s`` walks its rows sequentially, reading the input columns through the permutation and
scattering its outputs back to the original row positions. The per-symbol state arrays are
CuPy arrays with the same shapes and meaning as on the CPU (``features_cpu`` docstring).

The CUDA source mirrors ``features_cpu._trade``/``process_batch`` statement by statement and
is compiled with ``--fmad=false`` so that no multiply-add is fused: CPU and GPU outputs agree
to the rounding of ``log`` (documented tolerance: rtol 1e-9, atol 1e-12).

CuPy is imported lazily, only inside these functions.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.features_config import (
    IS_NTRADES,
    IS_SESSION,
    N_FIXED,
    NS_PER_DAY,
    SC_CUM_PV,
    SC_CUM_V,
    SC_EMA0,
    SC_MACD_FAST,
    SC_MACD_SIG,
    SC_MACD_SLOW,
    SC_PREV,
    SC_RSI_GAIN,
    SC_RSI_LOSS,
    SLOT,
)

_DEFINES = {
    "IS_NTRADES": IS_NTRADES,
    "IS_SESSION": IS_SESSION,
    "N_FIXED": N_FIXED,
    "DAY_NS": f"{NS_PER_DAY}LL",
    "SC_PREV": SC_PREV,
    "SC_CUM_PV": SC_CUM_PV,
    "SC_CUM_V": SC_CUM_V,
    "SC_MACD_FAST": SC_MACD_FAST,
    "SC_MACD_SLOW": SC_MACD_SLOW,
    "SC_MACD_SIG": SC_MACD_SIG,
    "SC_RSI_GAIN": SC_RSI_GAIN,
    "SC_RSI_LOSS": SC_RSI_LOSS,
    "SC_EMA0": SC_EMA0,
    **{f"F_{k.upper()}": v for k, v in SLOT.items()},
}

_BODY = r"""
__device__ __forceinline__ double ema_step(double e, double x, double a) {
    if (e != x) {
        double om = 1.0 - a;
        e = (om * e + a * x) / (om + a);
    }
    return e;
}

__device__ __forceinline__ long long floordiv(long long a, long long b) {
    long long q = a / b;
    if ((a % b != 0) && (a < 0)) q -= 1;
    return q;
}

extern "C" __global__ void tick_features(
    const int S, const long long n,
    const int* __restrict__ order, const long long* __restrict__ offsets,
    const long long* __restrict__ ts, const signed char* __restrict__ kind,
    const double* __restrict__ price, const double* __restrict__ size,
    const signed char* __restrict__ side, const double* __restrict__ bid,
    const double* __restrict__ ask, const double* __restrict__ bid_size,
    const double* __restrict__ ask_size,
    double* feat, double* sc, long long* ist,
    double* r_price, double* r_size, double* r_flow, double* r_ret,
    long long* t_ts, double* t_price,
    const double* __restrict__ ema_alpha, const int n_ema,
    const double* __restrict__ macd_alpha,
    const int n_win, const long long window_ns, const int cap, const int rsi_p,
    const int sess_on, const long long sess_off, const int do_time, const int do_roll,
    const double boll_k, const double rvol_scale,
    const int* __restrict__ col_idx, const int n_slots, const int n_sc,
    double* out)
{
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= S) return;
    const long long beg = offsets[s];
    const long long end = offsets[s + 1];
    if (beg == end) return;
    const double NaN = __longlong_as_double(0x7ff8000000000000LL);
    double* f = feat + (long long)s * n_slots;
    double* c = sc + (long long)s * n_sc;
    long long* is = ist + (long long)s * 2;
    double* rp = r_price + (long long)s * n_win;
    double* rs = r_size + (long long)s * n_win;
    double* rf = r_flow + (long long)s * n_win;
    double* rr = r_ret + (long long)s * n_win;
    long long* tt = t_ts + (long long)s * cap;
    double* tp = t_price + (long long)s * cap;

    for (long long jr = beg; jr < end; ++jr) {
        const long long r = order[jr];
        if (kind[r] == 0) {
            const long long t = ts[r];
            const double p = price[r];
            const double v = size[r];
            const double sd = (double)side[r];
            const long long nt = is[IS_NTRADES];
            const double prev = c[SC_PREV];
            double ret, lr;
            if (nt >= 1) {
                double ratio = p / prev;
                ret = ratio - 1.0;
                lr = log(ratio);
            } else {
                ret = NaN;
                lr = NaN;
            }
            f[F_LAST_PRICE] = p;
            f[F_RET] = ret;
            f[F_LOG_RET] = lr;
            if (sess_on) {
                long long sid = floordiv(t - sess_off, DAY_NS);
                if (sid != is[IS_SESSION]) {
                    is[IS_SESSION] = sid;
                    c[SC_CUM_PV] = 0.0;
                    c[SC_CUM_V] = 0.0;
                }
            }
            c[SC_CUM_PV] += p * v;
            c[SC_CUM_V] += v;
            f[F_VWAP_SESSION] = (c[SC_CUM_V] != 0.0) ? c[SC_CUM_PV] / c[SC_CUM_V] : NaN;
            for (int j = 0; j < n_ema; ++j) {
                double e = (nt == 0) ? p : ema_step(c[SC_EMA0 + j], p, ema_alpha[j]);
                c[SC_EMA0 + j] = e;
                f[N_FIXED + j] = e;
            }
            double fast, slow, macd, sig;
            if (nt == 0) {
                fast = p; slow = p; macd = 0.0; sig = 0.0;
            } else {
                fast = ema_step(c[SC_MACD_FAST], p, macd_alpha[0]);
                slow = ema_step(c[SC_MACD_SLOW], p, macd_alpha[1]);
                macd = fast - slow;
                sig = ema_step(c[SC_MACD_SIG], macd, macd_alpha[2]);
            }
            c[SC_MACD_FAST] = fast;
            c[SC_MACD_SLOW] = slow;
            c[SC_MACD_SIG] = sig;
            f[F_MACD] = macd;
            f[F_MACD_SIGNAL] = sig;
            f[F_MACD_HIST] = macd - sig;
            double rsi = NaN;
            if (nt >= 1) {
                double d = p - prev;
                double g = d > 0.0 ? d : 0.0;
                double lo = d < 0.0 ? -d : 0.0;
                if (nt <= rsi_p) {
                    c[SC_RSI_GAIN] += g;
                    c[SC_RSI_LOSS] += lo;
                    if (nt == rsi_p) {
                        c[SC_RSI_GAIN] = c[SC_RSI_GAIN] / (double)rsi_p;
                        c[SC_RSI_LOSS] = c[SC_RSI_LOSS] / (double)rsi_p;
                    }
                } else {
                    c[SC_RSI_GAIN] = (c[SC_RSI_GAIN] * (double)(rsi_p - 1) + g) / (double)rsi_p;
                    c[SC_RSI_LOSS] = (c[SC_RSI_LOSS] * (double)(rsi_p - 1) + lo) / (double)rsi_p;
                }
                if (nt >= rsi_p) {
                    double ag = c[SC_RSI_GAIN];
                    double al = c[SC_RSI_LOSS];
                    rsi = (ag + al > 0.0) ? 100.0 * ag / (ag + al) : 50.0;
                }
            }
            f[F_RSI] = rsi;
            const int slot = (int)(nt % n_win);
            rp[slot] = p;
            rs[slot] = v;
            rf[slot] = sd * v;
            if (nt >= 1) rr[slot] = lr;
            const long long n1 = nt + 1;
            is[IS_NTRADES] = n1;
            c[SC_PREV] = p;
            if (!do_roll) {
            } else if (n1 >= n_win) {
                double acc = 0.0, spv = 0.0, sv = 0.0, sf = 0.0;
                for (int j = 0; j < n_win; ++j) {
                    double x = rp[j];
                    acc += x - p;
                    spv += x * rs[j];
                    sv += rs[j];
                    sf += rf[j];
                }
                double mean = p + acc / (double)n_win;
                double ss = 0.0, cc = 0.0;
                for (int j = 0; j < n_win; ++j) {
                    double dd = rp[j] - mean;
                    ss += dd * dd;
                    cc += dd;
                }
                double var = (ss - cc * cc / (double)n_win) / (double)(n_win - 1);
                if (var < 0.0) var = 0.0;
                double std = sqrt(var);
                f[F_ROLL_MEAN] = mean;
                f[F_ROLL_STD] = std;
                f[F_ROLL_Z] = (std > 0.0) ? (p - mean) / std : NaN;
                f[F_BOLL_UPPER] = mean + boll_k * std;
                f[F_BOLL_LOWER] = mean - boll_k * std;
                if (sv != 0.0) {
                    f[F_VWAP_ROLL] = spv / sv;
                    f[F_FLOW_IMB] = sf / sv;
                } else {
                    f[F_VWAP_ROLL] = NaN;
                    f[F_FLOW_IMB] = NaN;
                }
            } else {
                f[F_ROLL_MEAN] = NaN;
                f[F_ROLL_STD] = NaN;
                f[F_ROLL_Z] = NaN;
                f[F_BOLL_UPPER] = NaN;
                f[F_BOLL_LOWER] = NaN;
                f[F_VWAP_ROLL] = NaN;
                f[F_FLOW_IMB] = NaN;
            }
            if (!do_roll) {
            } else if (n1 - 1 >= n_win) {
                double sr = 0.0;
                for (int j = 0; j < n_win; ++j) sr += rr[j] * rr[j];
                f[F_RVOL] = sqrt(rvol_scale * sr);
            } else {
                f[F_RVOL] = NaN;
            }
            if (do_time) {
                const int tslot = (int)(nt % cap);
                tt[tslot] = t;
                tp[tslot] = p;
                const long long cnt = n1 < cap ? n1 : cap;
                const long long lo_t = t - window_ns;
                long long m = 0;
                int j = tslot;
                double acc = 0.0;
                while (m < cnt) {
                    if (tt[j] <= lo_t) break;
                    acc += tp[j] - p;
                    m += 1;
                    j = (j > 0) ? j - 1 : cap - 1;
                }
                double mean = p + acc / (double)m;
                f[F_TIME_MEAN] = mean;
                if (m >= 2) {
                    double ss = 0.0, cc = 0.0;
                    j = tslot;
                    for (long long k = 0; k < m; ++k) {
                        double dd = tp[j] - mean;
                        ss += dd * dd;
                        cc += dd;
                        j = (j > 0) ? j - 1 : cap - 1;
                    }
                    double var = (ss - cc * cc / (double)m) / (double)(m - 1);
                    if (var < 0.0) var = 0.0;
                    f[F_TIME_STD] = sqrt(var);
                } else {
                    f[F_TIME_STD] = NaN;
                }
            }
        }
        {
            const double b = bid[r];
            const double a = ask[r];
            const double sp = a - b;
            const double mid = 0.5 * (a + b);
            f[F_SPREAD] = sp;
            f[F_REL_SPREAD] = (mid != 0.0) ? sp / mid : NaN;
            const double den = bid_size[r] + ask_size[r];
            f[F_BOOK_IMB] = (den != 0.0) ? (bid_size[r] - ask_size[r]) / den : NaN;
        }
        for (int k = 0; k < n_slots; ++k) {
            const int ci = col_idx[k];
            if (ci >= 0) out[(long long)ci * n + r] = f[k];
        }
    }
}
"""


def kernel_source() -> str:
    """The full CUDA C source (constants as ``#define`` lines, then the kernel)."""
    defines = "\n".join(f"#define {k} {v}" for k, v in _DEFINES.items())
    return defines + "\n" + _BODY


@lru_cache(maxsize=1)
def _kernel() -> Any:
    import cupy as cp

    return cp.RawKernel(kernel_source(), "tick_features", options=("--fmad=false",))


def group_by_symbol(sym: Any, n_symbols: int) -> tuple[Any, Any]:
    """Stable grouping of rows by symbol on the device.

    Args:
        sym: CuPy int32 (n,) symbol codes, all in ``[0, n_symbols)``.
        n_symbols: S.

    Returns:
        ``order`` int32 (n,): row indices, grouped by symbol, arrival order within a symbol;
        ``offsets`` int64 (S+1,): symbol ``s`` owns ``order[offsets[s]:offsets[s+1]]``.
    """
    import cupy as cp

    n = int(sym.shape[0])
    key = (sym.astype(cp.int64) << 32) | cp.arange(n, dtype=cp.int64)
    key = cp.sort(key)
    order = (key & 0xFFFFFFFF).astype(cp.int32)
    counts = cp.bincount(sym, minlength=n_symbols)
    offsets = cp.zeros(n_symbols + 1, dtype=cp.int64)
    offsets[1:] = cp.cumsum(counts)
    return order, offsets


def process_batch_gpu(
    cols: Any,
    st: dict[str, Any],
    ema_alpha: Any,
    macd_alpha: Any,
    params: dict[str, Any],
    col_idx: Any,
    n_out: int,
) -> Any:
    """Run the kernel on a device batch; updates ``st`` arrays in place.

    Args:
        cols: :class:`~mystocks_gpu.gpu_ops.tick_columns.TickColumns` of CuPy arrays, n rows.
        st: the state arrays (CuPy), named as in ``features_cpu``.
        ema_alpha, macd_alpha: CuPy float64 (n_spans,), (3,).
        params: ``n_win, window_ns, cap, rsi_p, sess_on, sess_off, do_time, do_roll, boll_k,
            rvol_scale`` (host scalars).
        col_idx: CuPy int32 (n_slots,), ``FeatureConfig.column_index()``.
        n_out: K, output rows.

    Returns:
        CuPy float64 (K, n) outputs, one column per input row in input order.
    """
    import cupy as cp

    n = len(cols)
    out = cp.empty((n_out, n), dtype=cp.float64)
    if n == 0:
        return out
    feat = st["feat"]
    S = int(feat.shape[0])
    order, offsets = group_by_symbol(cols.sym, S)
    block = 32  # small blocks spread the (few) symbol threads over all SMs
    grid = (S + block - 1) // block
    args = (
        np.int32(S), np.int64(n), order, offsets,
        cols.ts, cols.kind, cols.price, cols.size, cols.side,
        cols.bid, cols.ask, cols.bid_size, cols.ask_size,
        feat, st["sc"], st["ist"], st["r_price"], st["r_size"], st["r_flow"], st["r_ret"],
        st["t_ts"], st["t_price"],
        ema_alpha, np.int32(ema_alpha.shape[0]), macd_alpha,
        np.int32(params["n_win"]), np.int64(params["window_ns"]), np.int32(params["cap"]),
        np.int32(params["rsi_p"]), np.int32(params["sess_on"]), np.int64(params["sess_off"]),
        np.int32(params["do_time"]), np.int32(params["do_roll"]), np.float64(params["boll_k"]),
        np.float64(params["rvol_scale"]),
        col_idx, np.int32(feat.shape[1]), np.int32(st["sc"].shape[1]), out,
    )
    _kernel()((grid,), (block,), args)
    return out


class PinnedStager:
    """Reusable pinned host buffers and a CUDA stream for host <-> device batch transfers.

    :meth:`upload` packs the ten tick columns of a host batch into one pinned buffer
    (each column 256-byte aligned) and issues a single asynchronous host-to-device copy on
    :attr:`stream`; :meth:`download` copies a device (K, n) float64 matrix back through a
    second pinned buffer and synchronises the stream. Buffers grow (x1.5) as needed and
    are reused across batches; this object is not thread-safe.
    """

    ALIGN = 256

    def __init__(self) -> None:
        import cupy as cp

        self.stream = cp.cuda.Stream(non_blocking=True)
        self._in: tuple[Any, np.ndarray] | None = None
        self._out: tuple[Any, np.ndarray] | None = None

    @staticmethod
    def _pinned(current: tuple[Any, np.ndarray] | None, nbytes: int) -> tuple[Any, np.ndarray]:
        import cupy as cp

        if current is not None and current[1].nbytes >= nbytes:
            return current
        size = max(nbytes, int(1.5 * (current[1].nbytes if current else 0)), 1 << 20)
        mem = cp.cuda.alloc_pinned_memory(size)
        return mem, np.frombuffer(mem, dtype=np.uint8, count=size)

    def upload(self, host: Any) -> Any:
        """Stage a host :class:`TickColumns` and return its device twin (views of one buffer).

        Must be called inside ``with self.stream``; the copy is asynchronous on that stream.
        """
        import cupy as cp

        from mystocks_gpu.gpu_ops.tick_columns import TickColumns

        cols = host.columns()
        offsets: dict[str, int] = {}
        pos = 0
        for name, a in cols.items():
            offsets[name] = pos
            pos += -(-a.nbytes // self.ALIGN) * self.ALIGN
        self._in = self._pinned(self._in, pos)
        buf = self._in[1]
        for name, a in cols.items():
            o = offsets[name]
            buf[o : o + a.nbytes] = a.view(np.uint8)
        dev = cp.empty(pos, dtype=cp.uint8)
        dev.set(buf[:pos], stream=self.stream)
        return TickColumns(
            **{
                name: dev[offsets[name] : offsets[name] + a.nbytes].view(a.dtype)
                for name, a in cols.items()
            }
        )

    def download(self, mat: Any) -> np.ndarray:
        """Copy a device float64 (K, n) matrix to a new host array via pinned memory."""
        self._out = self._pinned(self._out, mat.nbytes)
        view = self._out[1][: mat.nbytes].view(np.float64).reshape(mat.shape)
        if mat.size:
            mat.get(stream=self.stream, out=view)
        self.stream.synchronize()
        return view.copy()
