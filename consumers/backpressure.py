"""Keeping ingestion healthy: batch sizes that respect ``max.poll.interval.ms`` and a duty cycle
that keeps training from starving ingestion of CPU.

How many records to ask for per poll, so a slow stage never outlives ``max.poll.interval.ms``:

A consumer that does not call poll() within ``max.poll.interval.ms`` is thrown out of its group: its
partitions move to another member, which re-reads everything not yet committed (duplicate work)
and, if every member is slow, they keep throwing each other out (a rebalance storm). A fixed batch
size cannot be right for both a fast and a throttled embedder, so the batch follows the measured
cost per record: one loop turn is kept within ``budget_seconds`` (a quarter of the poll interval
by default), growing at most 2x per turn after a cautious start.
"""

from __future__ import annotations

__all__ = ["AdaptiveBatchSize", "DutyCycle"]


class AdaptiveBatchSize:
    """Records per poll from the observed seconds per record: a slowdown counts at once, a
    speed-up through an exponential moving average.

    Parameters
    ----------
    max_records
        The configured ceiling (``batch.max_records``).
    budget_seconds
        Wall time one loop turn (process + train + snapshot + checkpoint) may take.
    start
        Records for the first poll, before any cost is known.
    smoothing
        Weight of the newest observation in the moving average.
    """

    def __init__(self, max_records: int, budget_seconds: float, start: int = 32, smoothing: float = 0.3) -> None:
        if max_records < 1 or budget_seconds <= 0 or not 0 < smoothing <= 1:
            raise ValueError("max_records >= 1, budget_seconds > 0 and 0 < smoothing <= 1 are required")
        self.max_records = max_records
        self.budget = budget_seconds
        self.smoothing = smoothing
        self.seconds_per_record: float | None = None
        self._size = max(1, min(start, max_records))

    @classmethod
    def for_poll_interval(cls, max_records: int, max_poll_interval_ms: int, share: float = 0.25) -> "AdaptiveBatchSize":
        return cls(max_records, budget_seconds=max_poll_interval_ms / 1000 * share)

    def next(self) -> int:
        return self._size

    def observe(self, records: int, seconds: float) -> None:
        """One loop turn handled ``records`` records in ``seconds``."""
        if records <= 0:
            return
        spr = max(seconds, 0.0) / records
        if self.seconds_per_record is None or spr > self.seconds_per_record:
            self.seconds_per_record = spr      # slower: believe it at once
        else:                                  # faster: believe it gradually
            self.seconds_per_record = self.smoothing * spr + (1 - self.smoothing) * self.seconds_per_record
        fits = int(self.budget / max(self.seconds_per_record, 1e-9))
        self._size = max(1, min(self.max_records, fits, 2 * self._size))


class DutyCycle:
    """Keeps a background activity (XTRA training) within ``share`` of wall time.

    After a run of ``t`` seconds the next may start ``t * (1 - share) / share`` seconds later, so on
    a host where ingestion needs the CPU the model trains on what is left instead of halving the
    throughput; on an idle stream the slices simply come as often as documents ask for them.
    """

    def __init__(self, share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self._next_allowed = float("-inf")

    def ready(self, now: float) -> bool:
        return now >= self._next_allowed

    def wait_seconds(self, now: float) -> float:
        return max(0.0, self._next_allowed - now)

    def ran(self, started: float, ended: float) -> None:
        self._next_allowed = ended + (ended - started) * (1 - self.share) / self.share
