"""How early an exactly-once commit starts: by the mean time recent commits took.

An exactly-once output is visible when its transaction commits. The worker blocks inside a commit,
so records that arrive meanwhile join the next transaction; were its interval counted plainly from
the start of this commit, they would wait an interval *and* the next commit. Starting the next
commit early by the expected commit time bounds their wait until visible by about the interval.
Shared by ``CommitProtocol`` and the benchmark's transactional relay (its floor), so both count the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the weight of the latest commit in :attr:`CommitHeadStart.mean_s` (an exponentially weighted mean)
COMMIT_TIME_WEIGHT = 0.2
#: the most of the commit interval a commit starts early by (its mean time beyond is not taken
#: off): with commits slower than this the transaction rate grows by at most 1/(1 - this)
MAX_HEAD_START = 0.25


@dataclass
class CommitHeadStart:
    """The mean commit time (s; None before the first commit) and the interval it leaves."""

    mean_s: float | None = None

    def observe(self, took_s: float) -> None:
        """One commit took ``took_s`` seconds (begin of the commit to its end): the first sets the
        mean, later ones move it by :data:`COMMIT_TIME_WEIGHT` of the difference."""
        m = self.mean_s
        self.mean_s = took_s if m is None else m + COMMIT_TIME_WEIGHT * (took_s - m)

    def interval(self, interval_s: float) -> float:
        """Seconds from the start of the last commit to the next: ``interval_s`` less the mean commit
        time, at most :data:`MAX_HEAD_START` of ``interval_s`` taken off."""
        return interval_s - min(self.mean_s or 0.0, MAX_HEAD_START * interval_s)
