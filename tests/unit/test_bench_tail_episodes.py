"""``bench/_features_latency.tail_episodes``: the records over p99 of a latency run, grouped into
stall episodes with the hop that held each, on a constructed run whose stalls are known."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _features_latency as L  # noqa: E402

MS = 1_000_000


def _run() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """10 s at 1,000 records/s, 2 ms per hop, with two stalls: records produced in [3.000, 3.050) s
    wait 80-130 ms more before the worker, those in [7.500, 7.540) s 60-100 ms more at the consumer."""
    n = 10_000
    event = 1_700_000_000 * 10**9 + np.arange(n, dtype=np.int64) * MS  # one a ms
    hops = {h: np.full(n, 2 * MS, np.int64) for h in L.HOPS}
    a = np.arange(3000, 3050)
    hops["to_worker"][a] += (130 - (a - 3000)) * MS
    b = np.arange(7500, 7540)
    hops["to_consumer"][b] += (100 - (b - 7500)) * MS
    e2e = hops["to_worker"] + hops["in_worker"] + hops["to_consumer"]
    rng = np.random.default_rng(5)
    order = rng.permutation(n)  # arrival order is not event order
    return event[order], e2e[order], {h: v[order] for h, v in hops.items()}


def test_each_stall_is_one_episode_with_its_hop() -> None:
    event, e2e, hops = _run()
    eps = L.tail_episodes(event, e2e, hops)
    # p99 of the run is the ordinary 6 ms (99.1 % of the records): over it are exactly the 90 stalled ones
    assert [round(e["start_s"], 3) for e in eps] == [3.0, 7.5]
    assert [e["hop"] for e in eps] == ["to_worker", "to_consumer"]
    assert [e["records"] for e in eps] == [50, 40]
    assert eps[0]["max_ms"] == pytest.approx({"to_worker": 132.0, "in_worker": 2.0, "to_consumer": 2.0})
    assert eps[0]["max_e2e_ms"] == pytest.approx(136.0)
    assert eps[1]["max_ms"]["to_consumer"] == pytest.approx(102.0)
    assert eps[0]["length_s"] == pytest.approx(0.049) and eps[1]["length_s"] == pytest.approx(0.039)
    # a gap longer than the stalls' spacing joins them
    assert len(L.tail_episodes(event, e2e, hops, gap_s=5.0)) == 1


def test_a_quiet_run_and_an_empty_one() -> None:
    """No record over p99 when all are equal; none at all in an empty run."""
    event = np.arange(1000, dtype=np.int64) * MS
    flat = np.full(1000, 5 * MS, np.int64)
    assert L.tail_episodes(event, flat * 3, {h: flat for h in L.HOPS}) == []
    empty = np.zeros(0, np.int64)
    assert L.tail_episodes(empty, empty, {h: empty for h in L.HOPS}) == []
