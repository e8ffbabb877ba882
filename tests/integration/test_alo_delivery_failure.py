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

import pandas as pd
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from mystocks_gpu.data.synthetic_ticks import SyntheticMarket, generate, symbol_names
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.processors.running_aggregate import RunningAggregateProcessor
from mystocks_gpu.streams.exceptions import FatalRuntimeError
from mystocks_gpu.streams.runtime_config import RuntimeConfig
from mystocks_gpu.streams.stream_worker import StreamWorker
from mystocks_gpu.topics import TopicSpec
from mystocks_gpu.topics.admin import TopicAdmin, make_admin
from tests.conftest import wait_until
from tests.integration.stream_helpers import produce_ticks, read_outputs


def _set_max_message_bytes(settings: Settings, topic: str, value: int) -> None:
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)])
    admin = make_admin(settings.kafka)  # kept until the futures resolve (a collected client cancels them)
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(30)

    def applied() -> bool:  # the broker serves the new limit before the test goes on
        got = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
        return next(iter(got.values())).result(30)["max.message.bytes"].value == str(value)

    wait_until(applied, 30, f"max.message.bytes = {value} on {topic}")


def test_a_refused_output_stops_the_worker_uncommitted_and_nothing_is_lost(settings: Settings, unique: str) -> None:
    inp, out = f"t.alofail.{unique}", f"t.alofail.out.{unique}"
    TopicAdmin(settings.kafka).create([
        TopicSpec(inp, "symbol", "mystocks.md.Tick", partitions=1, dlq=False),
        TopicSpec(inp + ".dlq", "symbol", None, partitions=1, dlq=False),
        TopicSpec(out, "symbol", "mystocks.streams.RunningAggregate", partitions=1, dlq=False)])
    n = 1500
    cols, names = generate(SyntheticMarket(n_symbols=6, seed=21), 2 * n), symbol_names(6, 21)
    first = {k: v[:n] for k, v in cols.items()}
    second = {k: v[n:] for k, v in cols.items()}
    produce_ticks(settings, inp, first, names)
    rt = RuntimeConfig(guarantee="at_least_once", max_records=200, commit_timeout_s=10.0)

    def worker(wid: str) -> StreamWorker:
        return StreamWorker(RunningAggregateProcessor(out), settings.kafka, rt, group=f"g.alofail.{unique}",
                            worker_id=wid, input_topic=inp)

    w1, failure = worker("w1"), []

    def run() -> None:
        try:
            w1.run(idle_exit_s=15.0)
        except FatalRuntimeError as exc:
            failure.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: w1.summary.records_in >= n or not t.is_alive(), 90, "the first ticks to be processed")
    _set_max_message_bytes(settings, out, 100)  # below any record batch: the broker refuses every produce
    try:
        produce_ticks(settings, inp, second, names)
        t.join(90)
        assert not t.is_alive()
        assert failure and "without committing" in str(failure[0]), \
            f"the worker went on past outputs the broker refused ({w1.summary.records_in} ticks in)"
    finally:
        _set_max_message_bytes(settings, out, 1_048_588)
    w2 = worker("w2")
    w2.run(idle_exit_s=5.0)
    got = read_outputs(settings, out)
    ticks = pd.DataFrame({"sym": cols["sym"], "seq": cols["seq"]})
    ticks["symbol"] = [names[i] for i in ticks["sym"]]
    ticks["count"] = ticks.groupby("symbol").cumcount() + 1
    want = ticks[["symbol", "seq", "count"]]
    # at-least-once (as for a SIGKILL, test_runtime_faults.py): every tick has an output, and the last
    # running count per symbol is at least the reference's (a reprocessed tick may count twice)
    missing = set(zip(want["symbol"], want["seq"], strict=True)) - set(zip(got["symbol"], got["seq"], strict=True))
    assert not missing, f"{len(missing)} of {2 * n} ticks have no output, e.g. {sorted(missing)[:3]}"
    last = got.sort_values(["_p", "_o"]).groupby("symbol")["count"].last()
    ref = want.groupby("symbol")["count"].max()
    assert (last.reindex(ref.index) >= ref).all(), pd.concat([last, ref], axis=1)
