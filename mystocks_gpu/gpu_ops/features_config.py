"""``FeatureConfig``: the frozen, validated configuration of the tick-feature engine.

Feature names (``FeatureConfig.features``) are the output keys of
:meth:`mystocks_gpu.gpu_ops.features.TickFeatureEngine.process`, except ``ema``, which
expands to one output ``ema_<span>`` per entry of ``ema_spans``. See ``features.py`` for
the semantics of each feature.

The internal column layout (``slot`` numbers) is shared by the CPU (numba) and GPU (CUDA)
kernels; :data:`FIXED_FEATURES` lists the fixed slots in order, and the EMA outputs follow
at ``N_FIXED + j``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from mystocks_gpu.exceptions import ConfigError

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND

#: fixed output slots, in kernel order (slot i = position in this tuple)
FIXED_FEATURES: tuple[str, ...] = (
    "last_price",
    "ret",
    "log_ret",
    "vwap_session",
    "vwap_roll",
    "roll_mean",
    "roll_std",
    "roll_z",
    "time_mean",
    "time_std",
    "rsi",
    "macd",
    "macd_signal",
    "macd_hist",
    "boll_upper",
    "boll_lower",
    "rvol",
    "flow_imb",
    "spread",
    "rel_spread",
    "book_imb",
)
N_FIXED = len(FIXED_FEATURES)
SLOT = {name: i for i, name in enumerate(FIXED_FEATURES)}

#: every selectable feature name ("ema" expands to ema_<span> per span)
ALL_FEATURES: tuple[str, ...] = FIXED_FEATURES[:5] + ("ema",) + FIXED_FEATURES[5:]

#: features that only need the quote columns of the row (updated on every row)
QUOTE_FEATURES: frozenset[str] = frozenset({"spread", "rel_spread", "book_imb"})

#: features computed from the trade-count rings (an O(N) pass per trade)
TICK_WINDOW_FEATURES: frozenset[str] = frozenset(
    {"vwap_roll", "roll_mean", "roll_std", "roll_z", "boll_upper", "boll_lower", "rvol",
     "flow_imb"}
)

# per-symbol float64 scalar state, columns of the (S, n_scalars) ``sc`` array
SC_PREV = 0  # last trade price (NaN before the first trade)
SC_CUM_PV = 1  # session sum(price * size)
SC_CUM_V = 2  # session sum(size)
SC_MACD_FAST = 3  # MACD fast EMA
SC_MACD_SLOW = 4  # MACD slow EMA
SC_MACD_SIG = 5  # MACD signal EMA
SC_RSI_GAIN = 6  # Wilder average gain (sum of gains while seeding)
SC_RSI_LOSS = 7  # Wilder average loss (sum of losses while seeding)
SC_EMA0 = 8  # first of the ema_spans EMAs
# per-symbol int64 state, columns of the (S, 3) ``ist`` array
IS_NTRADES = 0  # trades seen
IS_SESSION = 1  # session id of the running VWAP sums
IS_TCLOCK = 2  # the symbol's trade clock: effective ts of its last accepted trade (ns)
N_IST = 3
SESSION_NONE = -(2**63)  # "no session yet" sentinel


#: every output feature: (unit, definition). N = window_ticks, W = window_s, M = max_window_ticks,
#: p = trade price, v = trade size; windows count the symbol's TRADES only. Printed by
#: ``mystocks-gpu run features --help`` and in the README.
FEATURE_DOCS: dict[str, tuple[str, str]] = {
    "last_price": ("price", "price of the symbol's last trade; NaN before its first trade"),
    "ret": ("fraction", "p_t / p_(t-1) - 1, trade to trade; NaN on the first trade"),
    "log_ret": ("log-return", "ln(p_t / p_(t-1)), trade to trade; NaN on the first trade"),
    "vwap_session": ("price", "sum(p v) / sum(v) since the symbol's first trade (or since the last session "
                     "boundary, session_offset_s after UTC midnight, when set); NaN while sum(v) = 0"),
    "vwap_roll": ("price", "sum(p v) / sum(v) over the last N trades; NaN until N trades (or while sum(v) = 0)"),
    "ema_<span>": ("price", "exponential moving average of trade prices, alpha = 2 / (span + 1) (pandas "
                   "ewm(span, adjust=False)); one feature per ema_spans entry (default ema_10, ema_50); "
                   "valid from the first trade"),
    "roll_mean": ("price", "mean of the last N trade prices; NaN until N trades"),
    "roll_std": ("price", "sample standard deviation (ddof=1) of the last N trade prices; NaN until N trades"),
    "roll_z": ("std devs", "(p - roll_mean) / roll_std; NaN until N trades or while roll_std = 0"),
    "time_mean": ("price", "mean of the trade prices in the time window (t - W, t] (a trade exactly W "
                  "before is out, ties at t are in; at most the M newest trades); valid from the first trade"),
    "time_std": ("price", "sample standard deviation (ddof=1) over the same window; NaN with fewer than 2 trades in it"),
    "rsi": ("0..100", "Wilder RSI of period P (rsi_period) on trade-to-trade price changes: the first "
            "average gain/loss is the mean of the first P changes, then avg = (avg (P-1) + x) / P; "
            "rsi = 100 G / (G + L), 50 when G + L = 0; NaN until trade P+1"),
    "macd": ("price", "EMA_fast - EMA_slow of trade prices (macd spans, default 12 / 26); 0 on the first trade"),
    "macd_signal": ("price", "EMA of macd with the signal span (default 9); 0 on the first trade"),
    "macd_hist": ("price", "macd - macd_signal"),
    "boll_upper": ("price", "roll_mean + bollinger_k * roll_std; NaN until N trades"),
    "boll_lower": ("price", "roll_mean - bollinger_k * roll_std; NaN until N trades"),
    "rvol": ("log-return", "sqrt(A * sum of the last N squared log returns), A = rvol_annualization or 1; "
             "NaN until trade N+1"),
    "flow_imb": ("-1..1", "sum(side v) / sum(v) over the last N trades (side +1 buyer-, -1 seller-initiated, "
                 "0 unknown: in the denominator only); NaN until N trades"),
    "spread": ("price", "ask - bid of the row (every row: quotes, and trades carrying the prevailing quote)"),
    "rel_spread": ("fraction", "spread / ((ask + bid) / 2); NaN when the mid is 0"),
    "book_imb": ("-1..1", "(bid_size - ask_size) / (bid_size + ask_size); NaN when both are 0"),
}

#: the rules every feature follows (printed with :data:`FEATURE_DOCS`)
FEATURE_RULES = (
    "Price-based features update on TRADE rows; a QUOTE row repeats the symbol's values after its last "
    "trade (NaN before its first trade); spread, rel_spread and book_imb come from every row's own quote. "
    "Trades with equal timestamps are taken in arrival order. Warm-up: windowed values are NaN until "
    "their window is full (pandas min_periods). Event time going backwards: a trade stamped at most "
    "max_disorder_s behind its symbol's last trade is used in arrival order at that trade's time; one "
    "stamped further back goes to the DLQ (out_of_order) and gets no vector. Bars per interval I "
    "(bar_intervals_s): [t0, t0 + I) with t0 a multiple of I, OHLCV + vwap + trade count of the trades "
    "in it (open/close = earliest/latest ts, ties by arrival); a bar closes once its symbol's event time "
    "(latest trade or quote ts) reaches t0 + I + allowed_lateness_s, after idle_close_s without "
    "event-time progress, or on a graceful stop (close_on_stop). A trade is late for interval I when its "
    "bar had already closed: it is counted in no bar of that interval, goes to the DLQ with a message "
    "naming the interval(s), and still gets its feature vector."
)


def feature_docs(cfg: FeatureConfig | None = None) -> list[tuple[str, str, str]]:
    """(name, unit, definition) of every output of ``cfg`` (default: all 23), in output order."""
    cfg = cfg or FeatureConfig()
    out = []
    for name in cfg.output_names():
        key = "ema_<span>" if name.startswith("ema_") else name
        unit, text = FEATURE_DOCS[key]
        out.append((name, unit, text))
    return out


class FeatureConfigError(ConfigError, ValueError):
    """An invalid :class:`FeatureConfig` (unknown feature name, bad window, ...)."""


@dataclass(frozen=True)
class FeatureConfig:
    """Configuration of :class:`~mystocks_gpu.gpu_ops.features.TickFeatureEngine`.

    Attributes:
        features: feature names to output (default: all of :data:`ALL_FEATURES`).
        ema_spans: spans ``s`` of the trade-price EMAs, ``alpha = 2/(s+1)``; default (10, 50).
        window_ticks: N, the trade-count window of the rolling features; default 20 (>= 2).
        window_ns: W, the time window of ``time_mean``/``time_std`` in ns; default 1 s.
        max_window_ticks: cap on trades held for the time window per symbol; default 512.
            When more than this many trades fall in ``(t-W, t]``, only the most recent
            ``max_window_ticks`` are used.
        rsi_period: Wilder RSI period p; default 14.
        macd: ``(fast, slow, signal)`` EMA spans; default (12, 26, 9).
        bollinger_k: band width in standard deviations; default 2.0.
        rvol_annualization: A; when set, ``rvol = sqrt(A * sum r^2)`` (A = number of
            N-trade windows per year); ``None`` (default) gives the raw ``sqrt(sum r^2)``.
        session_offset_ns: when set, ``vwap_session`` resets at every
            ``k * 1 day + session_offset_ns`` (UTC ns since epoch; 0 <= offset < 1 day);
            ``None`` (default): cumulative since the symbol's first trade.
        max_disorder_ns: how far (ns) a trade may be stamped behind its symbol's trade clock
            (the time of its last accepted trade) and still be used: it is then processed in
            arrival order at the clock's time; a trade further behind is rejected (late for
            the features: no state change). Default 0: any backwards trade is rejected.
    """

    features: tuple[str, ...] = ALL_FEATURES
    ema_spans: tuple[int, ...] = (10, 50)
    window_ticks: int = 20
    window_ns: int = NS_PER_SECOND
    max_window_ticks: int = 512
    rsi_period: int = 14
    macd: tuple[int, int, int] = (12, 26, 9)
    bollinger_k: float = 2.0
    rvol_annualization: float | None = None
    session_offset_ns: int | None = None
    max_disorder_ns: int = 0

    def __post_init__(self) -> None:
        feats = tuple(self.features)
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "ema_spans", tuple(int(s) for s in self.ema_spans))
        object.__setattr__(self, "macd", tuple(int(s) for s in self.macd))
        if not feats:
            raise FeatureConfigError("FeatureConfig.features is empty; name at least one")
        unknown = [f for f in feats if f not in ALL_FEATURES]
        if unknown:
            raise FeatureConfigError(
                f"unknown feature name(s) {unknown}; known features: {', '.join(ALL_FEATURES)}"
            )
        if len(set(feats)) != len(feats):
            raise FeatureConfigError(f"duplicate feature names in {feats}")
        if "ema" in feats and not self.ema_spans:
            raise FeatureConfigError("feature 'ema' needs at least one span in ema_spans")
        if any(s < 1 for s in self.ema_spans) or len(set(self.ema_spans)) != len(self.ema_spans):
            raise FeatureConfigError(f"ema_spans must be distinct ints >= 1, got {self.ema_spans}")
        if not 2 <= self.window_ticks <= 4096:
            raise FeatureConfigError(f"window_ticks must be in [2, 4096], got {self.window_ticks}")
        if self.window_ns <= 0:
            raise FeatureConfigError(f"window_ns must be > 0 ns, got {self.window_ns}")
        if not 2 <= self.max_window_ticks <= 65536:
            raise FeatureConfigError(
                f"max_window_ticks must be in [2, 65536], got {self.max_window_ticks}"
            )
        if self.rsi_period < 1:
            raise FeatureConfigError(f"rsi_period must be >= 1, got {self.rsi_period}")
        if len(self.macd) != 3 or min(self.macd) < 1 or self.macd[0] >= self.macd[1]:
            raise FeatureConfigError(
                f"macd must be (fast, slow, signal) spans >= 1 with fast < slow, got {self.macd}"
            )
        if not np.isfinite(self.bollinger_k) or self.bollinger_k < 0:
            raise FeatureConfigError(f"bollinger_k must be finite and >= 0, got {self.bollinger_k}")
        if self.rvol_annualization is not None and not (
            np.isfinite(self.rvol_annualization) and self.rvol_annualization > 0
        ):
            raise FeatureConfigError(
                f"rvol_annualization must be > 0 or None, got {self.rvol_annualization}"
            )
        if not 0 <= self.max_disorder_ns <= 366 * NS_PER_DAY:
            raise FeatureConfigError(f"max_disorder_ns must be within 0 .. 1 year, got {self.max_disorder_ns}")
        if self.session_offset_ns is not None and not 0 <= self.session_offset_ns < NS_PER_DAY:
            raise FeatureConfigError(
                f"session_offset_ns must be in [0, 1 day) ns or None, got {self.session_offset_ns}"
            )

    # ---- derived -------------------------------------------------------------------------

    @property
    def n_slots(self) -> int:
        """Number of internal feature slots: fixed ones plus one per EMA span."""
        return N_FIXED + len(self.ema_spans)

    def slot_names(self) -> list[str]:
        """Name of every internal slot, in slot order."""
        return list(FIXED_FEATURES) + [f"ema_{s}" for s in self.ema_spans]

    def output_names(self) -> list[str]:
        """Output keys, in output order (the order of ``features``, ``ema`` expanded)."""
        names: list[str] = []
        for f in self.features:
            if f == "ema":
                names.extend(f"ema_{s}" for s in self.ema_spans)
            else:
                names.append(f)
        return names

    def column_index(self) -> np.ndarray:
        """int32 array (n_slots,): output row of each slot, -1 when the slot is not output."""
        idx = np.full(self.n_slots, -1, dtype=np.int32)
        slots = {n: i for i, n in enumerate(self.slot_names())}
        for k, name in enumerate(self.output_names()):
            idx[slots[name]] = k
        return idx

    @property
    def needs_tick_window(self) -> bool:
        """Whether the O(N) trade-window statistics are computed (any of
        :data:`TICK_WINDOW_FEATURES` selected); the rings are kept up to date regardless."""
        return any(f in TICK_WINDOW_FEATURES for f in self.features)

    @property
    def needs_time_window(self) -> bool:
        """Whether the time-window buffer is maintained (``time_mean``/``time_std`` selected)."""
        return "time_mean" in self.features or "time_std" in self.features

    def ema_alphas(self) -> np.ndarray:
        """float64 (n_spans,): ``2/(span+1)`` per EMA span (pandas ``ewm(span=...)``)."""
        return np.array([_span_alpha(s) for s in self.ema_spans], dtype=np.float64)

    def macd_alphas(self) -> np.ndarray:
        """float64 (3,): alphas of the MACD fast, slow and signal EMAs."""
        return np.array([_span_alpha(s) for s in self.macd], dtype=np.float64)

    def rvol_scale(self) -> float:
        """Multiplier inside the rvol square root (``A`` or 1.0)."""
        return 1.0 if self.rvol_annualization is None else float(self.rvol_annualization)

    @property
    def n_scalars(self) -> int:
        """Columns of the per-symbol float64 scalar state."""
        return SC_EMA0 + len(self.ema_spans)

    def fingerprint(self) -> str:
        """JSON of every field that shapes the state (all but ``features``, plus whether the
        time-window buffer is kept and the trade-window statistics computed); saved with
        serialised state and checked on load."""
        d = asdict(self)
        d.pop("features")
        d.pop("max_disorder_ns")  # how late trades are judged does not shape the state
        d["needs_time_window"] = self.needs_time_window
        d["needs_tick_window"] = self.needs_tick_window
        return json.dumps(d, sort_keys=True)


def _span_alpha(span: int) -> float:
    # the same arithmetic as pandas: com = (span - 1) / 2, alpha = 1 / (1 + com)
    com = (span - 1) / 2.0
    return 1.0 / (1.0 + com)
