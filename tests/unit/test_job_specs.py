"""Job-kind registry: typed specs, validation, memory estimates, chunking, cache keys, runners."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

from mystocks_gpu.jobs.builtin_kinds import EchoSpec, SleepSpec
from mystocks_gpu.jobs.kinds import get_kind, kinds, register_kind
from mystocks_gpu.jobs.protocol import check_submit, make_command
from mystocks_gpu.jobs.result_cache import cache_key
from mystocks_gpu.processors.exceptions import JobSpecError, JobStopped
from mystocks_gpu.processors.job_kind import JobSpec


def test_builtin_kinds_are_registered() -> None:
    ks = kinds()
    assert {"sleep", "echo"} <= set(ks)
    assert ks["sleep"].spec_cls is SleepSpec and ks["echo"].spec_cls is EchoSpec


def test_spec_defaults_types_and_memory_estimate() -> None:
    k = get_kind("sleep")
    spec = k.parse({"seconds": 2, "memory_mb": 512})
    assert spec == SleepSpec(seconds=2.0, steps=10, memory_mb=512)
    assert isinstance(spec.seconds, float)
    assert spec.memory_bytes() == 512 * 2**20
    assert spec.to_dict() == {"seconds": 2.0, "steps": 10, "memory_mb": 512, "chunks": 1, "fail_at": None, "tag": ""}
    assert k.parse('{"steps": 4.0}') == SleepSpec(steps=4)  # integral floats are accepted for ints
    assert get_kind("echo").parse({"payload": {"a": [1, 2]}}).memory_bytes() == 16 * 2**20


@pytest.mark.parametrize("spec, reason", [
    ({"secnds": 1}, "unknown spec field(s): secnds"),
    ({"seconds": "1"}, "'seconds' must be a number"),
    ({"steps": True}, "'steps' must be an integer"),
    ({"steps": 1.5}, "'steps' must be an integer"),
    ({"seconds": -1}, "sleep.seconds must be within 0..3600"),
    ({"steps": 0}, "sleep.steps must be within 1..10000"),
    ({"chunks": 1000}, "sleep.chunks must be within 1..256"),
    ({"fail_at": 2}, "sleep.fail_at must be within (0, 1]"),
    ([1, 2], "spec must be a JSON object"),
])
def test_invalid_specs_are_rejected_with_a_reason(spec: object, reason: str) -> None:
    with pytest.raises(JobSpecError) as exc:
        get_kind("sleep").parse(spec)
    assert reason in str(exc.value)


def test_invalid_json_and_unknown_kind() -> None:
    with pytest.raises(JobSpecError, match="not valid JSON"):
        get_kind("sleep").parse("{nope")
    with pytest.raises(JobSpecError, match="unknown job kind 'nokind'; known kinds: .*echo.*sleep"):
        get_kind("nokind")


def test_check_submit_validates_the_whole_command() -> None:
    ok = make_command("SUBMIT", "job-1", "sleep", {"seconds": 0.1})
    assert check_submit(ok) == SleepSpec(seconds=0.1)
    with pytest.raises(JobSpecError, match="job_id"):
        check_submit({**ok, "job_id": "bad id with spaces"})
    with pytest.raises(JobSpecError, match="priority"):
        check_submit({**ok, "priority": 5000})
    with pytest.raises(JobSpecError, match="deadline_ns is already in the past"):
        check_submit({**ok, "deadline_ns": time.time_ns() - 1})
    with pytest.raises(JobSpecError, match="unknown job kind"):
        check_submit({**ok, "kind": "warp"})


def test_chunker_and_combiner() -> None:
    k = get_kind("sleep")
    spec = k.parse({"seconds": 3, "chunks": 3, "tag": "x"})
    parts = k.chunks(spec, n_devices=8)
    assert parts == [SleepSpec(seconds=1.0, tag=f"x#{i}") for i in range(3)]
    assert k.combine([{"slept_s": 1.0, "steps": 10, "tag": "x#0"}] * 3) == {"slept_s": 3.0, "steps": 30, "chunks": 3,
                                                                            "tag": "x"}
    assert get_kind("echo").chunks(get_kind("echo").parse({}), 4) == [EchoSpec()]


def test_cache_key_is_a_content_hash_of_kind_normalised_spec_and_data_range() -> None:
    k = get_kind("sleep")
    a = k.parse({"seconds": 1, "steps": 10})
    b = k.parse(json.loads('{"steps": 10, "seconds": 1.0, "memory_mb": 64}'))
    assert cache_key("sleep", a.to_dict(), a.data_range()) == cache_key("sleep", b.to_dict(), b.data_range())
    assert cache_key("sleep", a.to_dict(), None) != cache_key("echo", a.to_dict(), None)
    assert cache_key("sleep", a.to_dict(), {"from": 1}) != cache_key("sleep", a.to_dict(), {"from": 2})
    c = k.parse({"seconds": 2})
    assert cache_key("sleep", a.to_dict(), None) != cache_key("sleep", c.to_dict(), None)


def test_sleep_runner_reports_rising_progress_and_stops() -> None:
    seen: list[float] = []
    out = get_kind("sleep").runner(SleepSpec(seconds=0.2, steps=4), lambda f, m: seen.append(f), lambda: False)
    assert seen == [0.25, 0.5, 0.75, 1.0] and out == {"slept_s": 0.2, "steps": 4, "tag": ""}
    t0 = time.monotonic()
    with pytest.raises(JobStopped):
        get_kind("sleep").runner(SleepSpec(seconds=30, steps=3), lambda f, m: None, lambda: time.monotonic() - t0 > 0.1)
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(RuntimeError, match="on purpose"):
        get_kind("sleep").runner(SleepSpec(seconds=0.1, steps=2, fail_at=0.5), lambda f, m: None, lambda: False)
    assert get_kind("echo").runner(EchoSpec("hi", {"a": 1}), lambda f, m: None, lambda: False) == {
        "message": "hi", "payload": {"a": 1}}


@dataclass(frozen=True)
class _BtSpec(JobSpec):
    symbols: list[str]
    start: str = "2024-01-01"
    end: str = "2024-12-31"

    def validate(self) -> None:
        if not self.symbols:
            raise JobSpecError("symbols must not be empty")

    def memory_bytes(self) -> int:
        return 100 * len(self.symbols) << 20

    def data_range(self) -> dict[str, object]:
        return {"symbols": sorted(self.symbols), "start": self.start, "end": self.end}


def test_a_later_module_can_register_a_chunked_kind() -> None:
    def run(spec: _BtSpec, progress, should_stop) -> dict:  # type: ignore[no-untyped-def]
        return {"n": len(spec.symbols)}

    def split(spec: _BtSpec, n: int) -> list[_BtSpec]:
        step = -(-len(spec.symbols) // n)
        return [_BtSpec(spec.symbols[i:i + step], spec.start, spec.end) for i in range(0, len(spec.symbols), step)]

    k = register_kind("bt-test", _BtSpec, run, chunker=split, combiner=lambda rs: {"n": sum(r["n"] for r in rs)},
                      policy="chunked", devices="gpu", replace=True)
    assert get_kind("bt-test") is k and k.policy == "chunked"
    spec = k.parse({"symbols": ["A", "B", "C", "D", "E"]})
    assert k.chunks(spec, 2) == [_BtSpec(["A", "B", "C"]), _BtSpec(["D", "E"])]
    assert spec.memory_bytes() == 500 << 20
    with pytest.raises(JobSpecError, match="'symbols' is required"):
        k.parse({})
    with pytest.raises(JobSpecError, match="'symbols\\[1\\]' must be a string"):
        k.parse({"symbols": ["A", 3]})
    with pytest.raises(ValueError, match="already registered"):
        register_kind("bt-test", _BtSpec, run)
    with pytest.raises(ValueError, match="policy"):
        register_kind("other", _BtSpec, run, policy="fastest")
