"""Partitions whose offsets go backwards (a topic recreated, a group's offsets reset)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from xtream.consumers.intake import PreparedBatch
from xtream.consumers.metrics import ServiceMetrics
from xtream.stream.records import Record

__all__ = ["OffsetRegressions"]

logger = logging.getLogger(__name__)


class OffsetRegressions:
    """Counts (and logs) each time a partition's offsets go backwards; with ``skip`` drops the
    records below the offsets already learned, else they are learned again."""

    def __init__(self, skip: bool, metrics: ServiceMetrics) -> None:
        self.skip = skip
        self.metrics = metrics
        self._last: dict[str, int] = {}   # last record offset seen per partition

    def filter(self, records: list[Record], batch: PreparedBatch,
               learned: Mapping[str, int]) -> tuple[list[Record], PreparedBatch]:
        """``records`` and ``batch`` less what to skip; ``learned`` is the next offset per partition."""
        for rec in records:
            last = self._last.get(rec.position)
            if last is not None and rec.offset <= last:
                self.metrics.offset_regressions.inc()
                logger.warning("offsets of %s went backwards (%d after %d: topic recreated or offsets reset); %s",
                               rec.position, rec.offset, last,
                               "skipping what was learned" if self.skip else "learning again from the new position")
            self._last[rec.position] = rec.offset
        if not self.skip:
            return records, batch
        fresh = {id(r) for r in records if r.offset >= learned.get(r.position, 0)}
        return [r for r in records if id(r) in fresh], batch.only(lambda r: id(r) in fresh)
