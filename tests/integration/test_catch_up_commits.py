"""The catch-up commit interval on the real broker (``--catch-up-commit-interval-ms``, on by
default at 1 s): a worker behind a backlog commits far less often than its ``--commit-interval-ms``
(and every batch's worth with ``--catch-up-commit-interval-ms 0``), and its exactly-once outputs
still equal the uninterrupted pandas reference, one per input, also when the default's worker is
SIGKILLed in the middle of a catch-up transaction and restarted."""

from __future__ import annotations

from mystocks_gpu.infra.config import Settings
from tests.integration.stream_helpers import (
    EVERY_INTERVAL,
    assert_exactly_once_equal,
    committed_total,
    finish,
    kill9,
    make_topics,
    output_high_watermark,
    produce_ticks,
    read_outputs,
    reference,
    start_worker,
    summaries,
    synthetic,
    wait_for,
)


def test_catch_up_commit_interval_takes_effect_and_stays_exactly_once(settings: Settings, unique: str) -> None:
    n = 40_000
    cols, names = synthetic(n, symbols=30, seed=41)
    commits: dict[str, int] = {}
    for label, extra in (("off", EVERY_INTERVAL), ("on", ())):
        t = make_topics(settings, f"{unique}{label}")
        produce_ticks(settings, t.input, cols, names)  # a backlog before the worker starts: batches close full
        w = start_worker(t, f"cu{label}", "--batch-records", "200", "--commit-interval-ms", "10", *extra, idle_exit=4)
        summary = summaries(finish(w, timeout=180))[-1]
        assert summary["records_in"] == n and summary["aborts"] == 0, summary
        commits[label] = summary["commits"]
        assert_exactly_once_equal(read_outputs(settings, t.output), reference(cols, names))
    # 200 batches of 200 ticks: off commits about every 10 ms (one per batch or two); on (the default),
    # about every 1 s while behind, then once more when the backlog is drained
    assert commits["on"] * 4 < commits["off"], commits


def test_sigkill_inside_a_catch_up_transaction_is_exactly_once(settings: Settings, unique: str) -> None:
    """The default runtime behind a 300k-tick backlog (a commit every 1 s while behind) is SIGKILLed
    mid-backlog, once 20k outputs are on the broker (inside a 1-second transaction or its commit);
    the restart (same worker id: it fences the dead one) consumes exactly what was not committed,
    and the outputs are one per input, equal to the reference."""
    n = 300_000
    cols, names = synthetic(n, symbols=40, seed=43)
    t = make_topics(settings, unique, partitions=4)
    produce_ticks(settings, t.input, cols, names)
    args = ("--batch-records", "200")
    w = start_worker(t, "cuk", *args, idle_exit=4)
    assert wait_for(lambda: output_high_watermark(settings, t.output) >= 20_000 or w.poll() is not None, 120)
    assert w.poll() is None, "the worker got through the backlog before the kill: raise n"
    kill9(w)
    done = committed_total(settings, t.group, t.input)
    assert done < n, "everything committed before the kill: raise n"
    summary = summaries(finish(start_worker(t, "cuk", *args, idle_exit=4), timeout=240))[-1]
    assert summary["aborts"] == 0 and summary["records_in"] == n - done, (done, summary)
    assert_exactly_once_equal(read_outputs(settings, t.output), reference(cols, names))
