"""The outbox: outputs of learned batches queued until their sink accepts them, oldest first.

The service learns a batch, queues its outputs (assignments, dead letters, snapshots, lineage) here
and hands them to the sinks with :meth:`Outbox.drain`. While the outbox holds anything, the service
learns no new batch and writes no checkpoint, so no offset is ever committed past an unsent output.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from xtream.consumers.metrics import ServiceMetrics
from xtream.stream.errors import RecordTooLarge, SinkError
from xtream.stream.sinks import Sink

__all__ = ["MAX_OUTPUT_RETRY_SECONDS", "OUTPUTS", "Outbox"]

logger = logging.getLogger(__name__)

#: Longest wait between attempts to publish outputs a sink refused (the stop flag is checked meanwhile).
MAX_OUTPUT_RETRY_SECONDS = 5.0

#: The outputs, in the order their sinks are flushed and closed.
OUTPUTS = ("assignments", "dead_letters", "snapshots", "lineage")


class Outbox:
    """Outputs not yet accepted by their sink: ``(output, value, key, headers)``, oldest first.

    ``sink_of`` names the sink of an output (None: that output is not published); it is asked at
    each use, so a sink may be swapped after construction. ``interrupted`` tells a sink that is
    retrying a send to give up (the service is stopping).
    """

    def __init__(self, sink_of: Callable[[str], Sink | None], metrics: ServiceMetrics,
                 interrupted: Callable[[], bool]) -> None:
        self.sink = sink_of
        self.metrics = metrics
        self._queue: deque[tuple[str, bytes, bytes | None, list | None]] = deque()
        #: Seconds to wait before the next :meth:`drain` after a sink refused an output.
        self.retry_wait = 0.0
        for name in OUTPUTS:
            sink = self.sink(name)
            if sink is not None:
                sink.on_rejected = lambda topic, reason, name=name: self.metrics.output_rejected.labels(name).inc()
                sink.interrupted = interrupted

    def sinks(self) -> list[Sink]:
        """The sinks of the published outputs, in the order of :data:`OUTPUTS`."""
        return [sink for sink in map(self.sink, OUTPUTS) if sink is not None]

    def flush(self, timeout: float | None = None) -> None:
        """Flush every sink, within ``timeout`` seconds where a sink takes one; raises :class:`SinkError`."""
        for sink in self.sinks():
            if timeout is not None and hasattr(sink, "flush_timeout"):
                sink.flush_timeout = timeout
            sink.flush()

    def __len__(self) -> int:
        return len(self._queue)

    def emit(self, name: str, value: bytes, key: bytes | None = None, headers: list | None = None) -> None:
        """Queue one output; it is sent at the next :meth:`drain`."""
        if self.sink(name) is not None:
            self._queue.append((name, value, key, headers))

    def drain(self) -> bool:
        """Hand the queued outputs to their sinks, oldest first; False if a sink refused one (it
        stays queued, and the next attempt waits longer)."""
        while self._queue:
            name, value, key, headers = self._queue[0]
            sink = self.sink(name)
            try:
                if sink is not None:
                    sink.add(value, key=key, headers=headers)
            except RecordTooLarge as exc:   # can never be sent: drop it loudly rather than block forever
                logger.error("%s record dropped: %s", name, exc)
                self.metrics.output_rejected.labels(name).inc()
            except SinkError as exc:
                self.metrics.output_errors.labels(name).inc()
                self.retry_wait = min(MAX_OUTPUT_RETRY_SECONDS, max(0.1, self.retry_wait * 2))
                logger.warning("%s output refused (%s); %d outputs wait, next try in %.1f s", name, exc,
                               len(self._queue), self.retry_wait)
                self.metrics.outputs_pending.set(len(self._queue))
                return False
            self._queue.popleft()
        self.retry_wait = 0.0
        self.metrics.outputs_pending.set(0)
        return True
