"""``mystocks-gpu run``'s flags reach the worker's :class:`RuntimeConfig`: every field has a flag,
each flag sets its field (a value other than the default, so an ignored flag fails), the flags'
defaults are the dataclass's, and a bad value is refused with a message naming the setting."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mystocks_gpu.cli.main import build_parser
from mystocks_gpu.cli.run import features_settings, runtime_config
from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.streams.runtime_config import RuntimeConfig

#: field -> (the flags that set it, the value they give it): none of these is the field's default
CASES: dict[str, tuple[tuple[str, ...], Any]] = {
    "max_records": (("--batch-records", "77"), 77),
    "max_bytes": (("--batch-bytes", "65536"), 65536),
    "max_record_bytes": (("--max-record-bytes", "4096"), 4096),
    "linger_ms": (("--linger-ms", "3.5"), 3.5),
    "guarantee": (("--at-least-once",), "at_least_once"),
    "commit_interval_ms": (("--commit-interval-ms", "250"), 250.0),
    "catch_up_commit_interval_ms": (("--catch-up-commit-interval-ms", "2000"), 2000.0),
    "batching": (("--batching", "linger"), "linger"),
    "fetch_wait_max_ms": (("--fetch-wait-max-ms", "7"), 7),
    "fetch_min_bytes": (("--fetch-min-bytes", "2048"), 2048),
    "producer_linger_ms": (("--producer-linger-ms", "1.5"), 1.5),
    "transaction_timeout_ms": (("--transaction-timeout-ms", "20000"), 20_000),
    "max_producer_recoveries": (("--max-producer-recoveries", "3"), 3),
    "session_timeout_ms": (("--session-timeout-ms", "9000"), 9000),
    "max_poll_interval_ms": (("--max-poll-interval-ms", "60000"), 60_000),
    "max_buffered_records": (("--max-buffered-records", "1000"), 1000),
    "produce_block_timeout_s": (("--produce-block-timeout-s", "5"), 5.0),
    "commit_timeout_s": (("--commit-timeout-s", "4.5"), 4.5),
    "lag_interval_s": (("--lag-interval-s", "0.25"), 0.25),
    "fault_injection": (("--inject-faults", "commit=0.5;seed=3"), "commit=0.5;seed=3"),
    "restore_attempts": (("--restore-attempts", "2"), 2),
    "group_protocol": (("--group-protocol", "consumer"), "consumer"),
    "record_io": (("--record-io", "messages"), "messages"),
}
#: set from ``[features]`` (``run features`` only), checked below; ``cpu_affinity`` from ``--cpus``
#: (parsed and checked against the machine by ``cmd_run``: tests/unit/test_cpu_affinity.py)
ELSEWHERE = {"idle_flush_s", "flush_on_stop", "cpu_affinity"}


def _config(*argv: str, processor: str = "aggregate") -> RuntimeConfig:
    args = build_parser().parse_args(["run", processor, *argv])
    return runtime_config(args, features_settings(args, Settings()))


def test_every_field_has_a_flag() -> None:
    fields = {f.name for f in dataclasses.fields(RuntimeConfig)}
    assert fields == set(CASES) | ELSEWHERE


def test_the_flags_defaults_are_the_configs() -> None:
    assert _config() == RuntimeConfig()


@pytest.mark.parametrize("field", sorted(CASES))
def test_each_flag_sets_its_field(field: str) -> None:
    argv, value = CASES[field]
    assert getattr(RuntimeConfig(), field) != value  # the case can fail
    got = _config(*argv)
    assert getattr(got, field) == value
    # and nothing else moved
    assert dataclasses.replace(got, **{field: getattr(RuntimeConfig(), field)}) == RuntimeConfig()


def test_the_bar_closing_settings_come_from_the_features_section() -> None:
    got = _config("--idle-close-s", "2.5", "--close-on-stop", "false", processor="features")
    assert (got.idle_flush_s, got.flush_on_stop) == (2.5, False)
    assert _config(processor="features").flush_on_stop is True  # [features] close_on_stop's default
    assert (_config().idle_flush_s, _config().flush_on_stop) == (0.0, False)  # no bars elsewhere


@pytest.mark.parametrize(("argv", "message"), [
    (("--lag-interval-s", "0"), "lag_interval_s must be > 0"),
    (("--commit-timeout-s", "-1"), "commit_timeout_s must be > 0"),
    (("--produce-block-timeout-s", "nan"), "produce_block_timeout_s must be > 0"),
    (("--max-poll-interval-ms", "5000"), "max_poll_interval_ms must be within session_timeout_ms (6000)"),
    (("--max-poll-interval-ms", "86400001"), "max_poll_interval_ms must be within"),
    (("--restore-attempts", "0"), "restore_attempts must be >= 1"),
    (("--max-producer-recoveries", "-1"), "max_producer_recoveries must be >= 0"),
])
def test_a_bad_value_is_refused_by_name(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(*argv)
