"""The operator table of the factor expression language.

Every operator has a *kind*:

* ``ts`` (time series, per symbol along dates): ``Op(x, d)`` / ``Op(x, y, d)`` /
  ``Quantile(x, d, q)``, ``d`` a positive integer literal (bars);
* ``cs`` (cross-sectional, per date across symbols): ``Rank(x)``, ``ZScore(x)``, ``Demean(x)``;
* ``elem`` (element-wise): ``Abs Log Sign Power If Greater Less`` and the infix operators, which
  the parser turns into ``Add Sub Mul Div Gt Ge Lt Le Eq Ne Neg``.

The semantics of each operator are documented in :mod:`mystocks_gpu.gpu_ops.factors` (package
docstring); this module only holds the signatures the parser checks.
"""

from __future__ import annotations

from dataclasses import dataclass

TS = "ts"
CS = "cs"
ELEM = "elem"

#: bar fields every panel may carry (``$vwap`` is optional in a panel, required when used)
DEFAULT_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "vwap")


@dataclass(frozen=True)
class OpSpec:
    """Signature of one operator.

    ``n_expr`` expression arguments come first, then ``n_window`` integer window literal (bars,
    >= ``min_window``), then ``n_float`` float literals (only ``Quantile``'s ``q`` in [0, 1]).
    """

    name: str
    kind: str
    n_expr: int
    n_window: int = 0
    n_float: int = 0
    min_window: int = 1
    doc: str = ""

    @property
    def n_args(self) -> int:
        return self.n_expr + self.n_window + self.n_float

    def signature(self) -> str:
        parts = ["x", "y", "z"][: self.n_expr] if self.n_expr < 3 else ["cond", "a", "b"]
        parts += ["d"] * self.n_window + ["q"] * self.n_float
        return f"{self.name}({', '.join(parts)})"


def _ts(name: str, n_expr: int = 1, min_window: int = 1, n_float: int = 0, doc: str = "") -> OpSpec:
    return OpSpec(name, TS, n_expr, 1, n_float, min_window, doc)


_SPECS: tuple[OpSpec, ...] = (
    _ts("Ref", doc="x shifted d bars back"),
    _ts("Delta", doc="x - Ref(x, d)"),
    _ts("Mean", doc="rolling mean"),
    _ts("Sum", doc="rolling sum"),
    _ts("Std", min_window=2, doc="rolling standard deviation, ddof=1"),
    _ts("Var", min_window=2, doc="rolling variance, ddof=1"),
    _ts("Min", doc="rolling minimum"),
    _ts("Max", doc="rolling maximum"),
    _ts("IdxMax", doc="1-based position of the first maximum in the window (1 = oldest)"),
    _ts("IdxMin", doc="1-based position of the first minimum in the window (1 = oldest)"),
    _ts("TsRank", doc="percentile rank of the last value within the window (average ties)"),
    _ts("EMA", doc="pandas ewm(span=d, adjust=False, min_periods=d)"),
    _ts("WMA", doc="linearly weighted mean, weights 1..d (newest = d)"),
    _ts("Slope", min_window=2, doc="OLS slope of x on 1..d"),
    _ts("Rsquare", min_window=2, doc="R^2 of the OLS fit of x on 1..d"),
    _ts("Resi", min_window=2, doc="residual of the last bar of the OLS fit of x on 1..d"),
    _ts("Skew", min_window=3, doc="rolling skewness (pandas, bias corrected)"),
    _ts("Kurt", min_window=4, doc="rolling excess kurtosis (pandas, bias corrected)"),
    _ts("Quantile", n_float=1, doc="rolling quantile q, linear interpolation"),
    _ts("Corr", n_expr=2, min_window=2, doc="rolling Pearson correlation"),
    _ts("Cov", n_expr=2, min_window=2, doc="rolling covariance, ddof=1"),
    OpSpec("Rank", CS, 1, doc="cross-sectional percentile rank per date (average ties)"),
    OpSpec("ZScore", CS, 1, doc="(x - mean) / std per date, std ddof=1"),
    OpSpec("Demean", CS, 1, doc="x - mean per date"),
    OpSpec("Abs", ELEM, 1),
    OpSpec("Log", ELEM, 1, doc="natural log (NaN for x < 0, -inf for 0)"),
    OpSpec("Sign", ELEM, 1),
    OpSpec("Neg", ELEM, 1),
    OpSpec("Power", ELEM, 2),
    OpSpec("If", ELEM, 3, doc="a where cond != 0 else b; NaN where cond is NaN"),
    OpSpec("Greater", ELEM, 2, doc="elementwise max (NaN if either is NaN)"),
    OpSpec("Less", ELEM, 2, doc="elementwise min (NaN if either is NaN)"),
    OpSpec("Add", ELEM, 2),
    OpSpec("Sub", ELEM, 2),
    OpSpec("Mul", ELEM, 2),
    OpSpec("Div", ELEM, 2),
    OpSpec("Gt", ELEM, 2, doc="1.0 / 0.0, NaN if either is NaN"),
    OpSpec("Ge", ELEM, 2),
    OpSpec("Lt", ELEM, 2),
    OpSpec("Le", ELEM, 2),
    OpSpec("Eq", ELEM, 2),
    OpSpec("Ne", ELEM, 2),
)

#: operator name -> signature
OPS: dict[str, OpSpec] = {s.name: s for s in _SPECS}
TS_OPS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.kind == TS)
CS_OPS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.kind == CS)
ELEM_OPS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.kind == ELEM)

#: infix operator token -> operator name (binary)
INFIX: dict[str, str] = {
    "+": "Add", "-": "Sub", "*": "Mul", "/": "Div",
    ">": "Gt", ">=": "Ge", "<": "Lt", "<=": "Le", "==": "Eq", "!=": "Ne",
}
#: operator name -> infix token, for printing
INFIX_OF: dict[str, str] = {v: k for k, v in INFIX.items()}
#: ops whose arguments may be swapped without changing any bit of the result
COMMUTATIVE: frozenset[str] = frozenset({"Add", "Mul", "Eq", "Ne"})
