"""GPU implementation of the backtest indicators and simulation (CuPy ``RawKernel``s).

Twins of ``signals.py`` (indicators) and ``sim_cpu.py`` (simulation): the same operations in the
same order, compiled with ``--fmad=false`` (no fused multiply-add contraction), so the results are
the CPU's doubles. CuPy is imported only inside these functions.

Kernels (all ``extern "C"``; arrays are C-contiguous, int64 indices):

- ``bt_sma`` / ``bt_zscore`` mode of ``bt_window``: one thread per (window, symbol, column); sums the
  window in the block order of ``signals.py`` (suffix of the previous block right to left + prefix
  of the current block left to right), so no thread depends on another.
- ``bt_channel``: one thread per (HH/LL row, symbol, column); max/min over the previous ``w`` bars.
- ``bt_rsi``: one thread per (period, symbol) walking the columns (Wilder recursion, carried state).
- ``bt_sim``: one thread per cell (parameter set x symbol) walking the columns; consecutive threads
  are consecutive parameter sets of one symbol, so price loads are broadcasts within a warp.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backtest import state as st
from mystocks_gpu.gpu_ops.backtest.strategies import (
    BREAKOUT,
    MA_CROSS,
    RSI,
    SIGNAL,
    ZSCORE,
    GridPlan,
)

_THREADS = 256
_SIM_THREADS = 64  # a few thousand cells per chunk still spread over every SM

_SOURCE = r"""
#define MS_NAN __longlong_as_double(0x7ff8000000000000LL)
#define MS_INF __longlong_as_double(0x7ff0000000000000LL)
#define MA_CROSS %(MA_CROSS)d
#define BREAKOUT %(BREAKOUT)d
#define ZSCORE %(ZSCORE)d
#define RSI %(RSI)d
#define EL %(EL)d
#define XL %(XL)d
#define ES %(ES)d
#define XS %(XS)d
#define A_NONE %(A_NONE)d
#define A_OPEN_LONG %(A_OPEN_LONG)d
#define A_CLOSE_LONG %(A_CLOSE_LONG)d
#define A_OPEN_SHORT %(A_OPEN_SHORT)d
#define A_CLOSE_SHORT %(A_CLOSE_SHORT)d
#define A_REV_TO_SHORT %(A_REV_TO_SHORT)d
#define A_REV_TO_LONG %(A_REV_TO_LONG)d
#define ZFLAT %(ZFLAT)r
#define DD_MARGIN %(DD_MARGIN)r

extern "C" __global__ void bt_window(const double* __restrict__ x, const long long* __restrict__ windows,
                                     const int n_w, const int n_s, const int L, const long long base,
                                     const int zmode, double* __restrict__ out)
{
    long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)n_w * n_s * L;
    if (gid >= total) return;
    long long j = gid %% L;
    long long r = gid / L;
    long long s = r %% n_s;
    long long wi = r / n_s;
    long long w = windows[wi];
    const double* xr = x + s * (long long)L;
    long long t = base + j;
    long long a = t - w + 1;
    double res = MS_NAN;
    if (a >= base) {
        long long bs = (t / w) * w;
        double pfx = xr[bs - base];
        for (long long q = bs + 1; q <= t; ++q) pfx = pfx + xr[q - base];
        double sum;
        if (a == bs) {
            sum = pfx;
        } else {
            double sfx = xr[bs - 1 - base];
            for (long long q = bs - 2; q >= a; --q) sfx = sfx + xr[q - base];
            sum = sfx + pfx;
        }
        double m = sum / (double)w;
        if (!zmode) {
            res = m;
        } else {
            double v = 0.0;
            for (long long q = a; q <= t; ++q) {
                double d = xr[q - base] - m;
                v += d * d;
            }
            double sd = sqrt(v / (double)w);
            if (sd > ZFLAT * fabs(m)) res = (xr[j] - m) / sd;
            else res = MS_NAN;
        }
    }
    out[gid] = res;
}

extern "C" __global__ void bt_channel(const double* __restrict__ high, const double* __restrict__ low,
                                      const long long* __restrict__ windows, const int n_w, const int n_s,
                                      const int L, const long long base, double* __restrict__ out)
{
    long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = 2LL * n_w * n_s * L;
    if (gid >= total) return;
    long long j = gid %% L;
    long long r = gid / L;
    long long s = r %% n_s;
    long long i = r / n_s;
    bool is_max = i < n_w;
    long long w = windows[is_max ? i : i - n_w];
    const double* xr = (is_max ? high : low) + s * (long long)L;
    long long t = base + j;
    long long a = t - w;
    double res = MS_NAN;
    if (a >= base) {
        double m = xr[a - base];
        bool bad = !(m == m);
        for (long long q = a + 1; q < t; ++q) {
            double v = xr[q - base];
            if (!(v == v)) bad = true;
            else if (is_max ? (v > m) : (v < m)) m = v;
        }
        res = bad ? MS_NAN : m;
    }
    out[gid] = res;
}

extern "C" __global__ void bt_rsi(const double* __restrict__ close, const long long* __restrict__ periods,
                                  const int n_p, const int n_s, const int L, const int j0,
                                  double* __restrict__ carry, double* __restrict__ out)
{
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (long long)n_p * n_s) return;
    long long i = r / n_s;
    long long s = r %% n_s;
    double per = (double)periods[i];
    double perm1 = (double)(periods[i] - 1);
    const double* cr = close + s * (long long)L;
    double* o = out + (i * n_s + s) * (long long)L;
    double* cy = carry + (i * n_s + s) * 3;
    double k = cy[0], g = cy[1], lo = cy[2];
    for (int j = 0; j < j0; ++j) o[j] = MS_NAN;
    for (int j = j0; j < L; ++j) {
        double c = cr[j];
        if (j >= 1 && fabs(c) < MS_INF && fabs(cr[j - 1]) < MS_INF) {
            double d = c - cr[j - 1];
            double gain = d > 0.0 ? d : 0.0;
            double loss = d < 0.0 ? -d : 0.0;
            if (k < per) {
                g = g + gain;
                lo = lo + loss;
                k = k + 1.0;
                if (k == per) {
                    g = g / per;
                    lo = lo / per;
                }
            } else {
                g = (g * perm1 + gain) / per;
                lo = (lo * perm1 + loss) / per;
            }
            if (k == per) {
                double den = g + lo;
                o[j] = den > 0.0 ? 100.0 * g / den : 50.0;
            } else {
                o[j] = MS_NAN;
            }
        } else {
            k = 0.0; g = 0.0; lo = 0.0;
            o[j] = MS_NAN;
        }
    }
    cy[0] = k; cy[1] = g; cy[2] = lo;
}

__device__ __forceinline__ int signal_flags(int code, double a_t, double a_p, double b_t, double b_p,
                                            double c, double th0, double th1)
{
    if (code == MA_CROSS || code == BREAKOUT) {
        bool up, dn;
        if (code == MA_CROSS) {
            up = (a_t > b_t) && (a_p <= b_p);
            dn = (a_t < b_t) && (a_p >= b_p);
        } else {
            up = c > a_t;
            dn = c < b_t;
        }
        int f = 0;
        if (up) f |= EL | XS;
        if (dn) f |= XL | ES;
        return f;
    }
    bool el, xl, es, xs;
    if (code == ZSCORE) {
        el = a_t < -th0; xl = a_t > -th1; es = a_t > th0; xs = a_t < th1;
    } else if (code == RSI) {
        el = a_t < th0; xl = a_t > th1; es = a_t > th1; xs = a_t < th0;
    } else {
        el = a_t > th0; xl = a_t < th1; es = a_t < -th0; xs = a_t > -th1;
    }
    return (el ? EL : 0) | (xl ? XL : 0) | (es ? ES : 0) | (xs ? XS : 0);
}

__device__ __forceinline__ int resolve_action(int flags, double units, int long_short)
{
    bool el = (flags & EL) != 0;
    bool xl = (flags & XL) != 0;
    bool es = long_short && (flags & ES) != 0;
    bool xs = long_short && (flags & XS) != 0;
    if (el && xl) { el = false; xl = false; }
    if (es && xs) { es = false; xs = false; }
    if (el && es) { el = false; es = false; }
    if (units > 0.0) return es ? A_REV_TO_SHORT : (xl ? A_CLOSE_LONG : A_NONE);
    if (units < 0.0) return el ? A_REV_TO_LONG : (xs ? A_CLOSE_SHORT : A_NONE);
    return el ? A_OPEN_LONG : (es ? A_OPEN_SHORT : A_NONE);
}

__device__ __forceinline__ void execute_order(
    int act, double px, int fixed_sizing, double size, double fee, double fixed_fee, double slip,
    double& cash, double& units, double& entry, double& fees, long long& nclosed, long long& nwins)
{
    if (act == A_CLOSE_LONG || act == A_REV_TO_SHORT) {
        double fill = px * (1.0 - slip);
        double proceeds = units * fill;
        double fp = proceeds * fee + fixed_fee;
        double net = proceeds - fp;
        if (net >= 0.0) {
            cash = cash + net;
            fees = fees + fp;
            nclosed += 1;
            if (net - entry > 0.0) nwins += 1;
            units = 0.0;
        } else {
            act = A_NONE;
        }
    } else if (act == A_CLOSE_SHORT || act == A_REV_TO_LONG) {
        double fill = px * (1.0 + slip);
        double cost = (-units) * fill;
        double fp = cost * fee + fixed_fee;
        double tot = cost + fp;
        cash = cash - tot;
        fees = fees + fp;
        nclosed += 1;
        if (entry - tot > 0.0) nwins += 1;
        units = 0.0;
    }
    if (act == A_OPEN_LONG || act == A_REV_TO_LONG) {
        double fill = px * (1.0 + slip);
        double budget = -1.0;
        if (fixed_sizing) {
            double u = size / px;
            double cost = u * fill;
            double fp = cost * fee + fixed_fee;
            double tot = cost + fp;
            if (tot <= cash) {
                units = u;
                cash = cash - tot;
                fees = fees + fp;
                entry = tot;
            } else {
                budget = cash;
            }
        } else {
            budget = size * cash;
        }
        if (budget - fixed_fee > 0.0) {
            double notional = (budget - fixed_fee) / (1.0 + fee);
            units = notional / fill;
            fees = fees + (budget - notional);
            cash = cash - budget;
            entry = budget;
        }
    } else if (act == A_OPEN_SHORT || act == A_REV_TO_SHORT) {
        double fill = px * (1.0 - slip);
        double u = 0.0;
        if (fixed_sizing) {
            u = size / px;
        } else {
            double budget = size * cash;
            if (budget - fixed_fee > 0.0) u = ((budget - fixed_fee) / (1.0 + fee)) / fill;
        }
        if (u > 0.0) {
            double proceeds = u * fill;
            double fp = proceeds * fee + fixed_fee;
            double net = proceeds - fp;
            if (net >= 0.0) {
                units = -u;
                cash = cash + net;
                fees = fees + fp;
                entry = net;
            }
        }
    }
}

extern "C" __global__ void bt_sim(
    const int code, const int long_short, const int next_open, const int fixed_sizing,
    const double size, const double fee, const double fixed_fee, const double slip,
    const double* __restrict__ open_, const double* __restrict__ close,
    const double* __restrict__ ind, const long long* __restrict__ pidx, const double* __restrict__ pval,
    const int n_s, const int L, const int j0,
    const long long* __restrict__ cell_ids, const int n_run, const long long n_par,
    double* __restrict__ sf, long long* __restrict__ si,
    const int record, double* __restrict__ eq_out, double* __restrict__ dd_out)
{
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n_run) return;
    long long cell = cell_ids[k];
    long long s = cell / n_par;
    long long p = cell - s * n_par;
    long long ia = pidx[2 * p], ib = pidx[2 * p + 1];
    double th0 = pval[2 * p], th1 = pval[2 * p + 1];
    const double* orow = open_ + s * (long long)L;
    const double* crow = close + s * (long long)L;
    const double* arow = ind + (ia * n_s + s) * (long long)L;
    const double* brow = ind + (ib * n_s + s) * (long long)L;
    const long long R = n_run;
    double cash = sf[%(F_CASH)d * R + k];
    double units = sf[%(F_UNITS)d * R + k];
    double entry = sf[%(F_ENTRY)d * R + k];
    double eq = sf[%(F_EQ)d * R + k];
    double peak = sf[%(F_PEAK)d * R + k];
    double s1 = sf[%(F_S1)d * R + k];
    double s2 = sf[%(F_S2)d * R + k];
    double sn2 = sf[%(F_SN2)d * R + k];
    double maxdd = sf[%(F_MAXDD)d * R + k];
    double fees = sf[%(F_FEES)d * R + k];
    long long nvalid = si[%(I_NVALID)d * R + k];
    long long nexp = si[%(I_NEXP)d * R + k];
    long long nclosed = si[%(I_NCLOSED)d * R + k];
    long long nwins = si[%(I_NWINS)d * R + k];
    long long run = si[%(I_RUN)d * R + k];
    long long maxrun = si[%(I_MAXRUN)d * R + k];
    int pending = (int)si[%(I_PENDING)d * R + k];
    double dd = eq < peak ? 1.0 - eq / peak : 0.0;
    double thr = peak * (1.0 - maxdd + DD_MARGIN);
    double a_p = j0 > 0 ? arow[j0 - 1] : MS_NAN;
    double b_p = j0 > 0 ? brow[j0 - 1] : MS_NAN;
    const long long W = L - j0;
    for (int j = j0; j < L; ++j) {
        double o = orow[j];
        double c = crow[j];
        double a_t = arow[j];
        double b_t = brow[j];
        if (!(fabs(o) < MS_INF && fabs(c) < MS_INF)) {
            pending = A_NONE;
            if (record) {
                eq_out[k * W + (j - j0)] = eq;
                dd_out[k * W + (j - j0)] = dd;
            }
            a_p = a_t;
            b_p = b_t;
            continue;
        }
        if (pending != A_NONE) {
            execute_order(pending, o, fixed_sizing, size, fee, fixed_fee, slip, cash, units, entry, fees, nclosed, nwins);
            pending = A_NONE;
        }
        int flags = signal_flags(code, a_t, a_p, b_t, b_p, c, th0, th1);
        if (flags != 0) {
            int act = resolve_action(flags, units, long_short);
            if (act != A_NONE) {
                if (next_open) pending = act;
                else execute_order(act, c, fixed_sizing, size, fee, fixed_fee, slip, cash, units, entry, fees, nclosed, nwins);
            }
        }
        double e = cash + units * c;
        if (e != eq && eq > 0.0) {
            double r = e / eq - 1.0;
            s1 = s1 + r;
            s2 = s2 + r * r;
            double rn = r < 0.0 ? r : 0.0;
            sn2 = sn2 + rn * rn;
        }
        nvalid += 1;
        if (units != 0.0) nexp += 1;
        if (e > peak) {
            peak = e;
            run = 0;
            dd = 0.0;
            thr = peak * (1.0 - maxdd + DD_MARGIN);
        } else if (e < peak) {
            run += 1;
            if (run > maxrun) maxrun = run;
            if (e != eq && (record || e < thr)) {
                dd = 1.0 - e / peak;
                if (dd > maxdd) {
                    maxdd = dd;
                    thr = peak * (1.0 - maxdd + DD_MARGIN);
                }
            }
        } else {
            run = 0;
            dd = 0.0;
        }
        eq = e;
        if (record) {
            eq_out[k * W + (j - j0)] = e;
            dd_out[k * W + (j - j0)] = dd;
        }
        a_p = a_t;
        b_p = b_t;
    }
    sf[%(F_CASH)d * R + k] = cash;
    sf[%(F_UNITS)d * R + k] = units;
    sf[%(F_ENTRY)d * R + k] = entry;
    sf[%(F_EQ)d * R + k] = eq;
    sf[%(F_PEAK)d * R + k] = peak;
    sf[%(F_S1)d * R + k] = s1;
    sf[%(F_S2)d * R + k] = s2;
    sf[%(F_SN2)d * R + k] = sn2;
    sf[%(F_MAXDD)d * R + k] = maxdd;
    sf[%(F_FEES)d * R + k] = fees;
    si[%(I_NVALID)d * R + k] = nvalid;
    si[%(I_NEXP)d * R + k] = nexp;
    si[%(I_NCLOSED)d * R + k] = nclosed;
    si[%(I_NWINS)d * R + k] = nwins;
    si[%(I_RUN)d * R + k] = run;
    si[%(I_MAXRUN)d * R + k] = maxrun;
    si[%(I_PENDING)d * R + k] = pending;
}
"""


def kernel_source() -> str:
    """The CUDA C source of every backtest kernel, constants filled in."""
    consts: dict[str, Any] = {name: getattr(st, name) for name in dir(st) if name.isupper()}
    consts.update(
        MA_CROSS=MA_CROSS,
        BREAKOUT=BREAKOUT,
        ZSCORE=ZSCORE,
        RSI=RSI,
        ZFLAT=st.ZSCORE_FLAT_REL,
        DD_MARGIN=st.DD_MARGIN,
    )
    return _SOURCE % consts


@lru_cache(maxsize=1)
def _module() -> Any:
    import cupy as cp

    return cp.RawModule(code=kernel_source(), options=("--fmad=false",))


def _blocks(total: int) -> tuple[int]:
    return ((total + _THREADS - 1) // _THREADS,)


def compute_indicators_gpu(
    plan: GridPlan, data: dict[str, Any], base: int, j0: int, carry: Any
) -> Any:
    """GPU twin of ``signals.compute_indicators_cpu`` (CuPy arrays in and out; ``carry`` updated)."""
    import cupy as cp

    close = data["close"]
    n_s, n = close.shape
    if plan.code == SIGNAL:
        return cp.ascontiguousarray(data["signal"], dtype=cp.float64).reshape(1, n_s, n)
    wins = cp.asarray(plan.ind_windows, dtype=cp.int64)
    n_w = int(plan.ind_windows.shape[0])
    out = cp.empty((plan.n_ind, n_s, n), dtype=cp.float64)
    mod = _module()
    if plan.code in (MA_CROSS, ZSCORE):
        total = n_w * n_s * n
        if total:
            mod.get_function("bt_window")(
                _blocks(total),
                (_THREADS,),
                (
                    close,
                    wins,
                    np.int32(n_w),
                    np.int32(n_s),
                    np.int32(n),
                    np.int64(base),
                    np.int32(1 if plan.code == ZSCORE else 0),
                    out,
                ),
            )
    elif plan.code == BREAKOUT:
        total = 2 * n_w * n_s * n
        if total:
            mod.get_function("bt_channel")(
                _blocks(total),
                (_THREADS,),
                (
                    data["high"],
                    data["low"],
                    wins,
                    np.int32(n_w),
                    np.int32(n_s),
                    np.int32(n),
                    np.int64(base),
                    out,
                ),
            )
    elif plan.code == RSI:
        total = n_w * n_s
        if total:
            mod.get_function("bt_rsi")(
                _blocks(total),
                (_THREADS,),
                (close, wins, np.int32(n_w), np.int32(n_s), np.int32(n), np.int32(j0), carry, out),
            )
    return out


def simulate_gpu(
    code: int,
    long_short: bool,
    next_open: bool,
    fixed_sizing: bool,
    size: float,
    fee: float,
    fixed_fee: float,
    slip: float,
    open_: Any,
    close: Any,
    ind: Any,
    pidx: Any,
    pval: Any,
    j0: int,
    cell_ids: Any,
    n_par: int,
    sf: Any,
    si: Any,
    record: bool,
    eq_out: Any,
    dd_out: Any,
) -> None:
    """GPU twin of ``sim_cpu.simulate_cpu`` (same arguments, CuPy arrays; state updated in place)."""
    import cupy as cp

    n_run = int(cell_ids.shape[0])
    if n_run == 0:
        return
    n_s, n = close.shape
    if eq_out is None:
        eq_out = cp.empty((1, 1), dtype=cp.float64)
        dd_out = eq_out
    _module().get_function("bt_sim")(
        ((n_run + _SIM_THREADS - 1) // _SIM_THREADS,),
        (_SIM_THREADS,),
        (
            np.int32(code),
            np.int32(bool(long_short)),
            np.int32(bool(next_open)),
            np.int32(bool(fixed_sizing)),
            np.float64(size),
            np.float64(fee),
            np.float64(fixed_fee),
            np.float64(slip),
            open_,
            close,
            ind,
            pidx,
            pval,
            np.int32(n_s),
            np.int32(n),
            np.int32(j0),
            cell_ids,
            np.int32(n_run),
            np.int64(n_par),
            sf,
            si,
            np.int32(bool(record)),
            eq_out,
            dd_out,
        ),
    )
