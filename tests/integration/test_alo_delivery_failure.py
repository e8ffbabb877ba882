"""At-least-once: an output the broker refuses for good never lets the worker commit its input.

The runtime commits at-least-once offsets once the producer's queue is empty, and the outputs it
produces through the columnar extension report no delivery to Python. A record the broker refused
used to leave the queue like an acknowledged one: the worker committed the offsets past its input
and the output was lost (every record of that produce request, valid ones too). Here the output
topic's ``max.message.bytes`` drops below any record batch while the worker runs, on the real
broker: the worker must stop without committing what it could not deliver; once the limit is back,
a new worker of the group produces every missing output (duplicates allowed, nothing lost: every
input tick has an output, and each symbol's last running count is at least pandas' count)."""

from __future__ import annotations

import threading

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.stream_worker import StreamWorker
from mystocks_gpu.topics.admin import TopicAdmin
from tests.conftest import wait_until
from tests.integration.stream_helpers import (
    assert_at_least_once,
    make_topics,
    produce_ticks,
    read_outputs,
    reference,
    synthetic,
)


def _set_max_message_bytes(settings: Settings, topic: str, value: int) -> None:
    admin = TopicAdmin(settings.kafka)
    admin.set_configs(topic, {"max.message.bytes": str(value)})
    # the broker serves the new limit before the test goes on
    wait_until(lambda: admin.config_value(topic, "max.message.bytes") == str(value), 30,
               f"max.message.bytes = {value} on {topic}")


def test_a_refused_output_stops_the_worker_uncommitted_and_nothing_is_lost(settings: Settings, unique: str) -> None:
    t = make_topics(settings, unique, partitions=1)
    n = 1500
    cols, names = synthetic(2 * n, symbols=6, seed=21)
    produce_ticks(settings, t.input, {k: v[:n] for k, v in cols.items()}, names)
    rt = RuntimeConfig(guarantee="at_least_once", max_records=200, commit_timeout_s=10.0)

    def worker(wid: str) -> StreamWorker:
        return StreamWorker(RunningAggregateProcessor(t.output), settings.kafka, rt, group=t.group, worker_id=wid,
                            input_topic=t.input)

    w1, failure = worker("w1"), []

    def run() -> None:
        try:
            w1.run(idle_exit_s=15.0)
        except FatalRuntimeError as exc:
            failure.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    wait_until(lambda: w1.summary.records_in >= n or not th.is_alive(), 90, "the first ticks to be processed")
    _set_max_message_bytes(settings, t.output, 100)  # below any record batch: the broker refuses every produce
    try:
        produce_ticks(settings, t.input, {k: v[n:] for k, v in cols.items()}, names)
        th.join(90)
        assert not th.is_alive()
        assert failure and "without committing" in str(failure[0]), \
            f"the worker went on past outputs the broker refused ({w1.summary.records_in} ticks in)"
    finally:
        _set_max_message_bytes(settings, t.output, 1_048_588)
    worker("w2").run(idle_exit_s=5.0)
    # as after a SIGKILL (test_runtime_faults.py): nothing lost, a reprocessed tick may count twice
    assert_at_least_once(read_outputs(settings, t.output), reference(cols, names))
