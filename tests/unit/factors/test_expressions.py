"""Parser, library and configuration of the factor engine."""

from __future__ import annotations

import pytest

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.gpu_ops.factors import (
    CombineConfig,
    EngineConfig,
    EvalConfig,
    ExpressionError,
    ExpressionSyntaxError,
    FactorConfigError,
    MiningConfig,
    compile_program,
    load_library,
    parse,
    parse_many,
)


@pytest.mark.parametrize(
    ("text", "pos"),
    [("Mean($close, 5", 14), ("$close +* 2", 8), ("Mean($close 5)", 12), ("$close # 2", 7),
     ("", 0), ("(($close)", 9)],
)
def test_syntax_errors_name_the_position(text: str, pos: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as ei:
        parse(text)
    assert ei.value.position == pos
    assert f"position {pos}" in str(ei.value)
    assert isinstance(ei.value, MyStocksError)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("Mean($clos, 5)", "unknown field '$clos' at position 5"),
     ("Foo($close)", "unknown operator 'Foo' at position 0"),
     ("mean($close, 5)", "did you mean Mean"),
     ("Mean($close)", "Mean takes 2 argument(s)"),
     ("Corr($close, 5)", "Corr takes 3 argument(s)"),
     ("Mean($close, 5.5)", "window of Mean must be an integer literal >= 1"),
     ("Std($close, 1)", "window of Std must be an integer literal >= 2"),
     ("Mean($close, $open)", "window of Mean"),
     ("Quantile($close, 5, 1.5)", "q of Quantile must be a number in [0, 1]")],
)
def test_semantic_errors_are_clear(text: str, needle: str) -> None:
    with pytest.raises(ExpressionError) as ei:
        parse(text)
    assert needle in str(ei.value)


def test_parse_many_names_the_factor() -> None:
    with pytest.raises(ExpressionSyntaxError, match="factor 'bad'"):
        parse_many({"ok": "$close", "bad": "Mean($close, 5"})
    with pytest.raises(ExpressionError, match="factor 'x'"):
        parse_many({"x": "Nope($close)"})


def test_precedence_folding_and_roundtrip() -> None:
    assert parse("1 + 2 * 3").value == 7.0
    assert parse("-(1 + 2) * $close").key == parse("$close * -3").key
    assert parse("$close - $open / 2").key == "Sub($close,Div($open,2.0))"
    assert parse("$close > $open + 1").op == "Gt"
    assert parse("$close + $open").key == parse("$open + $close").key  # commutative, same key
    for text in ("Corr($close, Log($volume + 1), 10)", "Quantile($close, 10, 0.8) / $close",
                 "If($close > Ref($close, 1), -$open, Abs($low))", "Rank(-Delta($close, 3))"):
        n = parse(text)
        assert parse(n.to_string()) == n


def test_common_subexpressions_are_shared_across_factors() -> None:
    nodes = parse_many({"a": "Mean($close, 5) / $close", "b": "Mean($close, 5) - Ref($close, 1)",
                        "c": "Ref($close, 1) + Mean($close, 5)"})
    prog = compile_program(nodes)
    keys = [n.key for n in prog.nodes]
    assert len(keys) == len(set(keys))
    assert keys.count("Mean($close,5)") == 1
    # $close, Mean, Ref, Div, Sub, Add
    assert prog.n_unique == 6


def test_libraries_load_and_parse() -> None:
    a = load_library("alpha158")
    assert len(a) == 158
    assert list(a)[:3] == ["KMID", "KLEN", "KMID2"]
    assert "ROC5" in a and "VSUMD60" in a and "VWAP0" in a
    assert a["CORR10"] == "Corr($close, Log($volume + 1), 10)"
    parse_many(a)
    c = load_library("classic")
    assert {"MOM1M", "MOM3M", "MOM6M", "MOM12M", "REV1M", "VOL20", "AMIHUD20", "TURN20",
            "PVCORR20"} <= set(c)
    assert "$shares" not in c["TURN20"]
    c2 = load_library("classic", fields=("close", "volume", "shares"))
    assert c2["TURN20"] == "Mean($volume / $shares, 20)"
    parse_many(c2, ("close", "volume", "shares"))
    with pytest.raises(FactorConfigError, match="unknown factor library"):
        load_library("nope")


@pytest.mark.parametrize(
    ("cls", "kw"),
    [(EngineConfig, {"backend": "tpu"}), (EngineConfig, {"memory_budget_bytes": 10}),
     (EngineConfig, {"threads": -1}), (EngineConfig, {"fields": ("a b",)}),
     (EvalConfig, {"horizons": (0,)}), (EvalConfig, {"horizons": (1, 1)}),
     (EvalConfig, {"quantiles": 1}), (EvalConfig, {"factor_batch": -1}),
     (MiningConfig, {"population": 1}), (MiningConfig, {"max_depth": 1}),
     (MiningConfig, {"windows": (1,)}), (MiningConfig, {"ops": ("Nope",)}),
     (MiningConfig, {"max_corr": 0}), (MiningConfig, {"elite": 0}),
     (CombineConfig, {"method": "lasso"}), (CombineConfig, {"min_train_dates": 1}),
     (CombineConfig, {"ridge_alpha": -1})],
)
def test_configs_validate(cls: type, kw: dict[str, object]) -> None:
    with pytest.raises(FactorConfigError):
        cls(**kw)
