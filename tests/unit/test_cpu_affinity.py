"""``infra/cpu_affinity.py``: CPU lists as ``taskset -c`` writes them, and the settings that take one
(``run --cpus`` -> ``RuntimeConfig.cpu_affinity``, ``stack.kafka_cpus``) refusing bad ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import StackConfig
from mystocks_gpu.infra.cpu_affinity import children_on, format_cpus, parse_cpu_list, thread_cpus
from mystocks_gpu.streams.runtime_config import RuntimeConfig


@pytest.mark.parametrize(("text", "cpus"), [("", ()), (" ", ()), ("1", (1,)), ("0,2", (0, 2)), ("2-3", (2, 3)),
                                            ("3,0-1,1", (0, 1, 3)), (" 4 - 5 , 7 ", (4, 5, 7))])
def test_cpu_lists_read_as_taskset_writes_them(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpus(cpus)) == cpus  # and written back in the same form


def test_format_folds_runs_into_ranges() -> None:
    assert format_cpus((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert format_cpus(()) == ""


@pytest.mark.parametrize("bad", ["a", "1,,2", "-1", "3-1", "1-", "0x1", "1.5"])
def test_a_bad_cpu_list_is_a_config_error_naming_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError, match="--cpus"):
        parse_cpu_list(bad, "--cpus")


def test_the_settings_refuse_bad_cpus() -> None:
    with pytest.raises(ConfigError, match="stack.kafka_cpus"):
        StackConfig(kafka_cpus="0-")
    assert StackConfig(kafka_cpus="0").kafka_cpus == "0"
    with pytest.raises(ConfigError, match="cpu_affinity"):
        RuntimeConfig(cpu_affinity=(-1,))
    with pytest.raises(ConfigError, match="cpu_affinity"):
        RuntimeConfig(cpu_affinity=(1, 1))


def test_a_process_started_inside_children_on_runs_on_those_cpus_and_the_caller_gets_its_mask_back() -> None:
    before = os.sched_getaffinity(0)
    cpu = max(before)
    with children_on((cpu,)):
        child = subprocess.Popen([sys.executable, "-c", "import os, sys; print(sorted(os.sched_getaffinity(0)), flush=True); sys.stdin.read()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert os.sched_getaffinity(0) == before
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == f"[{cpu}]"
        assert set(thread_cpus(child.pid).values()) == {(cpu,)}  # every thread of it, read from /proc
    finally:
        child.communicate("")
