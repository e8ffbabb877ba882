"""Errors of the factor engine (``gpu_ops.factors``)."""

from __future__ import annotations

from mystocks_gpu.exceptions import MyStocksError


class FactorError(MyStocksError):
    """Root of the factor engine's errors (bad expression, bad panel, bad config)."""

    exit_code = 2


class ExpressionSyntaxError(FactorError):
    """An expression does not parse. ``position`` is the 0-based character offset of the problem."""

    def __init__(self, message: str, expression: str, position: int) -> None:
        self.expression = expression
        self.position = position
        caret = " " * position + "^"
        super().__init__(f"{message} at position {position}:\n  {expression}\n  {caret}")


class ExpressionError(FactorError):
    """An expression parses but is not valid: unknown field or operator, wrong number of arguments,
    a window that is not a positive integer, or a window longer than the data."""


class PanelError(FactorError):
    """The input panel is unusable: missing field, wrong shape or dtype, no dates, or a
    cross-sectional operator on a single-symbol universe."""


class FactorConfigError(FactorError):
    """A factor-engine configuration value is invalid."""


class EvaluationStopped(FactorError):
    """``should_stop()`` returned true between two chunks; partial results are discarded."""

    exit_code = 130
