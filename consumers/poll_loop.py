"""One turn of a consuming loop, shared by the service and the embedder worker: the heartbeat, the
back-off while outputs wait for their sinks, the poll (a source that cannot be reached is waited
out, not raised), the consumer's lag, and the batch size that keeps a turn within the poll interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from xtream.consumers.backpressure import AdaptiveBatchSize
from xtream.consumers.metrics import ServiceMetrics
from xtream.consumers.outbox import Outbox
from xtream.stream.errors import SourceUnavailable
from xtream.stream.records import Record
from xtream.stream.sources import Source

__all__ = ["PollLoop"]

logger = logging.getLogger(__name__)

#: Pause after a poll failed because the broker is unreachable.
UNAVAILABLE_PAUSE_SECONDS = 1.0
#: The consumer's lag is read at most this often.
LAG_EVERY_SECONDS = 5.0


class PollLoop:
    """The poll side of a loop over ``source()`` (asked at each use, so the source may be swapped).

    Attributes
    ----------
    heartbeat
        ``time.monotonic()`` at the start of the last turn (liveness: the loop keeps turning).
    healthy
        The last poll did not fail.
    reassigned
        Partitions were assigned since the owner last cleared the flag.
    """

    def __init__(self, source: Callable[[], Source], metrics: ServiceMetrics, stop: threading.Event,
                 max_wait_ms: int) -> None:
        self.source = source
        self.metrics = metrics
        self.stop = stop
        self.max_wait_ms = max_wait_ms
        self.heartbeat = time.monotonic()
        self.healthy = True
        self.reassigned = False
        self._rebalances = 0
        self._last_lag = 0.0

    @staticmethod
    def sizing(max_records: int, max_poll_interval_ms: int) -> AdaptiveBatchSize:
        return AdaptiveBatchSize.for_poll_interval(max_records, max_poll_interval_ms)

    def turn(self, outbox: Outbox | None = None) -> bool:
        """Start a turn (the heartbeat); False, after a pause, while ``outbox`` holds outputs its
        sinks refused: no new batch is polled until they are taken."""
        self.heartbeat = time.monotonic()
        if outbox is not None and not outbox.drain():
            self.stop.wait(outbox.retry_wait)
            return False
        return True

    def poll(self, asked: int) -> list[Record] | None:
        """Up to ``asked`` records; None (after a pause) while the source is unavailable."""
        source = self.source()
        try:
            # Always the full wait, never timeout_ms=0: kafka-python's consumer can stop sending
            # fetches for good under zero-timeout polls.
            records = source.poll_batch(asked, self.max_wait_ms)
        except SourceUnavailable as exc:
            self.healthy = False
            logger.warning("source unavailable: %s", exc)
            time.sleep(UNAVAILABLE_PAUSE_SECONDS)
            return None
        self.healthy = True
        if source.rebalances > self._rebalances:
            self.metrics.rebalances.inc(source.rebalances - self._rebalances)
            self._rebalances = source.rebalances
            self.reassigned = True
        return records

    def observe_lag(self) -> None:
        """The consumer's lag per partition, every :data:`LAG_EVERY_SECONDS` at most."""
        if time.monotonic() - self._last_lag > LAG_EVERY_SECONDS:
            self.metrics.partition_lag(self.source().lag())
            self._last_lag = time.monotonic()

    def observe_turn(self, sizing: AdaptiveBatchSize, records: int, seconds: float) -> None:
        """A turn processed ``records`` in ``seconds``: the next poll's size follows."""
        sizing.observe(records, seconds)
        self.metrics.batch_records_limit.set(sizing.next())
