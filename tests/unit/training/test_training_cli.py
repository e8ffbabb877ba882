"""CLI user errors of workload 3 are one clear line (exit 2), checked before any broker is needed;
the new commands have --help."""

from __future__ import annotations

import pytest

from mystocks_gpu.cli.main import main


@pytest.mark.parametrize("argv, message", [
    (["run", "signals"], "the signals processor needs --model NAME"),
    (["run", "aggregate", "--model", "m1"], "processor 'aggregate' takes no --model"),
    (["models", "show"], "models show needs a model NAME"),
    (["models", "export"], "models export needs a model NAME"),
])
def test_user_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("argv", [["models", "--help"], ["run", "--help"], ["submit", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mystocks-gpu" in out
    if argv[0] == "run":
        assert "--model" in out
