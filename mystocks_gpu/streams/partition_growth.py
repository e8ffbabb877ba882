"""Partitions added to a worker's input while it runs: noticed at the next rebalance, and fatal.

A topic that grows moves keys: Kafka's partitioner maps a key by the partition count, so a key's
later records land in another partition than its earlier ones, its state and its changelog
partition (the changelog has as many partitions as the input had). Per-key state and per-key order
would split; like Kafka Streams, the worker refuses. The group leader's consumer notices
the new partitions at its next metadata refresh (:data:`INPUT_METADATA_REFRESH_MS`) and the group
rebalances; the member handed a new partition stops before reading it (:func:`check_assigned`),
its leaving hands the partition to the next member, which stops too. A restart then refuses the
changelog's partition count (``state_store.ensure_changelog``).
"""

from __future__ import annotations

from collections.abc import Iterable

from mystocks_gpu.streams.exceptions import FatalRuntimeError

#: the worker consumer's ``topic.metadata.refresh.interval.ms``: how soon partitions added to the
#: input are noticed (librdkafka's default, 5 min, would let a grown topic run that long unnoticed)
INPUT_METADATA_REFRESH_MS = 10_000


def check_assigned(topic: str, group: str, started_with: int, partitions: Iterable[int]) -> None:
    """Raise :class:`FatalRuntimeError` if any assigned partition number is ``>= started_with``
    (the input's partition count when the worker started)."""
    grown = sorted(p for p in partitions if p >= started_with)
    if grown:
        raise FatalRuntimeError(
            f"input topic {topic} grew from {started_with} partition(s) while this worker ran (assigned "
            f"partition(s) {grown}): a key's records now go to another partition than its state, so per-key "
            f"state and order would split. The worker stops without reading them. To change the partition "
            f"count, stop every worker of group {group}, write the input to a new topic with the count wanted, "
            f"and run on that topic (a new changelog is made for it)")
