"""Telling a zombie from a successor after a producer fence (exactly-once workers).

A worker's transactional id is fixed (``<group>.<processor>.<worker_id>``); its consumer's client.id
is that id + ``~`` + a per-process nonce. ``init_transactions`` fences every older instance with the
same id. A fenced worker then asks its consumer group: another process under our transactional id
(a successor, or a duplicate) means stop; none means the fence was self-inflicted (the coordinator
timed our transaction out: a broker outage, a long pause) and the worker re-initialises.

Two rules make that judgement safe:

- a worker joins its group *before* it takes the transactional id (:func:`await_membership`), so
  every instance that can fence another is visible to it;
- a fenced worker judges only once the group has settled (:func:`twins_once_settled`), counting
  every twin it saw on the way (a zombie rejoining starts a rebalance).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import ConsumerGroupState

from mystocks_gpu.infra.clock import Clock

log = logging.getLogger(__name__)
CLIENT_NONCE_SEP = "~"
#: after a fence, how long the worker waits for its group to settle before judging who else uses its
#: transactional id (s): covers a rebalance (session timeout 6 s) and a coordinator loading after a restart
FENCE_SETTLE_S = 45.0
SETTLED_GROUP_STATES = (ConsumerGroupState.STABLE, ConsumerGroupState.EMPTY)


def is_twin(member_client_id: str, transactional_id: str, own_client_id: str) -> bool:
    """Whether a consumer-group member's client.id marks ANOTHER worker process using
    ``transactional_id`` (client.id = ``<transactional id>~<process nonce>``). Our own members,
    current or stale, carry ``own_client_id``."""
    tid, sep, _ = member_client_id.rpartition(CLIENT_NONCE_SEP)
    return bool(sep) and tid == transactional_id and member_client_id != own_client_id


def twins_once_settled(describe: Callable[[], Any], transactional_id: str, own_client_id: str, clock: Clock,
                       settle_s: float = FENCE_SETTLE_S) -> list[Any] | None:
    """After a fence: the group members that are ANOTHER process using ``transactional_id``, judged
    once the group has settled (state Stable or Empty); ``None`` when it could not be described.

    A woken zombie rejoining the group starts a rebalance, and a description taken then can miss the
    successor: a zombie that re-initialised on it would fence the live worker. So every description
    until the group settles counts, and a twin seen in any of them is a twin. ``describe()`` returns a
    ``ConsumerGroupDescription``; an error is retried with backoff (the coordinator may still be
    loading after a broker restart). Waits at most ``settle_s`` seconds, then judges on what it saw."""
    seen: dict[str, Any] = {}
    described = False
    deadline = clock.monotonic() + settle_s
    attempt = 0
    while True:
        try:
            desc = describe()
            described = True
            seen.update((m.member_id, m) for m in desc.members if is_twin(m.client_id, transactional_id, own_client_id))
            if desc.state in SETTLED_GROUP_STATES:
                break
            log.info("fenced; waiting for the group to settle", extra={"fields": {"state": str(desc.state)}})
            pause = 0.5
        except Exception as exc:  # noqa: BLE001 - retried, then judged on what was seen
            log.warning("fenced; describing the group failed", extra={"fields": {"error": repr(exc), "attempt": attempt}})
            pause = min(2.0 * 2**attempt, 10.0)
            attempt += 1
        if clock.monotonic() + pause > deadline:
            break
        clock.sleep(pause)
    return list(seen.values()) if described else None


def await_membership(describe: Callable[[], Any], client_id: str, clock: Clock, timeout_s: float = FENCE_SETTLE_S,
                     poll_s: float = 0.05) -> bool:
    """Wait until the group (``describe()`` returns its ``ConsumerGroupDescription``) lists a member
    with ``client_id``; True when it does, False after ``timeout_s`` seconds (logged: the worker goes
    on, and the fence check stays on the safe side for every instance that did join)."""
    deadline = clock.monotonic() + timeout_s
    while True:
        try:
            if any(m.client_id == client_id for m in describe().members):
                return True
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            log.debug("describing the group failed", extra={"fields": {"error": repr(exc)}})
        if clock.monotonic() + poll_s > deadline:
            log.warning("this worker did not appear in its consumer group before taking its transactional id",
                        extra={"fields": {"waited_s": timeout_s}})
            return False
        clock.sleep(poll_s)
