// Tick-feature kernels of the GPU backend: chunked replay (twin of features_cpu.process_batch).
//
// Layout. The batch's n rows are cut into row blocks of R = 2^LOG_R consecutive rows; a chunk is
// the rows of one symbol inside one row block (chunk c = b * S + s), listed in arrival order at
// gidx[coff[c] .. coff[c+1]) ("grouped positions"). A chunk's rows lie inside one row block, so
// every pass that walks chunks touches a window of R rows at a time and its gathers and scattered
// output writes stay in L2.
//
// Passes (host side: features_gpu.py), one thread per row / chunk / symbol / trade:
//   fx_hist + fx_scatter  (CUDA blocks) group the rows chunk by chunk (or: a device sort of the
//                         unique key chunk << 32 | row), then fx_gather (row) copies each row's
//                         trade columns into a 32-byte record in chunk order, and the max trade
//                         ts of each chunk
//   fx_clock   (symbol)   the symbol's trade clock entering each chunk (running max of trade ts)
//   fx_summary (chunk)    rejects too-late trades, clamps the rest to the clock, and folds the
//                         chunk's accepted trades into affine maps (EMAs, MACD, Wilder RSI) and sums
//   fx_carry   (symbol)   composes the maps chunk by chunk: every chunk's entry state
//   fx_compact (row)      the accepted trades into a symbol-major trade list
//   fx_lr      (trade)    each trade's log return
//   fx_window  (trade)    the trade-count and time-window features of each trade (lookback in the
//                         list, then the old state's rings) and the new rings
//   fx_replay  (chunk)    replays the chunk's rows with the CPU twin's arithmetic from its entry
//                         state (O(1) recursions; window features from fx_window), one output row
//                         per grouped position, the rejected flags and the new state
//   fx_permute (row)      the output rows to the (K, n) row-order outputs, with each row's spread
//                         features computed from its own quote
//
// The entry states come from composed maps, so they agree with the CPU's sequential values to a
// few ulps; inside a chunk (and for a whole batch of at most R rows) the arithmetic is the CPU's,
// statement by statement, compiled without fused multiply-adds.
//
// The same source compiles as C (no __CUDACC__) for the serial emulation the unit tests run: the
// thread index is then the global emu_tid and atomics are plain operations.
//
// Constants (#define'd by the host): slot and state column numbers (F_*, SC_*, IS_*, N_FIXED,
// DAY_NS), the parameter block indexes (PI_*), the chunk field indexes (CS_*, CI_*), and the
// compile-time sizes N_EMA, NSLOTS (= N_FIXED + N_EMA), NW (window_ticks), and NONE_T (the
// "no trade yet" clock).

#ifdef __CUDACC__
#define KERNEL extern "C" __global__
#define DEV __device__ __forceinline__
#define TID ((long long)blockIdx.x * blockDim.x + threadIdx.x)
#define ATOMIC_MAX_LL(p, v) atomicMax((long long*)(p), (long long)(v))
DEV double ll2d(long long x) { return __longlong_as_double(x); }
#else
#include <math.h>
#include <string.h>
#define KERNEL
#define DEV static inline
#define __restrict__ restrict
static long long emu_tid;
#define TID emu_tid
#define ATOMIC_MAX_LL(p, v) do { if (*(p) < (v)) *(p) = (v); } while (0)
DEV double ll2d(long long x) { double d; memcpy(&d, &x, sizeof d); return d; }
#endif

// one grouped row (32 bytes, one memory sector): its trade columns, its row index in the batch,
// and acc (fx_summary: 1 accepted trade, 2 rejected trade, 0 quote); ts is clamped to the clock
typedef struct {
    long long ts;
    double price;
    double size;
    int row;
    signed char kind;
    signed char side;
    signed char acc;
    signed char pad;
} GRow;
#define PTR(T, i) ((T*)(P[i]))

DEV double nan_d(void) { return ll2d(0x7ff8000000000000LL); }

DEV double ema_step(double e, double x, double a) {
    // pandas ewm(adjust=False): w = ((1-a) w + a x) / ((1-a) + a), skipped when w == x
    if (e != x) {
        double om = 1.0 - a;
        e = (om * e + a * x) / (om + a);
    }
    return e;
}

// ema_step as an affine map when e != x: e' = (*x_coef) e + (*y_coef) x
DEV void ema_coef(double a, double* x_coef, double* y_coef) {
    const double om = 1.0 - a;
    *x_coef = om / (om + a);
    *y_coef = a / (om + a);
}

DEV long long floordiv(long long a, long long b) {
    long long q = a / b;
    if ((a % b != 0) && (a < 0)) q -= 1;
    return q;
}

// Wilder RSI averages after a trade with price change d (nt >= 1 trades before it): the sums of
// the first rsi_p changes, then their means, then avg = (avg (rsi_p - 1) + x) / rsi_p
DEV void rsi_step(long long nt, double d, long long rsi_p, double* G, double* L) {
    const double g = d > 0.0 ? d : 0.0;
    const double lo = d < 0.0 ? -d : 0.0;
    if (nt <= rsi_p) {
        *G += g;
        *L += lo;
        if (nt == rsi_p) {
            *G = *G / (double)rsi_p;
            *L = *L / (double)rsi_p;
        }
    } else {
        *G = (*G * (double)(rsi_p - 1) + g) / (double)rsi_p;
        *L = (*L * (double)(rsi_p - 1) + lo) / (double)rsi_p;
    }
}

// spread, rel_spread, book_imb of row r into M[0..2]
DEV void micro_feats(const long long* P, long long r, double* M) {
    const double b = PTR(const double, PI_BID)[r];
    const double a = PTR(const double, PI_ASK)[r];
    const double bs = PTR(const double, PI_BSZ)[r];
    const double as_ = PTR(const double, PI_ASZ)[r];
    const double sp = a - b;
    const double mid = 0.5 * (a + b);
    M[0] = sp;
    M[1] = (mid != 0.0) ? sp / mid : nan_d();
    const double den = bs + as_;
    M[2] = (den != 0.0) ? (bs - as_) / den : nan_d();
}

DEV void micro_into(const long long* P, long long r, double* F) {
    double M[3];
    micro_feats(P, r, M);
    F[F_SPREAD] = M[0];
    F[F_REL_SPREAD] = M[1];
    F[F_BOOK_IMB] = M[2];
}

// ---------------------------------------------------------------------------------------------
// fx_gather: thread per grouped position j (< n)

KERNEL void fx_gather(const long long* __restrict__ P) {
    const long long n = P[PI_N];
    const long long j = TID;
    if (j >= n) return;
    const int r = PTR(const int, PI_GIDX)[j];
    PTR(int, PI_INV)[r] = (int)j;
    const long long c = (long long)(r >> (int)P[PI_LOG_R]) * P[PI_S] + PTR(const int, PI_SYM)[r];
    GRow g;
    g.ts = PTR(const long long, PI_TS)[r];
    g.price = PTR(const double, PI_PRICE)[r];
    g.size = PTR(const double, PI_SIZE)[r];
    g.row = r;
    g.kind = PTR(const signed char, PI_KIND)[r];
    g.side = PTR(const signed char, PI_SIDE)[r];
    g.acc = 0;
    g.pad = 0;
    PTR(GRow, PI_GROW)[j] = g;
    if (g.kind == 0) ATOMIC_MAX_LL(PTR(long long, PI_TMAX) + c, g.ts);
}

#ifdef __CUDACC__
// The fused grouping (GPU only; without it the host groups by a device sort and runs
// fx_gather). Rows are cut into sub-blocks of SB = P[PI_SUB] rows (a row block holds a whole
// number of them). fx_hist: one CUDA block per sub-block counts its rows per symbol in shared
// memory and writes hist[j * S + s]; the host turns the counts into each (sub-block, symbol)'s
// first grouped position start[j * S + s] (and coff). fx_scatter: one CUDA block per sub-block
// places its rows round by round (blockDim.x rows a round) in arrival order: inside a warp the
// rank among equal symbols comes from __match_any_sync, across the round's warps the
// per-symbol cursors (shared memory, S ints) advance warp after warp; writes gidx and inv
// (fx_gather then copies the columns in chunk order).
// the rows [*r0, *r1) of this CUDA block's sub-block
DEV void sub_block(const long long* P, long long* r0, long long* r1) {
    const long long n = P[PI_N], sb = P[PI_SUB];
    *r0 = (long long)blockIdx.x * sb;
    *r1 = (*r0 + sb < n) ? *r0 + sb : n;
}

KERNEL void fx_hist(const long long* __restrict__ P) {
    extern __shared__ int cnt[];
    const long long S = P[PI_S], j = blockIdx.x;
    long long r0, r1;
    sub_block(P, &r0, &r1);
    const int* sym = PTR(const int, PI_SYM);
    for (long long i = threadIdx.x; i < S; i += blockDim.x) cnt[i] = 0;
    __syncthreads();
    for (long long r = r0 + threadIdx.x; r < r1; r += blockDim.x) atomicAdd(&cnt[sym[r]], 1);
    __syncthreads();
    int* hist = PTR(int, PI_HIST);
    for (long long i = threadIdx.x; i < S; i += blockDim.x) hist[j * S + i] = cnt[i];
}

KERNEL void fx_scatter(const long long* __restrict__ P) {
    extern __shared__ int cur[];
    const long long S = P[PI_S], j = blockIdx.x;
    long long r0, r1;
    sub_block(P, &r0, &r1);
    const int* start = PTR(const int, PI_HIST);
    for (long long i = threadIdx.x; i < S; i += blockDim.x) cur[i] = start[j * S + i];
    __syncthreads();
    const int* sym = PTR(const int, PI_SYM);
    int* gidx = PTR(int, PI_GIDX);
    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    for (long long base = r0; base < r1; base += blockDim.x) {
        const long long r = base + tid;
        const int valid = r < r1;
        const int s = valid ? sym[r] : -1;
        const unsigned peers = __match_any_sync(0xffffffffu, s);
        const int rank = __popc(peers & ((1u << lane) - 1u));
        const int last = 31 - __clz(peers);
        int first = 0;
        for (int w = 0; w < nw; ++w) {
            if (warp == w) {
                if (valid) first = cur[s];
                __syncwarp();
                if (valid && lane == last) cur[s] = first + __popc(peers);
            }
            __syncthreads();
        }
        if (valid) {
            const long long pos = (long long)first + rank;
            gidx[pos] = (int)r;
            PTR(int, PI_INV)[r] = (int)pos;
        }
    }
}
#endif

// ---------------------------------------------------------------------------------------------
// fx_clock: thread per symbol; the clock entering each chunk (NONE_T: no trade yet)

KERNEL void fx_clock(const long long* __restrict__ P) {
    const long long S = P[PI_S];
    const long long s = TID;
    if (s >= S) return;
    const long long* ist = PTR(const long long, PI_IST) + s * N_IST;
    const long long* tmax = PTR(const long long, PI_TMAX);
    long long* clk_in = PTR(long long, PI_CLK);
    long long clk = ist[IS_NTRADES] > 0 ? ist[IS_TCLOCK] : NONE_T;
    const long long nb = P[PI_NB];
    for (long long b = 0; b < nb; ++b) {
        const long long c = b * S + s;
        clk_in[c] = clk;
        const long long tm = tmax[c];
        if (tm > clk) clk = tm;  // a rejected or clamped trade is behind the clock anyway
    }
}

// ---------------------------------------------------------------------------------------------
// fx_summary: thread per chunk

KERNEL void fx_summary(const long long* __restrict__ P) {
    const long long nch = P[PI_NCH];
    const long long c = TID;
    if (c >= nch) return;
    const long long* coff = PTR(const long long, PI_COFF);
    double* cs = PTR(double, PI_CS);
    long long* ci = PTR(long long, PI_CI);
    const long long beg = coff[c], end = coff[c + 1];
    long long m = 0, lastok = -1;
    if (beg == end) {
        ci[CI_M * nch + c] = 0;
        ci[CI_LASTOK * nch + c] = -1;
        return;
    }
    GRow* g = PTR(GRow, PI_GROW);
    const double* ema_alpha = PTR(const double, PI_EMA_ALPHA);
    const double* macd_alpha = PTR(const double, PI_MACD_ALPHA);
    const long long max_dis = P[PI_MAX_DIS];
    const int sess_on = (int)P[PI_SESS_ON];
    const long long sess_off = P[PI_SESS_OFF];
    const double rp = (double)P[PI_RSI_P];
    long long clk = PTR(const long long, PI_CLK)[c];
    int has = clk != NONE_T;
    int changed = 0;
    double ea[N_EMA > 0 ? N_EMA : 1], eb[N_EMA > 0 ? N_EMA : 1];
    for (int j = 0; j < N_EMA; ++j) { ea[j] = 1.0; eb[j] = 0.0; }
    double af = 1.0, bf = 0.0, as_ = 1.0, bs = 0.0, a3 = 1.0, cf = 0.0, csl = 0.0, b3 = 0.0;
    double ag = 1.0, bg = 0.0, al = 1.0, bl = 0.0;
    double hpv = 0.0, hv = 0.0, tpv = 0.0, tv = 0.0, first_p = 0.0, last_p = 0.0;
    long long sid_first = 0, sid_last = 0;
    double mf[3], mom[3], ex[N_EMA > 0 ? N_EMA : 1], ey[N_EMA > 0 ? N_EMA : 1];
    for (int q = 0; q < 3; ++q) ema_coef(macd_alpha[q], &mom[q], &mf[q]);
    for (int j = 0; j < N_EMA; ++j) ema_coef(ema_alpha[j], &ex[j], &ey[j]);
    const double r_a = (rp - 1.0) / rp, r_b = 1.0 / rp;
    for (long long pos = beg; pos < end; ++pos) {
        if (g[pos].kind != 0) {
            g[pos].acc = 0;
            lastok = pos;
            continue;
        }
        long long t = g[pos].ts;
        if (has && t < clk) {
            if (clk - t > max_dis) {
                g[pos].acc = 2;  // rejected
                continue;
            }
            t = clk;
            g[pos].ts = t;
        }
        g[pos].acc = 1;
        lastok = pos;
        const double p = g[pos].price;
        const double v = g[pos].size;
        if (!has) {
            for (int j = 0; j < N_EMA; ++j) { ea[j] = 0.0; eb[j] = p; }
            af = 0.0; bf = p; as_ = 0.0; bs = p; a3 = 0.0; cf = 0.0; csl = 0.0; b3 = 0.0;
        } else {
            for (int j = 0; j < N_EMA; ++j) {
                ea[j] = ex[j] * ea[j];
                eb[j] = ex[j] * eb[j] + ey[j] * p;
            }
            af = mom[0] * af;
            bf = mom[0] * bf + mf[0] * p;
            as_ = mom[1] * as_;
            bs = mom[1] * bs + mf[1] * p;
            a3 = mom[2] * a3;
            cf = mom[2] * cf + mf[2] * af;
            csl = mom[2] * csl - mf[2] * as_;
            b3 = mom[2] * b3 + mf[2] * (bf - bs);
        }
        if (m >= 1) {  // Wilder steps of the chunk's 2nd, 3rd, ... accepted trade
            const double d = p - last_p;
            ag = r_a * ag;
            bg = r_a * bg + r_b * (d > 0.0 ? d : 0.0);
            al = r_a * al;
            bl = r_a * bl + r_b * (d < 0.0 ? -d : 0.0);
        }
        const long long sid = sess_on ? floordiv(t - sess_off, DAY_NS) : 0;
        if (m == 0) {
            sid_first = sid;
            sid_last = sid;
            first_p = p;
        } else if (sid != sid_last) {
            changed = 1;
            sid_last = sid;
            tpv = 0.0;
            tv = 0.0;
        }
        if (!changed) {
            hpv += p * v;
            hv += v;
        }
        tpv += p * v;
        tv += v;
        last_p = p;
        clk = t;
        has = 1;
        m += 1;
    }
    ci[CI_M * nch + c] = m;
    ci[CI_LASTOK * nch + c] = lastok;
    ci[CI_CHANGED * nch + c] = changed;
    ci[CI_SID_FIRST * nch + c] = sid_first;
    ci[CI_SID_LAST * nch + c] = sid_last;
    for (int j = 0; j < N_EMA; ++j) {
        cs[(CS_EMA_A0 + j) * nch + c] = ea[j];
        cs[(CS_EMA_B0 + j) * nch + c] = eb[j];
    }
    cs[CS_AF * nch + c] = af;
    cs[CS_BF * nch + c] = bf;
    cs[CS_AS * nch + c] = as_;
    cs[CS_BS * nch + c] = bs;
    cs[CS_A3 * nch + c] = a3;
    cs[CS_CF * nch + c] = cf;
    cs[CS_CS * nch + c] = csl;
    cs[CS_B3 * nch + c] = b3;
    cs[CS_AG * nch + c] = ag;
    cs[CS_BG * nch + c] = bg;
    cs[CS_AL * nch + c] = al;
    cs[CS_BL * nch + c] = bl;
    cs[CS_HPV * nch + c] = hpv;
    cs[CS_HV * nch + c] = hv;
    cs[CS_TPV * nch + c] = tpv;
    cs[CS_TV * nch + c] = tv;
    cs[CS_FIRST_P * nch + c] = first_p;
    cs[CS_LAST_P * nch + c] = last_p;
}

// ---------------------------------------------------------------------------------------------
// fx_carry: thread per symbol; entry state of every chunk, per-symbol bookkeeping in symi

KERNEL void fx_carry(const long long* __restrict__ P) {
    const long long S = P[PI_S];
    const long long s = TID;
    if (s >= S) return;
    const long long nch = P[PI_NCH];
    const long long nb = P[PI_NB];
    const long long* coff = PTR(const long long, PI_COFF);
    double* cs = PTR(double, PI_CS);
    long long* ci = PTR(long long, PI_CI);
    const double* sc = PTR(const double, PI_SC) + s * P[PI_NSC];
    const long long* ist = PTR(const long long, PI_IST) + s * N_IST;
    const GRow* g = PTR(const GRow, PI_GROW);
    const long long rsi_p = P[PI_RSI_P];
    const int sess_on = (int)P[PI_SESS_ON];
    long long n = ist[IS_NTRADES], sess = ist[IS_SESSION];
    double prev = sc[SC_PREV], cpv = sc[SC_CUM_PV], cv = sc[SC_CUM_V];
    double f = sc[SC_MACD_FAST], sl = sc[SC_MACD_SLOW], sg = sc[SC_MACD_SIG];
    double G = sc[SC_RSI_GAIN], L = sc[SC_RSI_LOSS];
    double e[N_EMA > 0 ? N_EMA : 1];
    for (int j = 0; j < N_EMA; ++j) e[j] = sc[SC_EMA0 + j];
    long long lastok = -1, lastchunk = -1, lasttr = -1;
    const long long n0 = n;
    for (long long b = 0; b < nb; ++b) {
        const long long c = b * S + s;
        ci[CI_NIN * nch + c] = n;
        ci[CI_SESS * nch + c] = sess;
        ci[CI_LASTOK_IN * nch + c] = lastok;
        cs[CS_PREV * nch + c] = prev;
        cs[CS_CUMPV * nch + c] = cpv;
        cs[CS_CUMV * nch + c] = cv;
        cs[CS_F * nch + c] = f;
        cs[CS_SL * nch + c] = sl;
        cs[CS_SG * nch + c] = sg;
        cs[CS_G * nch + c] = G;
        cs[CS_L * nch + c] = L;
        for (int j = 0; j < N_EMA; ++j) cs[(CS_E0 + j) * nch + c] = e[j];
        const long long beg = coff[c], end = coff[c + 1];
        if (beg == end) continue;
        lastchunk = b;
        const long long lo = ci[CI_LASTOK * nch + c];
        if (lo >= 0) lastok = lo;
        const long long m = ci[CI_M * nch + c];
        if (m == 0) continue;
        lasttr = b;
        // Wilder RSI: replayed while seeding (the first rsi_p + 1 trades), else composed
        if (n <= rsi_p) {
            long long nt = n;
            double pp = prev;
            for (long long pos = beg; pos < end; ++pos) {
                if (g[pos].acc != 1) continue;
                const double p = g[pos].price;
                if (nt >= 1) rsi_step(nt, p - pp, rsi_p, &G, &L);
                pp = p;
                nt += 1;
            }
        } else {
            rsi_step(n, cs[CS_FIRST_P * nch + c] - prev, rsi_p, &G, &L);  // n > rsi_p: Wilder
            G = cs[CS_AG * nch + c] * G + cs[CS_BG * nch + c];
            L = cs[CS_AL * nch + c] * L + cs[CS_BL * nch + c];
        }
        for (int j = 0; j < N_EMA; ++j)
            e[j] = cs[(CS_EMA_A0 + j) * nch + c] * e[j] + cs[(CS_EMA_B0 + j) * nch + c];
        const double f0 = f, sl0 = sl;
        f = cs[CS_AF * nch + c] * f0 + cs[CS_BF * nch + c];
        sl = cs[CS_AS * nch + c] * sl0 + cs[CS_BS * nch + c];
        sg = cs[CS_A3 * nch + c] * sg + cs[CS_CF * nch + c] * f0 + cs[CS_CS * nch + c] * sl0
             + cs[CS_B3 * nch + c];
        if (sess_on) {
            if (ci[CI_CHANGED * nch + c]) {
                cpv = cs[CS_TPV * nch + c];
                cv = cs[CS_TV * nch + c];
            } else if (ci[CI_SID_FIRST * nch + c] == sess) {
                cpv += cs[CS_HPV * nch + c];
                cv += cs[CS_HV * nch + c];
            } else {
                cpv = cs[CS_HPV * nch + c];
                cv = cs[CS_HV * nch + c];
            }
            sess = ci[CI_SID_LAST * nch + c];
        } else {
            cpv += cs[CS_HPV * nch + c];
            cv += cs[CS_HV * nch + c];
        }
        prev = cs[CS_LAST_P * nch + c];
        n += m;
    }
    long long* symi = PTR(long long, PI_SYMI);
    symi[SY_N0 * S + s] = n0;
    symi[SY_NFIN * S + s] = n;
    symi[SY_LASTCHUNK * S + s] = lastchunk;
    symi[SY_LASTTR * S + s] = lasttr;
}

