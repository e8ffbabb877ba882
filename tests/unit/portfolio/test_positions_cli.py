"""``mystocks-gpu positions``: holdings and limits parsed from the command line, bad input one
line on stderr with exit 2 (nothing published), and ``--help``."""

from __future__ import annotations

import math

import pytest

from mystocks_gpu.cli.main import main
from mystocks_gpu.cli.positions import parse_holding, parse_limit
from mystocks_gpu.exceptions import ConfigError


def test_holdings_and_limits_parse() -> None:
    assert parse_holding("AAPL=100@150.5") == ("AAPL", 100.0, 150.5)
    assert parse_holding("XOM=-20@90") == ("XOM", -20.0, 90.0)
    sym, qty, cost = parse_holding("MSFT=3")
    assert (sym, qty) == ("MSFT", 3.0) and math.isnan(cost)
    assert parse_limit("var=5000") == ("var", 5000.0)
    assert parse_limit("concentration=0.25") == ("concentration", 0.25)


@pytest.mark.parametrize("bad, reason", [("AAPL", "SYMBOL=QUANTITY"), ("AAPL=nan@1", "finite"), ("=5", "SYMBOL"),
                                         ("AAPL=x@1", "finite")])
def test_bad_holdings_are_rejected(bad: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_holding(bad)


@pytest.mark.parametrize("bad, reason", [("vol=1", "NAME one of"), ("var", "NAME=VALUE"), ("var=abc", "not a number"),
                                         ("var=-1", ">= 0")])
def test_bad_limits_are_rejected(bad: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_limit(bad)


def test_cli_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["positions", "set", "ACC1", "--hold", "AAPL=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hold 'AAPL=abc'" in err[0]
    assert main(["positions", "set", "ACC1"]) == 2
    assert "at least one --hold" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["positions", "--help"])
    assert exc.value.code == 0 and "{set,close}" in capsys.readouterr().out
