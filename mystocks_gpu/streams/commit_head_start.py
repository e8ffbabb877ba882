"""When the next exactly-once commit starts: early by the mean time of recent commits, and early
enough that the oldest record of the open transaction is visible about one interval after its
timestamp.

An exactly-once output is visible when its transaction commits. The worker blocks inside a commit,
so records that arrive meanwhile join the next transaction; were its interval counted plainly from
the start of this commit, they would wait an interval *and* the next commit. Starting the next
commit early by the expected commit time bounds their wait *in the worker* by about the interval
(:meth:`CommitHeadStart.interval`).

A record's latency counts from its timestamp, not from its arrival: one that reached the worker
late (a broker pause, a slow hop) would still wait a whole interval there. So the next commit also
falls due when the transaction's oldest record (by Kafka timestamp) would otherwise be visible more
than the interval after it was stamped (:meth:`CommitHeadStart.wait_s`), by the mean commit time
plus :data:`SPREAD_DEVIATIONS` times its mean deviation: the records of a commit slower than usual
are the ones in the latency tail, so the age rule plans for a slow commit rather than the mean one
(at 50k ticks/s one transaction holds about 2 % of the ticks: its slowest commits set the p99).
Both together start a commit at most :data:`MAX_EARLY` of the interval early (the transaction rate
grows by at most 1/(1 - that)); records stamped more than :data:`LIVE_AGE_INTERVALS` intervals ago (a backlog, a
replay at its recorded pace, a producer clock far behind) leave the plain rule in force, and a
producer clock ahead only makes records look younger: they never delay a commit.

Shared by ``CommitProtocol`` and the benchmark's transactional relay (its floor), so both count the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the weight of the latest commit in :attr:`CommitHeadStart.mean_s` (an exponentially weighted mean)
COMMIT_TIME_WEIGHT = 0.2
#: the age rule plans for a commit this many mean absolute deviations slower than the mean one
#: (for normally distributed commit times, mean + 3 x 0.8 sigma: about the 99th percentile commit,
#: which a p99 latency target needs; A/B against 2 in bench/HISTORY.md)
SPREAD_DEVIATIONS = 3.0
#: the most of the commit interval a commit starts early by the mean commit time (its mean time
#: beyond is not taken off): with commits slower than this the transaction rate grows by at most
#: 1/(1 - this)
MAX_HEAD_START = 0.25
#: the most of the commit interval a commit starts early by in all (head start and the oldest
#: record's age together): commits are at least (1 - this) x the interval apart
MAX_EARLY = 0.5
#: records stamped more than this many commit intervals ago are not live: their age moves no commit
LIVE_AGE_INTERVALS = 10.0


def record_age_s(oldest_ms: int | None, now_s: float) -> float | None:
    """Seconds from the Kafka timestamp ``oldest_ms`` (ms; None: no stamped record) to the wall
    clock time ``now_s`` (s): the ``oldest_age_s`` of :meth:`CommitHeadStart.wait_s`."""
    return None if oldest_ms is None else now_s - oldest_ms / 1e3


@dataclass
class CommitHeadStart:
    """The mean commit time (s; None before the first commit), its mean absolute deviation (s),
    and the interval they leave."""

    mean_s: float | None = None
    dev_s: float = 0.0

    def observe(self, took_s: float) -> None:
        """One commit took ``took_s`` seconds (begin of the commit to its end): the first sets the
        mean, later ones move it by :data:`COMMIT_TIME_WEIGHT` of the difference, and the deviation
        by the same weight of the difference between ``|took_s - previous mean|`` and it."""
        m = self.mean_s
        if m is None:
            self.mean_s = took_s
            return
        self.mean_s = m + COMMIT_TIME_WEIGHT * (took_s - m)
        self.dev_s += COMMIT_TIME_WEIGHT * (abs(took_s - m) - self.dev_s)

    def interval(self, interval_s: float) -> float:
        """Seconds from the start of the last commit to the next: ``interval_s`` less the mean commit
        time, at most :data:`MAX_HEAD_START` of ``interval_s`` taken off."""
        return interval_s - min(self.mean_s or 0.0, MAX_HEAD_START * interval_s)

    def wait_s(self, interval_s: float, since_commit_s: float, oldest_age_s: float | None) -> float:
        """Seconds from now until the next commit is due (negative: overdue).

        ``since_commit_s``: seconds since the last commit started; ``oldest_age_s``: now (wall
        clock) less the Kafka timestamp of the open transaction's oldest record, s (None: no record
        yet). Due at the earlier of :meth:`interval` after the last commit's start and the moment the
        oldest record turns ``interval_s`` less a slow commit's time (the mean plus
        :data:`SPREAD_DEVIATIONS` deviations) old, so that it is visible by about ``interval_s`` after
        its timestamp; never earlier than (1 - :data:`MAX_EARLY`) x ``interval_s`` after the last
        commit's start. An age over :data:`LIVE_AGE_INTERVALS` intervals is ignored."""
        plain = self.interval(interval_s) - since_commit_s
        if oldest_age_s is None or oldest_age_s > LIVE_AGE_INTERVALS * interval_s:
            return plain
        by_age = interval_s - (self.mean_s or 0.0) - SPREAD_DEVIATIONS * self.dev_s - oldest_age_s
        return max((1.0 - MAX_EARLY) * interval_s - since_commit_s, min(plain, by_age))
