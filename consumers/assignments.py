"""Assignment records of a learned batch, and the stream time and latencies they carry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from xtream.consumers.intake import PreparedItem
from xtream.stream.schemas import Assignment

__all__ = ["assignments", "latest_event_time", "utc_from_ms"]

#: Topics per assignment record, by weight.
TOP_TOPICS = 3


def utc_from_ms(ms: int) -> datetime:
    """A record timestamp as an aware datetime; values past year 9999 clamp instead of raising."""
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=timezone.utc)


def assignments(items: Sequence[PreparedItem], clusters: np.ndarray, theta: np.ndarray, version: int,
                now: datetime) -> list[Assignment]:
    """One record per document: its cluster, its :data:`TOP_TOPICS` heaviest topics, where it came from."""
    top = np.argsort(-theta, axis=1)[:, :TOP_TOPICS]
    return [Assignment(document_id=it.id, lang=it.lang, cluster=int(clusters[i]),
                       topics=[(int(t), round(float(theta[i, t]), 5)) for t in top[i]],
                       model_version=version, source_topic=it.source_topic,
                       source_partition=it.source_partition, source_offset=it.source_offset,
                       event_time=it.timestamp, processed_at=now)
            for i, it in enumerate(items)]


def latest_event_time(items: Sequence[PreparedItem], now: datetime) -> datetime | None:
    """The latest event time of the batch (the documents' own, else their records'), at most ``now``
    (a timestamp from the future is clamped); None if no document has one."""
    times = [it.timestamp for it in items if it.timestamp is not None]
    times += [utc_from_ms(ms) for ms in record_times(items)]
    return min(max(times), now) if times else None


def record_times(items: Sequence[PreparedItem]) -> list[int]:
    """The documents' record timestamps (ms), where the record has one."""
    return [it.source_timestamp_ms for it in items if it.source_timestamp_ms and it.source_timestamp_ms > 0]
