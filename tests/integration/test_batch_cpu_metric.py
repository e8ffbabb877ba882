"""``mystocks_stream_batch_cpu_seconds``: the worker thread's CPU seconds in its batches, beside
``mystocks_stream_batch_seconds`` (their wall time). Two workers on the real broker run the same
backlog through a processor that does a known amount of extra work per batch: one blocks for it
(no CPU: the wall histogram grows by it, the CPU counter does not), the other burns it (both grow)."""

from __future__ import annotations

import time
from typing import Any

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
from mystocks_gpu.streams.processor import Columns, Outputs
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.stream_worker import StreamWorker
from tests.integration.stream_helpers import make_topics, produce_ticks, synthetic

EXTRA_S = 0.03  # the extra work per batch


class _Extra(RunningAggregateProcessor):
    """The running aggregate plus ``EXTRA_S`` per batch, blocked (``burn=False``) or burnt in CPU."""

    def __init__(self, output_topic: str, burn: bool) -> None:
        super().__init__(output_topic)
        self.burn = burn

    def process(self, batch: Columns, state: Any) -> tuple[Outputs, Any]:
        if self.burn:
            t = time.thread_time()
            while time.thread_time() - t < EXTRA_S:
                pass
        else:
            time.sleep(EXTRA_S)
        return super().process(batch, state)


def test_batch_cpu_counts_the_threads_cpu_not_its_waits(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=1)  # both workers write the one output topic
    n = 1200
    cols, names = synthetic(n, symbols=8, seed=3)
    produce_ticks(settings, t.input, cols, names)
    got = {}
    for kind in ("sleep", "burn"):
        proc = _Extra(t.output, burn=kind == "burn")
        w = StreamWorker(proc, settings.kafka, RuntimeConfig(guarantee="at_least_once", max_records=200),
                         group=f"{t.group}.{kind}", worker_id=kind, input_topic=t.input)
        sm = w.run(idle_exit_s=5.0, max_records=n)
        assert sm.records_in == n
        lbl = {"processor": proc.name}
        get = w.metrics.registry.get_sample_value
        got[kind] = (sm.batches, get("mystocks_stream_batch_cpu_seconds_total", lbl),
                     get("mystocks_stream_batch_seconds_sum", lbl))
    batches, cpu, wall = got["sleep"]
    assert batches >= 6 and 0 < cpu < wall
    assert wall - cpu >= 0.9 * EXTRA_S * batches, f"blocked {EXTRA_S} s a batch, but only {wall - cpu:.3f} s of " \
                                                 f"{wall:.3f} s over {batches} batches was not CPU"
    batches, cpu, wall = got["burn"]
    assert batches >= 6 and cpu >= EXTRA_S * batches, f"burnt {EXTRA_S} s of CPU a batch, counted {cpu:.3f} s " \
                                                      f"over {batches} batches"
    assert cpu <= wall + 1e-6
