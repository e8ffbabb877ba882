"""The catch-up commit interval on the real broker (``--catch-up-commit-interval-ms``): a worker
behind a backlog commits far less often than its ``--commit-interval-ms``, and its exactly-once
outputs still equal the uninterrupted pandas reference, one per input."""

from __future__ import annotations

from mystocks_gpu.infra.config import Settings
from tests.integration.stream_helpers import (
    assert_exactly_once_equal,
    finish,
    make_topics,
    produce_ticks,
    read_outputs,
    reference,
    start_worker,
    summaries,
    synthetic,
)


def test_catch_up_commit_interval_takes_effect_and_stays_exactly_once(settings: Settings, unique: str) -> None:
    n = 40_000
    cols, names = synthetic(n, symbols=30, seed=41)
    commits: dict[str, int] = {}
    for label, extra in (("off", ()), ("on", ("--catch-up-commit-interval-ms", "2000"))):
        t = make_topics(settings, f"{unique}{label}")
        produce_ticks(settings, t.input, cols, names)  # a backlog before the worker starts: batches close full
        w = start_worker(t, f"cu{label}", "--batch-records", "200", "--commit-interval-ms", "10", *extra, idle_exit=4)
        summary = summaries(finish(w, timeout=180))[-1]
        assert summary["records_in"] == n and summary["aborts"] == 0, summary
        commits[label] = summary["commits"]
        assert_exactly_once_equal(read_outputs(settings, t.output, n), reference(cols, names))
    # 200 batches of 200 ticks: off commits about every 10 ms (one per batch or two); on, about every
    # 2 s while behind, then once more when the backlog is drained
    assert commits["on"] * 4 < commits["off"], commits
