"""Scheduler placement rules on fake device inventories (pure, no broker)."""

from __future__ import annotations

import random

import pytest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.devices import parse_fake_inventory
from mystocks_gpu.jobs.scheduler import (
    ChunkRequest,
    Commitment,
    Device,
    SchedulerConfig,
    WorkerInfo,
    place,
)

GIB = 1 << 30
NO_HEADROOM = SchedulerConfig(memory_headroom=0.0, max_chunks_per_device=0)


def gpu(i: int, total_gib: float, free_gib: float | None = None, reserved: str | None = None) -> Device:
    total = int(total_gib * GIB)
    return Device(f"gpu{i}", "gpu", "fake", total, int((free_gib if free_gib is not None else total_gib) * GIB), 0.1,
                  reserved)


def worker(wid: str, *devices: Device, kinds: tuple[str, ...] = ("sleep", "train", "bt", "rt")) -> WorkerInfo:
    return WorkerInfo(wid, kinds, tuple(devices))


def req(job: str, mem_gib: float, policy: str = "batch", chunk: int = 0, kind: str = "sleep",
        devices: str = "any") -> ChunkRequest:
    return ChunkRequest(job, chunk, kind, int(mem_gib * GIB), policy, devices)


def where(res) -> dict[tuple[str, int], str]:
    return {(p.job_id, p.chunk): f"{p.worker_id}/{p.device_id}" for p in res.placements}


def test_reserved_realtime_gpu_is_never_given_to_batch_jobs() -> None:
    workers = [worker("a", gpu(0, 80, reserved="ticks-features"), gpu(1, 8)), worker("b", gpu(0, 16))]
    reqs = [req(f"j{i}", 4, policy) for i, policy in enumerate(["batch", "training", "chunked", "batch", "training"])]
    res = place(reqs, workers, cfg=NO_HEADROOM)
    assert "a/gpu0" not in where(res).values()
    # training prefers the biggest *eligible* device, not the reserved 80 GiB one
    assert where(res)[("j1", 0)] == "b/gpu0"
    big = place([req("huge", 40, "training")], workers, cfg=NO_HEADROOM)
    assert big.placements == [] and "reserved for real-time ticks-features" in big.waiting[("huge", 0)]


def test_realtime_job_takes_an_idle_gpu_exclusively() -> None:
    workers = [worker("a", gpu(0, 16), gpu(1, 24)), worker("c", Device("cpu0", "cpu", "cpu", 64 * GIB, 64 * GIB))]
    res = place([req("rt", 2, "realtime", kind="rt"), req("b1", 1), req("b2", 1), req("b3", 1)], workers, cfg=NO_HEADROOM)
    w = where(res)
    assert w[("rt", 0)] == "a/gpu1"  # most free memory among idle GPUs
    assert all(w[(j, 0)] != "a/gpu1" for j in ("b1", "b2", "b3"))
    # once held (a commitment marked exclusive), nothing else lands there, even with memory to spare
    held = [Commitment("a", "gpu1", 2 * GIB, exclusive=True)]
    res2 = place([req(f"x{i}", 1, "training") for i in range(3)], [worker("a", gpu(0, 16), gpu(1, 24))], held, NO_HEADROOM)
    assert all(v == "a/gpu0" for v in where(res2).values())


def test_realtime_needs_an_idle_gpu_and_never_a_cpu() -> None:
    workers = [worker("a", gpu(0, 16)), worker("c", Device("cpu0", "cpu", "cpu", 64 * GIB, 64 * GIB))]
    busy = [Commitment("a", "gpu0", GIB)]
    res = place([req("rt", 1, "realtime", kind="rt")], workers, busy, NO_HEADROOM)
    assert res.placements == []
    assert "real-time needs an idle GPU" in res.waiting[("rt", 0)]
    assert "real-time needs a GPU" in res.waiting[("rt", 0)]


def test_training_goes_to_the_device_with_most_free_memory() -> None:
    workers = [worker("a", gpu(0, 80, free_gib=20), gpu(1, 40, free_gib=35)), worker("b", gpu(0, 24, free_gib=24))]
    assert where(place([req("t", 8, "training")], workers, cfg=NO_HEADROOM)) == {("t", 0): "a/gpu1"}
    # committed memory counts even before the device reports it as used
    committed = [Commitment("a", "gpu1", 30 * GIB)]
    assert where(place([req("t", 8, "training")], workers, committed, NO_HEADROOM)) == {("t", 0): "b/gpu0"}
    # GPUs before the CPU, even when the CPU has more memory
    workers.append(worker("c", Device("cpu0", "cpu", "cpu", 512 * GIB, 500 * GIB)))
    assert where(place([req("t", 8, "training")], workers, cfg=NO_HEADROOM))[("t", 0)] != "c/cpu0"


def test_backtest_chunks_spread_across_free_devices() -> None:
    workers = [worker("a", gpu(0, 16), gpu(1, 16)), worker("b", gpu(0, 16), gpu(1, 16))]
    reqs = [req("bt", 2, "chunked", chunk=i, kind="bt") for i in range(4)]
    res = place(reqs, workers, cfg=NO_HEADROOM)
    assert sorted(where(res).values()) == ["a/gpu0", "a/gpu1", "b/gpu0", "b/gpu1"]
    # 6 chunks on 3 devices: two each; a busy device gets fewer
    workers3 = [worker("a", gpu(0, 16), gpu(1, 16), gpu(2, 16))]
    res = place([req("bt", 1, "chunked", chunk=i, kind="bt") for i in range(6)], workers3, cfg=NO_HEADROOM)
    counts: dict[str, int] = {}
    for v in where(res).values():
        counts[v] = counts.get(v, 0) + 1
    assert counts == {"a/gpu0": 2, "a/gpu1": 2, "a/gpu2": 2}
    res = place([req("bt", 1, "chunked", chunk=i, kind="bt") for i in range(2)], workers3,
                [Commitment("a", "gpu0", GIB)], NO_HEADROOM)
    assert sorted(where(res).values()) == ["a/gpu1", "a/gpu2"]


def test_memory_estimate_never_over_commits_a_device() -> None:
    workers = [worker("a", gpu(0, 10))]
    res = place([req(f"j{i}", 4) for i in range(4)], workers, cfg=NO_HEADROOM)
    assert len(res.placements) == 2  # 4 + 4 <= 10 < 12
    assert set(res.waiting) == {("j2", 0), ("j3", 0)}
    assert "not enough free memory" in res.waiting[("j2", 0)]
    # what is already committed counts; the reported free memory counts when it is lower
    assert place([req("j", 4)], workers, [Commitment("a", "gpu0", 7 * GIB)], NO_HEADROOM).placements == []
    assert place([req("j", 4)], [worker("a", gpu(0, 10, free_gib=3))], cfg=NO_HEADROOM).placements == []
    # headroom keeps a fraction of the device free
    assert place([req("j", 9.8)], workers, cfg=SchedulerConfig(memory_headroom=0.05)).placements == []
    # a job bigger than any device waits with the reason
    res = place([req("huge", 11)], workers, cfg=NO_HEADROOM)
    assert res.placements == [] and "11264 MiB" in res.waiting[("huge", 0)]


def test_no_over_commit_on_random_inventories() -> None:
    rng = random.Random(7)
    for _ in range(200):
        workers = [worker(f"w{w}", *(gpu(i, rng.choice([8, 16, 24, 80]), reserved="rt" if rng.random() < 0.2 else None)
                                    for i in range(rng.randint(1, 3)))) for w in range(rng.randint(1, 3))]
        commits = [Commitment(w.worker_id, d.id, int(rng.uniform(0, 0.5) * d.total_bytes))
                   for w in workers for d in w.devices if rng.random() < 0.5 and not d.reserved_for]
        reqs = [req(f"j{i}", rng.uniform(0.5, 20), rng.choice(["batch", "training", "chunked"])) for i in range(12)]
        res = place(reqs, workers, commits, NO_HEADROOM)
        used: dict[str, int] = {}
        for c in commits:
            used[f"{c.worker_id}/{c.device_id}"] = used.get(f"{c.worker_id}/{c.device_id}", 0) + c.memory_bytes
        for p in res.placements:
            used[f"{p.worker_id}/{p.device_id}"] = used.get(f"{p.worker_id}/{p.device_id}", 0) + p.memory_bytes
        devs = {f"{w.worker_id}/{d.id}": d for w in workers for d in w.devices}
        for key, n in used.items():
            assert n <= devs[key].total_bytes
        for p in res.placements:
            assert devs[f"{p.worker_id}/{p.device_id}"].reserved_for is None
        assert len(res.placements) + len(res.waiting) == len(reqs)


def test_kind_device_type_and_busy_limits() -> None:
    cpu = Device("cpu0", "cpu", "cpu", 64 * GIB, 64 * GIB)
    workers = [worker("a", cpu, kinds=("echo",)), worker("b", cpu, gpu(0, 16), kinds=("sleep",))]
    assert where(place([req("j", 1, kind="sleep")], workers))[("j", 0)].startswith("b/")
    assert where(place([req("j", 1, kind="sleep", devices="cpu")], workers))[("j", 0)] == "b/cpu0"
    res = place([req("j", 1, kind="other")], workers)
    assert res.placements == [] and "kind not served" in res.waiting[("j", 0)]
    limited = SchedulerConfig(memory_headroom=0.0, max_chunks_per_device=1)
    res = place([req(f"j{i}", 1) for i in range(3)], [worker("b", gpu(0, 16))], cfg=limited)
    assert len(res.placements) == 1 and "device busy" in res.waiting[("j1", 0)]
    assert place([req("j", 1)], []).waiting[("j", 0)] == "no live worker"
    # commitments of a worker that is gone block nothing
    assert place([req("j", 15)], [worker("b", gpu(0, 16))], [Commitment("dead", "gpu0", 16 * GIB)], NO_HEADROOM).placements


def test_batch_prefers_least_loaded_then_gpu() -> None:
    workers = [worker("a", gpu(0, 16), gpu(1, 16))]
    res = place([req("j", 1)], workers, [Commitment("a", "gpu0", GIB)], NO_HEADROOM)
    assert where(res)[("j", 0)] == "a/gpu1"


def test_config_and_fake_inventory_validation() -> None:
    with pytest.raises(ConfigError):
        SchedulerConfig(memory_headroom=0.95)
    devs = parse_fake_inventory('[{"id": "gpu0", "total_mb": 1024, "free_mb": 512, "utilization": 0.5}, '
                                '{"id": "cpu0", "kind": "cpu", "total_mb": 2048}]')
    assert devs[0] == Device("gpu0", "gpu", "fake-gpu", 1 << 30, 1 << 29, 0.5, None)
    assert devs[1].kind == "cpu" and devs[1].free_bytes == 2 << 30
    for bad in ("[]", "{}", "not json", '[{"id": "a"}, {"id": "a"}]', '[{"id": "a", "kind": "tpu"}]'):
        with pytest.raises(ConfigError):
            parse_fake_inventory(bad)
    w = WorkerInfo("a", ("sleep",), tuple(devs), 5, ("j:0#1",), {"pid": 1})
    assert WorkerInfo.from_dict(w.to_dict()) == w
