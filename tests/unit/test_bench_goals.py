"""``bench/_features_goals.goals``: each latency goal's row carries the measured run's quantile,
Kafka's one-hop floor, its two-hop floor (the exactly-once row: the transactional relay) and the
worker's own hop, each from the right run and rate, on hand-made results."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _features_goals import goals  # noqa: E402


def _run(p99: float, p999: float, hop99: float, hop999: float) -> dict[str, object]:
    return {"p99_ms": p99, "p999_ms": p999, "parts": {"in_worker": {"p99_ms": hop99, "p999_ms": hop999}}}


def test_goal_rows_put_each_floor_and_hop_in_its_column() -> None:
    args = Namespace(rate=50_000.0, low_rate=10_000.0, commit_interval_ms=100.0)
    lat = {"at_least_once": _run(22.0, 31.0, 8.5, 17.0), "exactly_once": _run(112.0, 120.0, 23.0, 30.0),
           "at_least_once@10000": _run(19.0, 30.0, 4.5, 9.0)}
    floor = {50_000.0: {"p99_ms": 3.8, "p999_ms": 16.0}, 10_000.0: {"p99_ms": 3.9, "p999_ms": 20.0}}
    floor2 = {50_000.0: {"p99_ms": 12.1, "p999_ms": 23.9}, 10_000.0: {"p99_ms": 10.3, "p999_ms": 22.0}}
    floor_eos = {50_000.0: {"p99_ms": 105.0}}
    rows = goals(args, lat, 12.0, floor, floor_eos, floor2)
    assert [r[0] for r in rows] == ["ALO p99 ms @ 50,000/s", "ALO p99.9 ms @ 50,000/s",
                                    "EOS p99 ms @ 50,000/s (commit 100 ms + 10)", "ALO p99 ms @ 10,000/s",
                                    "throughput ours EOS / Quix"]
    # (goal, target, measured, met, Kafka 1 hop, Kafka 2 hops, worker hop)
    assert rows[0][1:] == (10.0, 22.0, "NO", 3.8, 12.1, 8.5)
    assert rows[1][1:] == (25.0, 31.0, "NO", 16.0, 23.9, 17.0)
    assert rows[2][1:] == (110.0, 112.0, "NO", None, 105.0, 23.0)
    assert rows[3][1:] == (5.0, 19.0, "NO", 3.9, 10.3, 4.5)
    assert rows[4][1:] == (10.0, 12.0, "yes", None, None, None)


def test_goal_rows_without_floors_leave_their_columns_empty() -> None:
    args = Namespace(rate=50_000.0, low_rate=10_000.0, commit_interval_ms=250.0)
    rows = goals(args, {"exactly_once": _run(255.0, 270.0, 20.0, 25.0)}, None)
    assert rows == [("EOS p99 ms @ 50,000/s (commit 250 ms + 10)", 260.0, 255.0, "yes", None, None, 20.0)]
