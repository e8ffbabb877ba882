// Tick-feature kernels of the GPU backend, part 2: the trade list, the window statistics, the
// replay and the permutation to row order. Compiled after features_chunks.cu (its prelude, its
// header describes all passes).

// ---------------------------------------------------------------------------------------------
// fx_compact: thread per grouped position; an accepted trade into the symbol-major trade list
// (symbol s's batch trades at tl[sbase[s] .. sbase[s+1]), trade index k at sbase[s] + k - n0).
// acc_cum[pos]: accepted trades at grouped positions <= pos.

KERNEL void fx_compact(const long long* __restrict__ P) {
    const long long n = P[PI_N];
    const long long pos = TID;
    if (pos >= n) return;
    const GRow g = PTR(const GRow, PI_GROW)[pos];
    if (g.acc != 1) return;
    const long long S = P[PI_S], nch = P[PI_NCH];
    const long long s = PTR(const int, PI_SYM)[g.row];
    const long long c = (long long)(g.row >> (int)P[PI_LOG_R]) * S + s;
    const int* acc_cum = PTR(const int, PI_ACC_CUM);
    const long long beg = PTR(const long long, PI_COFF)[c];
    const long long rank = acc_cum[pos] - 1 - (beg > 0 ? acc_cum[beg - 1] : 0);
    const long long nin = PTR(const long long, PI_CI)[CI_NIN * nch + c];
    const long long n0 = PTR(const long long, PI_SYMI)[SY_N0 * S + s];
    const long long i = PTR(const long long, PI_SBASE)[s] + (nin - n0) + rank;
    PTR(int, PI_TL_SYM)[i] = (int)s;
    PTR(long long, PI_TL_TS)[i] = g.ts;
    PTR(double, PI_TL_PRICE)[i] = g.price;
    PTR(double, PI_TL_SIZE)[i] = g.size;
    PTR(double, PI_TL_FLOW)[i] = (double)g.side * g.size;
}

// fx_lr: thread per trade-list entry; the log return of the trade (the CPU's log(p / prev))
KERNEL void fx_lr(const long long* __restrict__ P) {
    const long long S = P[PI_S];
    const long long* sbase = PTR(const long long, PI_SBASE);
    const long long i = TID;
    if (i >= sbase[S]) return;
    const long long s = PTR(const int, PI_TL_SYM)[i];
    const long long n0 = PTR(const long long, PI_SYMI)[SY_N0 * S + s];
    const long long k = n0 + (i - sbase[s]);
    const double* tl_price = PTR(const double, PI_TL_PRICE);
    double lr = nan_d();
    if (k >= 1) {
        const double prev = (i > sbase[s]) ? tl_price[i - 1]
                            : PTR(const double, PI_R_PRICE)[s * NW + (k - 1) % NW];
        lr = log(tl_price[i] / prev);
    }
    PTR(double, PI_TL_LR)[i] = lr;
}

// fx_permute: thread per row; the replay's row (grouped position inv[r]) to the (K, n) outputs,
// and the spread features from the row's own quote (a rejected row: the replay's values)
KERNEL void fx_permute(const long long* __restrict__ P) {
    const long long n = P[PI_N];
    const long long r = TID;
    if (r >= n) return;
    const double* src = PTR(const double, PI_OUTG) + (long long)PTR(const int, PI_INV)[r] * KP;
    double* out = PTR(double, PI_OUT);
    double M[3];
    if (PTR(const signed char, PI_REJ)[r]) {
        M[0] = src[COL_SPREAD];
        M[1] = src[COL_REL_SPREAD];
        M[2] = src[COL_BOOK_IMB];
    } else {
        micro_feats(P, r, M);
    }
    PERMUTE_OUT(out, src, n, r, M);
}

// ---------------------------------------------------------------------------------------------
// fx_window: thread per trade-list entry; the trade-count and time-window features of the trade
// (rows of tf) and the new trade rings. Trade index k' of the symbol: the list when k' >= n0,
// else the old state's rings (slot k' mod N, k' mod cap).

DEV void roll_window(const long long* P, long long s, long long k, long long i, long long n0,
                     double p, double* W) {
    const double NaN = nan_d();
    const double* tl_price = PTR(const double, PI_TL_PRICE);
    const double* tl_size = PTR(const double, PI_TL_SIZE);
    const double* tl_flow = PTR(const double, PI_TL_FLOW);
    const double* tl_lr = PTR(const double, PI_TL_LR);
    const double* o_p = PTR(const double, PI_R_PRICE) + s * NW;
    const double* o_s = PTR(const double, PI_R_SIZE) + s * NW;
    const double* o_f = PTR(const double, PI_R_FLOW) + s * NW;
    const double* o_r = PTR(const double, PI_R_RET) + s * NW;
    const double boll_k = ll2d(P[PI_BOLL_K]);
    const double rvol_scale = ll2d(P[PI_RVOL_SCALE]);
    // ring slot j holds trade k - ((k - j) mod N): the CPU sums the slots in order 0 .. N-1
    const long long r = k % NW;
    if (k + 1 >= NW) {
        double acc = 0.0, spv = 0.0, sv = 0.0, sf = 0.0;
        for (int j = 0; j < NW; ++j) {
            const long long kk = k - ((r - j + NW) % NW);
            double x, sz, fl;
            if (kk >= n0) {
                const long long q = i - (k - kk);
                x = tl_price[q];
                sz = tl_size[q];
                fl = tl_flow[q];
            } else {
                x = o_p[kk % NW];
                sz = o_s[kk % NW];
                fl = o_f[kk % NW];
            }
            acc += x - p;
            spv += x * sz;
            sv += sz;
            sf += fl;
        }
        const double mean = p + acc / (double)NW;
        double ss = 0.0, cc = 0.0;
        for (int j = 0; j < NW; ++j) {
            const long long kk = k - ((r - j + NW) % NW);
            const double x = (kk >= n0) ? tl_price[i - (k - kk)] : o_p[kk % NW];
            const double dd = x - mean;
            ss += dd * dd;
            cc += dd;
        }
        double var = (ss - cc * cc / (double)NW) / (double)(NW - 1);
        if (var < 0.0) var = 0.0;
        const double std = sqrt(var);
        W[TF_ROLL_MEAN] = mean;
        W[TF_ROLL_STD] = std;
        W[TF_ROLL_Z] = (std > 0.0) ? (p - mean) / std : NaN;
        W[TF_BOLL_UPPER] = mean + boll_k * std;
        W[TF_BOLL_LOWER] = mean - boll_k * std;
        W[TF_VWAP_ROLL] = (sv != 0.0) ? spv / sv : NaN;
        W[TF_FLOW_IMB] = (sv != 0.0) ? sf / sv : NaN;
    } else {
        W[TF_ROLL_MEAN] = NaN;
        W[TF_ROLL_STD] = NaN;
        W[TF_ROLL_Z] = NaN;
        W[TF_BOLL_UPPER] = NaN;
        W[TF_BOLL_LOWER] = NaN;
        W[TF_VWAP_ROLL] = NaN;
        W[TF_FLOW_IMB] = NaN;
    }
    if (k >= NW) {
        double sr = 0.0;
        for (int j = 0; j < NW; ++j) {
            const long long kk = k - ((r - j + NW) % NW);
            const double x = (kk >= n0) ? tl_lr[i - (k - kk)] : o_r[kk % NW];
            sr += x * x;
        }
        W[TF_RVOL] = sqrt(rvol_scale * sr);
    } else {
        W[TF_RVOL] = NaN;
    }
}

// time_mean / time_std of trade k at list entry i (time t, price p): newest first, at most
// min(k + 1, cap) trades, as the CPU walks its time ring
DEV void time_window(const long long* P, long long s, long long k, long long i, long long n0,
                     long long t, double p, double* W) {
    const long long cap = P[PI_CAP];
    const long long* o_ts = PTR(const long long, PI_T_TS) + s * cap;
    const double* o_price = PTR(const double, PI_T_PRICE) + s * cap;
    const long long* tl_ts = PTR(const long long, PI_TL_TS);
    const double* tl_price = PTR(const double, PI_TL_PRICE);
    const long long cnt = k + 1 < cap ? k + 1 : cap;
    const long long lo_t = t - P[PI_WINDOW_NS];
    long long m = 0;
    double acc = 0.0;
    while (m < cnt) {
        const long long kk = k - m;
        const long long tt = (kk >= n0) ? tl_ts[i - m] : o_ts[kk % cap];
        if (tt <= lo_t) break;
        acc += ((kk >= n0) ? tl_price[i - m] : o_price[kk % cap]) - p;
        m += 1;
    }
    const double mean = p + acc / (double)m;
    W[TF_TIME_MEAN] = mean;
    if (m >= 2) {
        double ss = 0.0, cc = 0.0;
        for (long long q = 0; q < m; ++q) {
            const long long kk = k - q;
            const double dd = ((kk >= n0) ? tl_price[i - q] : o_price[kk % cap]) - mean;
            ss += dd * dd;
            cc += dd;
        }
        double var = (ss - cc * cc / (double)m) / (double)(m - 1);
        if (var < 0.0) var = 0.0;
        W[TF_TIME_STD] = sqrt(var);
    } else {
        W[TF_TIME_STD] = nan_d();
    }
}

KERNEL void fx_window(const long long* __restrict__ P) {
    const long long S = P[PI_S];
    const long long* sbase = PTR(const long long, PI_SBASE);
    const long long i = TID;
    if (i >= sbase[S]) return;
    const long long s = PTR(const int, PI_TL_SYM)[i];
    const long long* symi = PTR(const long long, PI_SYMI);
    const long long n0 = symi[SY_N0 * S + s];
    const long long nfin = symi[SY_NFIN * S + s];
    const long long k = n0 + (i - sbase[s]);
    const double p = PTR(const double, PI_TL_PRICE)[i];
    double* tf = PTR(double, PI_TF) + i * NTF;  // one row of NTF doubles per trade
    double W[NTF];
    if (P[PI_DO_ROLL]) {
        roll_window(P, s, k, i, n0, p, W);
        for (int f = 0; f < TF_TIME_MEAN; ++f) tf[f] = W[f];
    }
    tf[TF_LR] = PTR(const double, PI_TL_LR)[i];
    const long long t = PTR(const long long, PI_TL_TS)[i];
    const long long cap = P[PI_CAP];
    if (P[PI_DO_TIME]) {
        time_window(P, s, k, i, n0, t, p, W);
        tf[TF_TIME_MEAN] = W[TF_TIME_MEAN];
        tf[TF_TIME_STD] = W[TF_TIME_STD];
        if (k >= nfin - cap) {
            PTR(long long, PI_NT_TS)[s * cap + k % cap] = t;
            PTR(double, PI_NT_PRICE)[s * cap + k % cap] = p;
        }
    }
    if (k >= nfin - NW) {
        const long long slot = s * NW + k % NW;
        PTR(double, PI_NR_PRICE)[slot] = p;
        PTR(double, PI_NR_SIZE)[slot] = PTR(const double, PI_TL_SIZE)[i];
        PTR(double, PI_NR_FLOW)[slot] = PTR(const double, PI_TL_FLOW)[i];
        if (k >= 1) PTR(double, PI_NR_RET)[slot] = PTR(const double, PI_TL_LR)[i];
    }
}

// ---------------------------------------------------------------------------------------------
// fx_replay: thread per chunk; the O(1) recursions row by row from the chunk's entry state, the
// window features of each trade from tf, the outputs and (the symbol's last chunk) the state

// the O(1) features after trade index k (nt = k trades before it) from the running scalars;
// ratio = p / previous price, lr = log(ratio)
DEV void scalar_feats(long long nt, double p, double ratio, double lr, double cpv, double cv,
                      const double* e, double f, double sl, double sg, double G, double L,
                      long long rsi_p, double* F) {
    const double NaN = nan_d();
    F[F_RET] = (nt >= 1) ? ratio - 1.0 : NaN;
    F[F_LOG_RET] = (nt >= 1) ? lr : NaN;
    F[F_LAST_PRICE] = p;
    F[F_VWAP_SESSION] = (cv != 0.0) ? cpv / cv : NaN;
    for (int j = 0; j < N_EMA; ++j) F[N_FIXED + j] = e[j];
    if (nt == 0) {
        F[F_MACD] = 0.0;
        F[F_MACD_SIGNAL] = 0.0;
        F[F_MACD_HIST] = 0.0;
    } else {
        const double macd = f - sl;
        F[F_MACD] = macd;
        F[F_MACD_SIGNAL] = sg;
        F[F_MACD_HIST] = macd - sg;
    }
    double rsi = NaN;
    if (nt >= 1 && nt >= rsi_p) rsi = (G + L > 0.0) ? 100.0 * G / (G + L) : 50.0;
    F[F_RSI] = rsi;
}

// the window features of list entry li into the slots
DEV void window_feats(const long long* P, long long li, double* F) {
    const double* tf = PTR(const double, PI_TF) + li * NTF;
    if (P[PI_DO_ROLL]) {
        F[F_ROLL_MEAN] = tf[TF_ROLL_MEAN];
        F[F_ROLL_STD] = tf[TF_ROLL_STD];
        F[F_ROLL_Z] = tf[TF_ROLL_Z];
        F[F_BOLL_UPPER] = tf[TF_BOLL_UPPER];
        F[F_BOLL_LOWER] = tf[TF_BOLL_LOWER];
        F[F_VWAP_ROLL] = tf[TF_VWAP_ROLL];
        F[F_FLOW_IMB] = tf[TF_FLOW_IMB];
        F[F_RVOL] = tf[TF_RVOL];
    }
    if (P[PI_DO_TIME]) {
        F[F_TIME_MEAN] = tf[TF_TIME_MEAN];
        F[F_TIME_STD] = tf[TF_TIME_STD];
    }
}


KERNEL void fx_replay(const long long* __restrict__ P) {
    const long long nch = P[PI_NCH];
    const long long c = TID;
    if (c >= nch) return;
    const long long* coff = PTR(const long long, PI_COFF);
    const long long beg = coff[c], end = coff[c + 1];
    if (beg == end) return;
    const long long S = P[PI_S];
    const long long b = c / S, s = c % S;
    const double* cs = PTR(const double, PI_CS);
    const long long* ci = PTR(const long long, PI_CI);
    const long long* symi = PTR(const long long, PI_SYMI);
    const GRow* g = PTR(const GRow, PI_GROW);
    const double* tl_price = PTR(const double, PI_TL_PRICE);
    const double* tf = PTR(const double, PI_TF);
    const double* ema_alpha = PTR(const double, PI_EMA_ALPHA);
    const double* macd_alpha = PTR(const double, PI_MACD_ALPHA);
    double* outg = PTR(double, PI_OUTG);  // one row of KP doubles per grouped position
    signed char* rej = PTR(signed char, PI_REJ);
    const long long rsi_p = P[PI_RSI_P];
    const int sess_on = (int)P[PI_SESS_ON];
    const long long sess_off = P[PI_SESS_OFF];
    const long long n0 = symi[SY_N0 * S + s];

    long long nt = ci[CI_NIN * nch + c];
    long long sess = ci[CI_SESS * nch + c];
    long long clk = PTR(const long long, PI_CLK)[c];
    double prev = cs[CS_PREV * nch + c], cpv = cs[CS_CUMPV * nch + c];
    double cv = cs[CS_CUMV * nch + c];
    double f = cs[CS_F * nch + c], sl = cs[CS_SL * nch + c], sg = cs[CS_SG * nch + c];
    double G = cs[CS_G * nch + c], L = cs[CS_L * nch + c];
    double e[N_EMA > 0 ? N_EMA : 1];
    for (int j = 0; j < N_EMA; ++j) e[j] = cs[(CS_E0 + j) * nch + c];
    double F[NSLOTS];
    const double* feat_old = PTR(const double, PI_FEAT) + s * NSLOTS;
    for (int k = 0; k < NSLOTS; ++k) F[k] = feat_old[k];
    long long li = PTR(const long long, PI_SBASE)[s] + (nt - n0);  // list entry of trade nt
    if (nt > n0) {  // the values after the batch's last accepted trade before this chunk
        const long long k = nt - 1;
        double ratio = 0.0;
        if (k >= 1) {
            const double ppv = (k - 1 >= n0) ? tl_price[li - 2]
                               : PTR(const double, PI_R_PRICE)[s * NW + (k - 1) % NW];
            ratio = prev / ppv;
        }
        scalar_feats(k, prev, ratio, tf[(li - 1) * NTF + TF_LR], cpv, cv, e, f, sl, sg, G, L,
                     rsi_p, F);
        window_feats(P, li - 1, F);
    }
    // the spread features are fx_permute's, from each row's own quote; the replay only tracks the
    // last non-rejected row (a rejected row repeats its values, and the state keeps them)
    long long lastok_r = -1;
    {
        const long long lok = ci[CI_LASTOK_IN * nch + c];
        if (lok >= 0) lastok_r = g[lok].row;
    }
    for (long long pos = beg; pos < end; ++pos) {
        const long long r = g[pos].row;
        if (g[pos].kind == 0) {
            if (g[pos].acc != 1) {  // rejected: the row repeats the current values
                rej[r] = 1;
                if (lastok_r >= 0) micro_into(P, lastok_r, F);
                WRITE_ROW(outg + pos * KP, F);
                continue;
            }
            const long long t = g[pos].ts;  // clamped to the clock by fx_summary
            const double p = g[pos].price;
            const double v = g[pos].size;
            if (sess_on) {
                const long long sid = floordiv(t - sess_off, DAY_NS);
                if (sid != sess) {
                    sess = sid;
                    cpv = 0.0;
                    cv = 0.0;
                }
            }
            cpv += p * v;
            cv += v;
            for (int j = 0; j < N_EMA; ++j) e[j] = (nt == 0) ? p : ema_step(e[j], p, ema_alpha[j]);
            if (nt == 0) {
                f = p; sl = p; sg = 0.0;
            } else {
                f = ema_step(f, p, macd_alpha[0]);
                sl = ema_step(sl, p, macd_alpha[1]);
                sg = ema_step(sg, f - sl, macd_alpha[2]);
            }
            double ratio = 0.0;
            if (nt >= 1) {
                rsi_step(nt, p - prev, rsi_p, &G, &L);
                ratio = p / prev;
            }
            scalar_feats(nt, p, ratio, tf[li * NTF + TF_LR], cpv, cv, e, f, sl, sg, G, L, rsi_p, F);
            window_feats(P, li, F);
            prev = p;
            clk = t;
            nt += 1;
            li += 1;
        }
        lastok_r = r;
        WRITE_ROW(outg + pos * KP, F);
    }
    if (b == symi[SY_LASTCHUNK * S + s]) {
        if (lastok_r >= 0) micro_into(P, lastok_r, F);
        double* fn = PTR(double, PI_FEAT_NEW) + s * NSLOTS;
        for (int k = 0; k < NSLOTS; ++k) fn[k] = F[k];
    }
    if (b == symi[SY_LASTTR * S + s]) {
        double* sc = PTR(double, PI_SC) + s * P[PI_NSC];
        long long* ist = PTR(long long, PI_IST) + s * N_IST;
        sc[SC_PREV] = prev;
        sc[SC_CUM_PV] = cpv;
        sc[SC_CUM_V] = cv;
        sc[SC_MACD_FAST] = f;
        sc[SC_MACD_SLOW] = sl;
        sc[SC_MACD_SIG] = sg;
        sc[SC_RSI_GAIN] = G;
        sc[SC_RSI_LOSS] = L;
        for (int j = 0; j < N_EMA; ++j) sc[SC_EMA0 + j] = e[j];
        ist[IS_NTRADES] = nt;
        ist[IS_SESSION] = sess;
        ist[IS_TCLOCK] = clk;
    }
}
