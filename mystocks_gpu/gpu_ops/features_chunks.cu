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
//   fx_summary (chunk)    rejects too-late trades, clamps the rest to the clock, ranks every row
//                         among the chunk's accepted trades, and folds those into affine maps
//                         (EMAs, MACD, Wilder RSI) and sums
//   fx_carry   (symbol)   composes the maps chunk by chunk: every chunk's entry state
//   fx_compact (row)      the accepted trades into a symbol-major trade list; every row's last
//                         accepted trade (its entry in the list), the rejected flags
//   fx_lr      (trade)    each trade's log return
//   fx_window  (trade)    the trade-count and time-window features of each trade (lookback in the
//                         list, then the old state's rings: a row of tf) and the new rings
//   fx_replay  (chunk)    replays the chunk's accepted trades (its run of the trade list) with the
//                         CPU twin's arithmetic from its entry state (O(1) recursions): a row of tt
//                         per trade, and the new running state
//   fx_state   (symbol)   the symbol's new feature vector (its last trade's tt and tf rows, the
//                         spread features of its last row that is not a rejected trade)
//   fx_final   (row)      the (K, n) row-order outputs: each row's last accepted trade's tt and tf
//                         rows (or the old feature vector), and the spread features of its own
//                         quote (a rejected trade: of the symbol's last row before it)
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
// two doubles at a 16-byte aligned address in one 128-bit access
#define ST2(p, a, b) (*(double2*)(p) = make_double2((a), (b)))
#define LD2(p, a, b) do { const double2 v2_ = *(const double2*)(p); (a) = v2_.x; (b) = v2_.y; } while (0)
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
#define ST2(p, a, b) do { (p)[0] = (a); (p)[1] = (b); } while (0)
#define LD2(p, a, b) do { (a) = (p)[0]; (b) = (p)[1]; } while (0)
#endif

// one grouped row (32 bytes, one memory sector): its trade columns (ts clamped to the clock by
// fx_summary), its row index in the batch and meta: bits 0-21 the rank (fx_summary's copy in
// META: the chunk's accepted trades before this row; a chunk has at most 2^22 rows), bits 22-23
// the kind (0 trade, 1 quote; fx_summary's copy: 2 rejected trade), bits 24-31 the side
typedef struct {
    long long ts;
    double price;
    double size;
    int row;
    unsigned int meta;
} GRow;
#define G_RANK(mt) ((long long)((mt) & 0x3FFFFFu))
#define G_KIND(mt) ((int)(((mt) >> 22) & 3u))
#define G_SIDE(mt) ((int)(signed char)((mt) >> 24))
#define G_META(rank, kind, side) \
    ((unsigned int)(rank) | ((unsigned int)(kind) << 22) | ((unsigned int)(unsigned char)(side) << 24))
// fx_summary writes each row's final meta word (rank, kind 2 for a rejected trade) to an array of
// its own, read by the later passes, and leaves the rows (fx_gather's kind and side) unwritten
// but for a clamped ts: a pass that rewrote them in place ran 5-8 times slower on an H200 (its
// stores evict the rows it reads next). Tuning switch (features_gpu.TUNING, which defines it;
// bench/gpu_ops.py --profile compares its values): FX_SUMMARY_PF: fx_summary loads the next row
// before this one's stores
#define META(pos) (PTR(unsigned int, PI_META)[pos])
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

// the chunk's max trade ts: on the GPU, lanes of a warp hold consecutive grouped positions (runs
// of one chunk), so each run's max is reduced by shuffles and its first lane does one atomic
DEV void chunk_tmax(long long* tmax, long long c, long long ts, int is_trade) {
#ifdef __CUDACC__
    const int lane = threadIdx.x & 31;
    long long v = is_trade ? ts : NONE_T;
    for (int off = 1; off < 32; off <<= 1) {
        const long long v2 = __shfl_down_sync(0xffffffffu, v, off);
        const long long c2 = __shfl_down_sync(0xffffffffu, c, off);
        if (lane + off < 32 && c2 == c && v2 > v) v = v2;
    }
    const long long cp = __shfl_up_sync(0xffffffffu, c, 1);
    if ((lane == 0 || cp != c) && v != NONE_T) ATOMIC_MAX_LL(tmax + c, v);
#else
    if (is_trade) ATOMIC_MAX_LL(tmax + c, ts);
#endif
}

KERNEL void fx_gather(const long long* __restrict__ P) {
    const long long n = P[PI_N];
    const long long j0 = TID;
    // every lane of a warp takes part in chunk_tmax's shuffles: a lane past the end repeats row n-1
    const long long j = (j0 < n) ? j0 : n - 1;
    const int r = PTR(const int, PI_GIDX)[j];
    const long long c = (long long)(r >> (int)P[PI_LOG_R]) * P[PI_S] + PTR(const int, PI_SYM)[r];
    GRow g;
    g.ts = PTR(const long long, PI_TS)[r];
    g.price = PTR(const double, PI_PRICE)[r];
    g.size = PTR(const double, PI_SIZE)[r];
    g.row = r;
    g.meta = G_META(0, PTR(const signed char, PI_KIND)[r] != 0, PTR(const signed char, PI_SIDE)[r]);

    if (j0 == j) PTR(GRow, PI_GROW)[j] = g;
    chunk_tmax(PTR(long long, PI_TMAX), c, g.ts, G_KIND(g.meta) == 0);
}

// The fused grouping (without it the host groups by a device sort and runs fx_gather alone).
// Rows are cut into sub-blocks of SB = P[PI_SUB] rows (a row block holds a whole number of them).
// fx_hist: one CUDA block per sub-block j counts its rows per symbol in shared memory and writes
// hist[j * S + s]. fx_offsets (thread per chunk): the chunk's sub-blocks' counts become their
// offsets inside the chunk, and coff[c + 1] its row count (the host's scan of coff then gives
// each chunk's first grouped position). fx_scatter: one CUDA block per sub-block places its rows
// round by round (blockDim.x rows a round) in arrival order: inside a warp the rank among equal
// symbols comes from __match_any_sync, across the round's warps the per-symbol cursors (shared
// memory, S ints, from coff and hist) advance warp after warp; writes gidx (fx_gather then copies
// the columns in chunk order). Compiled as C, fx_hist and fx_scatter run one thread per
// sub-block, serially.

// the rows [*r0, *r1) of sub-block j
DEV void sub_block(const long long* P, long long j, long long* r0, long long* r1) {
    const long long n = P[PI_N], sb = P[PI_SUB];
    *r0 = j * sb;
    *r1 = (*r0 + sb < n) ? *r0 + sb : n;
}

// the first grouped position of sub-block j's rows of symbol s, after fx_offsets
DEV long long sub_start(const long long* P, long long j, long long s) {
    const long long S = P[PI_S];
    const long long b = (j * P[PI_SUB]) >> (int)P[PI_LOG_R];
    return PTR(const long long, PI_COFF)[b * S + s] + PTR(const int, PI_HIST)[j * S + s];
}

KERNEL void fx_offsets(const long long* __restrict__ P) {
    const long long nch = P[PI_NCH];
    const long long c = TID;
    if (c >= nch) return;
    const long long S = P[PI_S], sb = P[PI_SUB];
    const long long b = c / S, s = c % S;
    const long long per = (1LL << (int)P[PI_LOG_R]) / sb;  // sub-blocks per row block
    const long long nsub = (P[PI_N] + sb - 1) / sb;
    int* hist = PTR(int, PI_HIST);
    long long acc = 0;
    for (long long j = b * per; j < (b + 1) * per && j < nsub; ++j) {
        const int v = hist[j * S + s];
        hist[j * S + s] = (int)acc;
        acc += v;
    }
    PTR(long long, PI_COFF)[c + 1] = acc;
}

#ifdef __CUDACC__
KERNEL void fx_hist(const long long* __restrict__ P) {
    extern __shared__ int cnt[];
    const long long S = P[PI_S], j = blockIdx.x;
    long long r0, r1;
    sub_block(P, j, &r0, &r1);
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
    sub_block(P, j, &r0, &r1);
    for (long long i = threadIdx.x; i < S; i += blockDim.x) cur[i] = (int)sub_start(P, j, i);
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
        if (valid) gidx[(long long)first + rank] = (int)r;
    }
}
#else
KERNEL void fx_hist(const long long* __restrict__ P) {
    const long long S = P[PI_S], j = TID;
    long long r0, r1;
    sub_block(P, j, &r0, &r1);
    int* hist = PTR(int, PI_HIST) + j * S;
    for (long long i = 0; i < S; ++i) hist[i] = 0;
    for (long long r = r0; r < r1; ++r) hist[PTR(const int, PI_SYM)[r]] += 1;
}

KERNEL void fx_scatter(const long long* __restrict__ P) {
    const long long S = P[PI_S], j = TID;
    long long r0, r1;
    sub_block(P, j, &r0, &r1);
    for (long long r = r0; r < r1; ++r) {
        const long long s = PTR(const int, PI_SYM)[r];
        PTR(int, PI_GIDX)[sub_start(P, j, s)] = (int)r;
        PTR(int, PI_HIST)[j * S + s] += 1;  // the next row of this sub-block and symbol
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
    long long b = 0;
    for (; b + 4 <= nb; b += 4) {  // four loads in flight before the stores
        long long tm[4];
        for (int q = 0; q < 4; ++q) tm[q] = tmax[(b + q) * S + s];
        for (int q = 0; q < 4; ++q) {
            clk_in[(b + q) * S + s] = clk;
            if (tm[q] > clk) clk = tm[q];  // a rejected or clamped trade is behind the clock anyway
        }
    }
    for (; b < nb; ++b) {
        const long long c = b * S + s;
        clk_in[c] = clk;
        const long long tm = tmax[c];
        if (tm > clk) clk = tm;
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
#if FX_SUMMARY_PF
    GRow nxt = g[beg];  // the next row's loads are issued before this row's stores
#define CUR(f) (cur.f)
#else
#define CUR(f) (g[pos].f)
#endif
    for (long long pos = beg; pos < end; ++pos) {
#if FX_SUMMARY_PF
        const GRow cur = nxt;
        if (pos + 1 < end) nxt = g[pos + 1];
#endif
        const unsigned int mt = CUR(meta);  // fx_gather's: rank 0, kind 0 or 1, side
        const int side = G_SIDE(mt);
        if (G_KIND(mt) != 0) {
            META(pos) = G_META(m, 1, side);
            lastok = pos;
            continue;
        }
        long long t = CUR(ts);
        if (has && t < clk) {
            if (clk - t > max_dis) {
                META(pos) = G_META(m, 2, side);  // rejected
                continue;
            }
            t = clk;
            g[pos].ts = t;
        }
        META(pos) = G_META(m, 0, side);
        lastok = pos;
        const double p = CUR(price);
        const double v = CUR(size);
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
        // every load of the chunk first (one round trip; an empty chunk's fields are unused)
        const long long beg = coff[c], end = coff[c + 1];
        const long long lo = ci[CI_LASTOK * nch + c], m = ci[CI_M * nch + c];
        const long long chg = ci[CI_CHANGED * nch + c], sid_first = ci[CI_SID_FIRST * nch + c];
        const long long sid_last = ci[CI_SID_LAST * nch + c];
        double ea[N_EMA > 0 ? N_EMA : 1], eb[N_EMA > 0 ? N_EMA : 1];
        for (int j = 0; j < N_EMA; ++j) {
            ea[j] = cs[(CS_EMA_A0 + j) * nch + c];
            eb[j] = cs[(CS_EMA_B0 + j) * nch + c];
        }
        const double af = cs[CS_AF * nch + c], bf = cs[CS_BF * nch + c];
        const double as_ = cs[CS_AS * nch + c], bs = cs[CS_BS * nch + c];
        const double a3 = cs[CS_A3 * nch + c], cf = cs[CS_CF * nch + c];
        const double csl = cs[CS_CS * nch + c], b3 = cs[CS_B3 * nch + c];
        const double ag = cs[CS_AG * nch + c], bg = cs[CS_BG * nch + c];
        const double al = cs[CS_AL * nch + c], bl = cs[CS_BL * nch + c];
        const double hpv = cs[CS_HPV * nch + c], hv = cs[CS_HV * nch + c];
        const double tpv = cs[CS_TPV * nch + c], tv = cs[CS_TV * nch + c];
        const double first_p = cs[CS_FIRST_P * nch + c], last_p = cs[CS_LAST_P * nch + c];
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
        if (beg == end) continue;
        lastchunk = b;
        if (lo >= 0) lastok = lo;
        if (m == 0) continue;
        lasttr = b;
        // Wilder RSI: replayed while seeding (the first rsi_p + 1 trades), else composed
        if (n <= rsi_p) {
            long long nt = n;
            double pp = prev;
            for (long long pos = beg; pos < end; ++pos) {
                if (G_KIND(META(pos)) != 0) continue;
                const double p = g[pos].price;
                if (nt >= 1) rsi_step(nt, p - pp, rsi_p, &G, &L);
                pp = p;
                nt += 1;
            }
        } else {
            rsi_step(n, first_p - prev, rsi_p, &G, &L);  // n > rsi_p: Wilder
            G = ag * G + bg;
            L = al * L + bl;
        }
        for (int j = 0; j < N_EMA; ++j) e[j] = ea[j] * e[j] + eb[j];
        const double f0 = f, sl0 = sl;
        f = af * f0 + bf;
        sl = as_ * sl0 + bs;
        sg = a3 * sg + cf * f0 + csl * sl0 + b3;
        if (sess_on) {
            if (chg) {
                cpv = tpv;
                cv = tv;
            } else if (sid_first == sess) {
                cpv += hpv;
                cv += hv;
            } else {
                cpv = hpv;
                cv = hv;
            }
            sess = sid_last;
        } else {
            cpv += hpv;
            cv += hv;
        }
        prev = last_p;
        n += m;
    }
    long long* symi = PTR(long long, PI_SYMI);
    symi[SY_N0 * S + s] = n0;
    symi[SY_NFIN * S + s] = n;
    symi[SY_LASTCHUNK * S + s] = lastchunk;
    symi[SY_LASTTR * S + s] = lasttr;
    symi[SY_LASTOK * S + s] = lastok;
}

