// Tick-feature kernels of the GPU backend, part 2: the trade list, the window statistics, the
// replay and the permutation to row order. Compiled after features_chunks.cu (its prelude, its
// header describes all passes).

// ---------------------------------------------------------------------------------------------
// fx_compact: thread per grouped position. An accepted trade goes into the symbol-major trade
// list (symbol s's batch trades at tl[sbase[s] .. sbase[s+1]), trade index k at
// sbase[s] + k - n0); every row gets li[row], the list entry of its symbol's last accepted trade
// at or before it (-1: none in this batch); a rejected trade gets rej[row] = 1 and mr[row], the
// symbol's last row before it that is not a rejected trade (-1: none in this batch).

KERNEL void fx_compact(const long long* __restrict__ P) {
    const long long n = P[PI_N];
    const long long pos = TID;
    if (pos >= n) return;
    const GRow g = PTR(const GRow, PI_GROW)[pos];
    const unsigned int mt = META(pos);
    const long long S = P[PI_S], nch = P[PI_NCH];
    const long long s = PTR(const int, PI_SYM)[g.row];
    const long long c = (long long)(g.row >> (int)P[PI_LOG_R]) * S + s;
    const long long nin = PTR(const long long, PI_CI)[CI_NIN * nch + c];
    const long long n0 = PTR(const long long, PI_SYMI)[SY_N0 * S + s];
    const long long sb = PTR(const long long, PI_SBASE)[s];
    const long long i = sb + (nin - n0) + G_RANK(mt);  // this trade's entry, or the next trade's
    int* li = PTR(int, PI_LI);
    const int kind = G_KIND(mt);
    if (kind == 0) {
        li[g.row] = (int)i;
        PTR(int, PI_TL_SYM)[i] = (int)s;
        PTR(long long, PI_TL_TS)[i] = g.ts;
        PTR(double, PI_TL_PRICE)[i] = g.price;
        PTR(double, PI_TL_SIZE)[i] = g.size;
        PTR(double, PI_TL_FLOW)[i] = (double)G_SIDE(mt) * g.size;
        return;
    }
    li[g.row] = (i > sb) ? (int)(i - 1) : -1;
    if (kind == 2) {
        PTR(signed char, PI_REJ)[g.row] = 1;
        const long long beg = PTR(const long long, PI_COFF)[c];
        long long q = pos - 1;
        while (q >= beg && G_KIND(META(q)) == 2) --q;
        if (q < beg) q = PTR(const long long, PI_CI)[CI_LASTOK_IN * nch + c];
        PTR(int, PI_MR)[g.row] = (q >= 0) ? PTR(const GRow, PI_GROW)[q].row : -1;
    }
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

// ---------------------------------------------------------------------------------------------
// fx_window: thread per trade-list entry; the trade-count and time-window features of the trade
// (a row of tf) and the new trade rings. Trade index k' of the symbol: the list when k' >= n0,
// else the old state's rings (slot k' mod N, k' mod cap). The loops use no integer division.

// tuning switch (features_gpu.TUNING, which defines it): FX_WINDOW_SPLIT: roll_window runs a
// loop without the ring's branch when the whole window is in the list

// ring slot j (0 <= j < N) holds trade k - d, d = (r - j) mod N with r = k mod N (the CPU sums the
// slots in order 0 .. N-1): list entry i - d while d <= kl = k - n0, else the old ring's slot j
DEV long long slot_back(long long r, int j) { return (j <= r) ? r - j : r - j + NW; }

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
    const long long r = k % NW, kl = k - n0;
    // the common case: the whole window in the list (a loop without the ring's branch)
    const int in_list = FX_WINDOW_SPLIT && kl >= NW - 1;
    if (k + 1 >= NW) {
        double acc = 0.0, spv = 0.0, sv = 0.0, sf = 0.0;
        if (in_list) {
            for (int j = 0; j < NW; ++j) {
                const long long d = slot_back(r, j);
                const double x = tl_price[i - d];
                acc += x - p;
                spv += x * tl_size[i - d];
                sv += tl_size[i - d];
                sf += tl_flow[i - d];
            }
        } else {
            for (int j = 0; j < NW; ++j) {
                const long long d = slot_back(r, j);
                const int l = d <= kl;
                const double x = l ? tl_price[i - d] : o_p[j];
                const double sz = l ? tl_size[i - d] : o_s[j];
                acc += x - p;
                spv += x * sz;
                sv += sz;
                sf += l ? tl_flow[i - d] : o_f[j];
            }
        }
        const double mean = p + acc / (double)NW;
        double ss = 0.0, cc = 0.0;
        for (int j = 0; j < NW; ++j) {
            const long long d = slot_back(r, j);
            const double dd = ((in_list || d <= kl) ? tl_price[i - d] : o_p[j]) - mean;
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
        if (in_list) {
            for (int j = 0; j < NW; ++j) {
                const double x = tl_lr[i - slot_back(r, j)];
                sr += x * x;
            }
        } else {
            for (int j = 0; j < NW; ++j) {
                const long long d = slot_back(r, j);
                const double x = (d <= kl) ? tl_lr[i - d] : o_r[j];
                sr += x * x;
            }
        }
        W[TF_RVOL] = sqrt(rvol_scale * sr);
    } else {
        W[TF_RVOL] = NaN;
    }
}

// the m-th newest trade of the time window (m = 0: trade k at list entry i; m <= kl = k - n0:
// the list; else the old ring, slot jr, which the caller steps down from (k - m) mod cap)
DEV void ring_down(long long* jr, long long cap) { *jr = (*jr > 0) ? *jr - 1 : cap - 1; }

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
    const long long kl = k - n0;
    const long long nl = (kl + 1 < cnt) ? kl + 1 : cnt;  // trades of the window in the list
    long long m = 0;
    double acc = 0.0;
    int open = 1;
    for (; m < nl; ++m) {
        if (tl_ts[i - m] <= lo_t) {
            open = 0;
            break;
        }
        acc += tl_price[i - m] - p;
    }
    if (open && m < cnt) {
        long long jr = (k - m) % cap;
        for (; m < cnt; ++m) {
            if (o_ts[jr] <= lo_t) break;
            acc += o_price[jr] - p;
            ring_down(&jr, cap);
        }
    }
    const double mean = p + acc / (double)m;
    W[TF_TIME_MEAN] = mean;
    if (m >= 2) {
        double ss = 0.0, cc = 0.0;
        const long long ml = (m < nl) ? m : nl;
        for (long long q = 0; q < ml; ++q) {
            const double dd = tl_price[i - q] - mean;
            ss += dd * dd;
            cc += dd;
        }
        if (ml < m) {
            long long jr = (k - ml) % cap;
            for (long long q = ml; q < m; ++q) {
                const double dd = o_price[jr] - mean;
                ss += dd * dd;
                cc += dd;
                ring_down(&jr, cap);
            }
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
        for (int f = 0; f < TF_TIME_MEAN; f += 2) ST2(tf + f, W[f], W[f + 1]);
    }
    const long long t = PTR(const long long, PI_TL_TS)[i];
    const long long cap = P[PI_CAP];
    if (P[PI_DO_TIME]) {
        time_window(P, s, k, i, n0, t, p, W);
        ST2(tf + TF_TIME_MEAN, W[TF_TIME_MEAN], W[TF_TIME_STD]);
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
// fx_replay: thread per chunk; the O(1) recursions trade by trade from the chunk's entry state
// over the chunk's run of the trade list: a row of tt per trade and (the symbol's last chunk
// with trades) the new running state

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

KERNEL void fx_replay(const long long* __restrict__ P) {
    const long long nch = P[PI_NCH];
    const long long c = TID;
    if (c >= nch) return;
    const long long* ci = PTR(const long long, PI_CI);
    const long long m = ci[CI_M * nch + c];
    if (m == 0) return;
    const long long S = P[PI_S];
    const long long b = c / S, s = c % S;
    const double* cs = PTR(const double, PI_CS);
    const long long* symi = PTR(const long long, PI_SYMI);
    const long long* tl_ts = PTR(const long long, PI_TL_TS);
    const double* tl_price = PTR(const double, PI_TL_PRICE);
    const double* tl_size = PTR(const double, PI_TL_SIZE);
    const double* tl_lr = PTR(const double, PI_TL_LR);
    const double* ema_alpha = PTR(const double, PI_EMA_ALPHA);
    const double* macd_alpha = PTR(const double, PI_MACD_ALPHA);
    double* tt = PTR(double, PI_TT);  // one row of NTT doubles per trade-list entry
    const long long rsi_p = P[PI_RSI_P];
    const int sess_on = (int)P[PI_SESS_ON];
    const long long sess_off = P[PI_SESS_OFF];

    long long nt = ci[CI_NIN * nch + c];
    long long sess = ci[CI_SESS * nch + c];
    double prev = cs[CS_PREV * nch + c], cpv = cs[CS_CUMPV * nch + c];
    double cv = cs[CS_CUMV * nch + c];
    double f = cs[CS_F * nch + c], sl = cs[CS_SL * nch + c], sg = cs[CS_SG * nch + c];
    double G = cs[CS_G * nch + c], L = cs[CS_L * nch + c];
    double e[N_EMA > 0 ? N_EMA : 1];
    for (int j = 0; j < N_EMA; ++j) e[j] = cs[(CS_E0 + j) * nch + c];
    double F[NSLOTS];
    const long long i0 = PTR(const long long, PI_SBASE)[s] + (nt - symi[SY_N0 * S + s]);
    long long t = 0;
    // the next trade's loads are issued before this trade's stores
    long long t_n = tl_ts[i0];  // clamped to the clock by fx_summary
    double p_n = tl_price[i0], v_n = tl_size[i0], lr_n = tl_lr[i0];
    for (long long i = i0; i < i0 + m; ++i) {
        t = t_n;
        const double p = p_n, v = v_n, lr = lr_n;
        if (i + 1 < i0 + m) {
            t_n = tl_ts[i + 1];
            p_n = tl_price[i + 1];
            v_n = tl_size[i + 1];
            lr_n = tl_lr[i + 1];
        }
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
        scalar_feats(nt, p, ratio, lr, cpv, cv, e, f, sl, sg, G, L, rsi_p, F);
        WRITE_TT(tt + i * NTT, F);
        prev = p;
        nt += 1;
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
        ist[IS_TCLOCK] = t;
    }
}

// ---------------------------------------------------------------------------------------------
// fx_state: thread per symbol of the batch; its new feature vector: the old one, then its last
// trade's tt row and (when computed) tf row, then the spread features of its last row that is
// not a rejected trade

KERNEL void fx_state(const long long* __restrict__ P) {
    const long long S = P[PI_S];
    const long long s = TID;
    if (s >= S) return;
    const long long* symi = PTR(const long long, PI_SYMI);
    if (symi[SY_LASTCHUNK * S + s] < 0) return;  // no row of this symbol in the batch
    const double* fo = PTR(const double, PI_FEAT) + s * NSLOTS;
    double F[NSLOTS];
    for (int k = 0; k < NSLOTS; ++k) F[k] = fo[k];
    const long long last = PTR(const long long, PI_SBASE)[s + 1] - 1;
    if (last >= PTR(const long long, PI_SBASE)[s]) {  // the symbol traded in this batch
        const double* tt = PTR(const double, PI_TT) + last * NTT;
        const double* tf = PTR(const double, PI_TF) + last * NTF;
        READ_TT(F, tt);
        if (P[PI_DO_ROLL]) READ_ROLL(F, tf);
        if (P[PI_DO_TIME]) READ_TIME(F, tf);
    }
    const long long lok = symi[SY_LASTOK * S + s];
    if (lok >= 0) micro_into(P, PTR(const GRow, PI_GROW)[lok].row, F);
    double* fn = PTR(double, PI_FEAT_NEW) + s * NSLOTS;
    for (int k = 0; k < NSLOTS; ++k) fn[k] = F[k];
}

// ---------------------------------------------------------------------------------------------
// fx_final: thread per row; the row's outputs in row order: its symbol's last accepted trade's
// tt / tf rows (none in this batch yet: the old feature vector) and the spread features

KERNEL void fx_final(const long long* __restrict__ P) {
    const long long n = P[PI_N];
    const long long r = TID;
    if (r >= n) return;
    const long long s = PTR(const int, PI_SYM)[r];
    const long long li = PTR(const int, PI_LI)[r];
    const double* fo = PTR(const double, PI_FEAT) + s * NSLOTS;
    double M[3];
    const long long mr = PTR(const signed char, PI_REJ)[r] ? PTR(const int, PI_MR)[r] : r;
    if (mr >= 0) {
        micro_feats(P, mr, M);
    } else {
        M[0] = fo[F_SPREAD];
        M[1] = fo[F_REL_SPREAD];
        M[2] = fo[F_BOOK_IMB];
    }
    // the trade's tt row and (when computed) tf row, in 128-bit loads
    double T[NTT], W[NTF];
    const int ht = li >= 0, hr = ht && P[PI_DO_ROLL], hw = ht && P[PI_DO_TIME];
    if (ht) {
        const double* tt = PTR(const double, PI_TT) + li * NTT;
        for (int q = 0; q < NTT; q += 2) LD2(tt + q, T[q], T[q + 1]);
        const double* tf = PTR(const double, PI_TF) + li * NTF;
        if (hr) for (int q = 0; q < TF_TIME_MEAN; q += 2) LD2(tf + q, W[q], W[q + 1]);
        if (hw) LD2(tf + TF_TIME_MEAN, W[TF_TIME_MEAN], W[TF_TIME_STD]);
    }
    double* out = PTR(double, PI_OUT);
    (void)T;  // unused when no feature of that table is selected
    (void)W;
    (void)hr;
    (void)hw;
    FINAL_OUT(out, n, r, M, T, W, ht, hr, hw, fo);
}
