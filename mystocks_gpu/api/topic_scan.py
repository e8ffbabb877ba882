"""Bounded reads of topic ranges for the gateway's unary calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import TopicPartition

from mystocks_gpu.infra.kafka_clients import consume_ready


def read_until(c: Any, topic: str, starts: dict[int, int], ends: dict[int, int], on_msg: Callable[[Any], None],
               timeout_s: float) -> bool:
    """Read ``topic`` from ``starts`` up to (excluding) ``ends`` per partition with the consumer
    ``c``, calling ``on_msg`` for every data record. Ends by the consumer's *position* (transaction
    markers occupy offsets that are never delivered). False when ``timeout_s`` passed first."""
    todo = {p for p in starts if starts[p] < ends[p]}
    if not todo:
        return True
    c.assign([TopicPartition(topic, p, starts[p]) for p in sorted(todo)])
    deadline = time.monotonic() + timeout_s
    while todo:
        if time.monotonic() > deadline:
            return False
        for m in consume_ready(c, 1000, 0.2):
            if m.error() or m.partition() not in todo or m.offset() >= ends[m.partition()]:
                continue
            on_msg(m)
        for tp in c.position([TopicPartition(topic, p) for p in sorted(todo)]):
            if tp.offset >= ends[tp.partition]:
                todo.discard(tp.partition)
    return True
