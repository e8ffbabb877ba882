"""Strategy registry and parameter-grid compilation for the backtest engine.

A strategy turns per-bar indicator values into four boolean signals per bar: long entry (EL),
long exit (XL), short entry (ES) and short exit (XS). Indicators are computed once per *unique*
window/period and symbol and shared by every parameter set of the grid (see ``signals.py``); the
simulation kernels evaluate the signals inline from them (see ``sim_cpu.py`` / ``sim_gpu.py``).

Strategies (``t`` is a bar, ``t-1`` the bar before it by position; every comparison with a NaN
indicator is False, so warm-up and NaN gaps produce no signal):

- ``ma_cross`` (fast, slow: int windows, fast < slow): SMA_fast crosses above SMA_slow at ``t``
  (``f[t] > s[t]`` and ``f[t-1] <= s[t-1]``) -> EL and XS; crosses below (``f[t] < s[t]`` and
  ``f[t-1] >= s[t-1]``) -> XL and ES.
- ``breakout`` (window: int): ``HH[t]`` = max of ``high`` over the previous ``window`` bars
  ``[t-window, t-1]``, ``LL[t]`` = min of ``low`` over them. ``close[t] > HH[t]`` -> EL and XS;
  ``close[t] < LL[t]`` -> XL and ES.
- ``zscore`` (alias ``bollinger``; window: int >= 2, entry_z > 0, exit_z <= entry_z): ``z[t] =
  (close[t] - mean) / std`` over ``[t-window+1, t]`` (population std, ddof=0; NaN when
  ``std <= 1e-12 * |mean|``, a flat window). EL: ``z < -entry_z``; XL: ``z > -exit_z``;
  ES: ``z > entry_z``; XS: ``z < exit_z``.
- ``rsi`` (period: int, 0 <= lower <= upper <= 100): Wilder RSI of ``close`` (see
  ``signals.py``). EL and XS: ``RSI < lower``; XL and ES: ``RSI > upper``.
- ``signal`` (threshold_long, threshold_exit <= threshold_long): an external signal matrix
  ``v`` (symbols x bars). EL: ``v > threshold_long``; XL: ``v < threshold_exit``;
  ES: ``v < -threshold_long``; XS: ``v > -threshold_exit``.

The grid is the Cartesian product of the value lists (names sorted, values sorted ascending and
de-duplicated). Combinations that break an ordering constraint (``fast >= slow``,
``exit_z > entry_z``, ``lower > upper``, ``threshold_exit > threshold_long``) are *dropped* from the
grid (no rows, no compute); a grid with no valid combination left is rejected. Single values that
are out of range (a window < 1, a non-integer window, ``entry_z <= 0``, an RSI bound outside
[0, 100], a non-finite threshold) are rejected.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mystocks_gpu.gpu_ops.backtest.exceptions import BacktestInputError

# Strategy codes shared with the kernels.
MA_CROSS = 0
BREAKOUT = 1
ZSCORE = 2
RSI = 3
SIGNAL = 4

ALIASES = {"bollinger": "zscore"}


@dataclass(frozen=True)
class ParamDef:
    """One strategy parameter: ``kind`` is ``"int"`` (a window/period, >= ``lo``) or ``"float"``
    (a threshold within ``[lo, hi]``; ``lo_open`` makes the lower bound exclusive)."""

    name: str
    kind: str
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False


@dataclass(frozen=True)
class StrategyDef:
    """A strategy: its kernel code, parameters, combination rule and the indicator it needs."""

    name: str
    code: int
    params: tuple[ParamDef, ...]
    combo_ok: Callable[[Mapping[str, float]], bool]
    combo_rule: str
    doc: str


STRATEGIES: dict[str, StrategyDef] = {
    "ma_cross": StrategyDef(
        "ma_cross",
        MA_CROSS,
        (ParamDef("fast", "int", 1), ParamDef("slow", "int", 2)),
        lambda p: p["fast"] < p["slow"],
        "fast < slow",
        "SMA crossover",
    ),
    "breakout": StrategyDef(
        "breakout",
        BREAKOUT,
        (ParamDef("window", "int", 1),),
        lambda p: True,
        "",
        "N-bar channel breakout",
    ),
    "zscore": StrategyDef(
        "zscore",
        ZSCORE,
        (
            ParamDef("window", "int", 2),
            ParamDef("entry_z", "float", 0.0, lo_open=True),
            ParamDef("exit_z", "float"),
        ),
        lambda p: p["exit_z"] <= p["entry_z"],
        "exit_z <= entry_z",
        "z-score / Bollinger mean reversion",
    ),
    "rsi": StrategyDef(
        "rsi",
        RSI,
        (
            ParamDef("period", "int", 1),
            ParamDef("lower", "float", 0.0, 100.0),
            ParamDef("upper", "float", 0.0, 100.0),
        ),
        lambda p: p["lower"] <= p["upper"],
        "lower <= upper",
        "Wilder RSI mean reversion",
    ),
    "signal": StrategyDef(
        "signal",
        SIGNAL,
        (ParamDef("threshold_long", "float"), ParamDef("threshold_exit", "float")),
        lambda p: p["threshold_exit"] <= p["threshold_long"],
        "threshold_exit <= threshold_long",
        "external signal with thresholds",
    ),
}


def canonical_strategy(name: str) -> str:
    """The registry name for ``name`` (aliases resolved); raises :class:`BacktestInputError`."""
    n = ALIASES.get(str(name), str(name))
    if n not in STRATEGIES:
        known = sorted([*STRATEGIES, *ALIASES])
        raise BacktestInputError(f"unknown strategy {name!r}; known: {', '.join(known)}")
    return n


def _check_value(strategy: str, pd_: ParamDef, v: object) -> float | int:
    """Validate and canonicalise one grid value (ints for windows, floats for thresholds)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise BacktestInputError(f"{strategy}.{pd_.name}: value {v!r} is not a number")
    fv = float(v)
    if not math.isfinite(fv):
        raise BacktestInputError(f"{strategy}.{pd_.name}: value {v!r} is not finite")
    if pd_.kind == "int":
        if fv != int(fv):
            raise BacktestInputError(
                f"{strategy}.{pd_.name}: window/period {v!r} is not an integer"
            )
        if fv < pd_.lo:
            raise BacktestInputError(
                f"{strategy}.{pd_.name}: {int(fv)} is below the minimum {int(pd_.lo)}"
            )
        if fv > 10_000_000:
            raise BacktestInputError(f"{strategy}.{pd_.name}: {int(fv)} is unreasonably large")
        return int(fv)
    if (pd_.lo_open and fv <= pd_.lo) or fv < pd_.lo or fv > pd_.hi:
        lo_b = "(" if pd_.lo_open else "["
        raise BacktestInputError(
            f"{strategy}.{pd_.name}: {fv} is outside {lo_b}{pd_.lo}, {pd_.hi}]"
        )
    return fv


def canonical_grid(strategy: str, grid: Mapping[str, object]) -> dict[str, list[float | int]]:
    """Validate ``grid`` (param -> value or list of values) for ``strategy``; return it with names
    sorted and each value list sorted ascending, de-duplicated and canonically typed.

    Raises :class:`BacktestInputError` for unknown or missing parameters, empty lists and bad values.
    """
    sdef = STRATEGIES[canonical_strategy(strategy)]
    if not isinstance(grid, Mapping):
        raise BacktestInputError(
            f"params must be a mapping of parameter -> list of values, got {type(grid).__name__}"
        )
    names = {p.name for p in sdef.params}
    unknown = sorted(set(map(str, grid)) - names)
    if unknown:
        raise BacktestInputError(
            f"unknown parameter(s) {unknown} for strategy {sdef.name!r}; expected {sorted(names)}"
        )
    missing = sorted(names - set(map(str, grid)))
    if missing:
        raise BacktestInputError(f"missing parameter(s) {missing} for strategy {sdef.name!r}")
    out: dict[str, list[float | int]] = {}
    for pd_ in sorted(sdef.params, key=lambda q: q.name):
        raw = grid[pd_.name]
        vals = list(raw) if isinstance(raw, (list, tuple, np.ndarray)) else [raw]
        if not vals:
            raise BacktestInputError(f"{sdef.name}.{pd_.name}: empty value list")
        out[pd_.name] = sorted({_check_value(sdef.name, pd_, v) for v in vals})
    return out


def grid_size(grid: Mapping[str, Sequence[object]]) -> int:
    """Number of points of the Cartesian product (before dropping invalid combinations)."""
    n = 1
    for v in grid.values():
        n *= len(v)
    return n


def expand_grid(strategy: str, grid: Mapping[str, object]) -> list[dict[str, float | int]]:
    """The parameter sets of the grid in canonical order (names sorted, product of sorted values),
    with combinations that break the strategy's ordering rule dropped.

    Raises :class:`BacktestInputError` when no combination is left.
    """
    name = canonical_strategy(strategy)
    sdef = STRATEGIES[name]
    cg = canonical_grid(name, grid)
    keys = list(cg)
    sets = [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(cg[k] for k in keys))
    ]
    kept = [p for p in sets if sdef.combo_ok(p)]
    if not kept:
        raise BacktestInputError(
            f"no valid parameter combination for {name!r}: every combination breaks {sdef.combo_rule}"
        )
    return kept


@dataclass(frozen=True)
class GridPlan:
    """A compiled grid: what the kernels need.

    - ``params``: the ``n_par`` parameter sets (dicts), index = parameter-set id ``p``;
    - ``ind_windows``: int64 ``(n_win,)`` unique windows/periods of the indicator rows;
    - ``n_ind``: indicator rows (``n_win``, or ``2 * n_win`` for breakout: HH rows then LL rows;
      1 for ``signal``: the external matrix);
    - ``pidx``: int64 ``(n_par, 2)`` indicator rows read by parameter set ``p`` (a, b);
    - ``pval``: float64 ``(n_par, 2)`` thresholds (th0, th1) of ``p``;
    - ``lead``: bars of history before a time chunk needed to reproduce indicators exactly
      (windows) — RSI instead carries its state across chunks and needs 1 bar (the previous close).
    """

    strategy: str
    code: int
    params: tuple[dict[str, float | int], ...]
    ind_windows: np.ndarray
    n_ind: int
    pidx: np.ndarray
    pval: np.ndarray
    lead: int
    _subsets: dict[tuple[int, int], GridPlan] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_par(self) -> int:
        """Number of parameter sets."""
        return len(self.params)

    def subset(self, start: int, stop: int) -> GridPlan:
        """The plan of parameter sets ``[start, stop)`` only (indicator rows they use, remapped);
        ``self`` when the range is the whole grid."""
        if start <= 0 and stop >= self.n_par:
            return self
        key = (start, stop)
        if key not in self._subsets:  # memoised: a chunked run asks for the same ranges again
            self._subsets[key] = compile_sets(self.strategy, self.params[start:stop])
        return self._subsets[key]

    def take(self, ids: Sequence[int]) -> GridPlan:
        """The plan of the parameter sets ``ids`` (in that order)."""
        return compile_sets(self.strategy, [self.params[int(i)] for i in ids])


def count_valid(strategy: str, grid: Mapping[str, object]) -> int:
    """Parameter sets of the grid after dropping invalid combinations, counted without building
    them: O(values log values), whatever the size of the product)."""
    name = canonical_strategy(strategy)
    cg = canonical_grid(name, grid)
    pair = {"ma_cross": ("fast", "slow"), "zscore": ("exit_z", "entry_z"), "rsi": ("lower", "upper"),
            "signal": ("threshold_exit", "threshold_long")}.get(name)
    if pair is None:
        return grid_size(cg)
    lo = np.asarray(cg[pair[0]], dtype=np.float64)
    hi = np.asarray(cg[pair[1]], dtype=np.float64)
    # pairs (lo, hi) with lo < hi (ma_cross) or lo <= hi: per hi, the lo values below it (lo sorted)
    pairs = int(np.searchsorted(lo, hi, side="left" if name == "ma_cross" else "right").sum())
    rest = 1
    for k, v in cg.items():
        if k not in pair:
            rest *= len(v)
    return pairs * rest


def compile_grid(strategy: str, grid: Mapping[str, object]) -> GridPlan:
    """Expand and compile a grid into indicator rows and per-parameter-set indices/thresholds."""
    return compile_sets(strategy, expand_grid(strategy, grid))


def compile_sets(strategy: str, param_sets: Sequence[Mapping[str, float | int]]) -> GridPlan:
    """Compile parameter sets (valid, canonically typed, in the order given) into a plan."""
    name = canonical_strategy(strategy)
    sdef = STRATEGIES[name]
    sets = [dict(p) for p in param_sets]
    if not sets:
        raise BacktestInputError(f"no parameter set to compile for {name!r}")
    n = len(sets)
    pidx = np.zeros((n, 2), dtype=np.int64)
    pval = np.zeros((n, 2), dtype=np.float64)
    if name == "ma_cross":
        wins = sorted({int(p["fast"]) for p in sets} | {int(p["slow"]) for p in sets})
        row = {w: i for i, w in enumerate(wins)}
        for i, p in enumerate(sets):
            pidx[i] = (row[int(p["fast"])], row[int(p["slow"])])
        n_ind, lead = len(wins), max(wins) + 1
    elif name == "breakout":
        wins = sorted({int(p["window"]) for p in sets})
        row = {w: i for i, w in enumerate(wins)}
        for i, p in enumerate(sets):
            pidx[i] = (row[int(p["window"])], len(wins) + row[int(p["window"])])
        n_ind, lead = 2 * len(wins), max(wins) + 1
    elif name == "zscore":
        wins = sorted({int(p["window"]) for p in sets})
        row = {w: i for i, w in enumerate(wins)}
        for i, p in enumerate(sets):
            r = row[int(p["window"])]
            pidx[i] = (r, r)
            pval[i] = (float(p["entry_z"]), float(p["exit_z"]))
        n_ind, lead = len(wins), max(wins) + 1
    elif name == "rsi":
        wins = sorted({int(p["period"]) for p in sets})
        row = {w: i for i, w in enumerate(wins)}
        for i, p in enumerate(sets):
            r = row[int(p["period"])]
            pidx[i] = (r, r)
            pval[i] = (float(p["lower"]), float(p["upper"]))
        n_ind, lead = len(wins), 1
    else:  # signal
        wins = [0]
        for i, p in enumerate(sets):
            pval[i] = (float(p["threshold_long"]), float(p["threshold_exit"]))
        n_ind, lead = 1, 1
    return GridPlan(
        strategy=name,
        code=sdef.code,
        params=tuple(sets),
        ind_windows=np.asarray(wins, dtype=np.int64),
        n_ind=n_ind,
        pidx=pidx,
        pval=pval,
        lead=lead,
    )
