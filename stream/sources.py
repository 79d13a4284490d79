"""Sources: where documents come from. A source hands out batches of :class:`Record` and commits
offsets when told; it never commits on its own.

- :class:`~xtream.stream.file_source.JsonlFileSource` — a JSONL file, FIFO or stdin (one document
  per line), streamed with bounded memory, optionally followed as it grows; the line number is the
  offset, the input is partition 0 of topic ``file:<name>``.
- :class:`~xtream.stream.kafka_source.KafkaSource` — a kafka-python consumer in a group, auto-commit
  off. On assignment it seeks to offsets given by the service (its checkpoint), so a crash between
  checkpoint and commit neither loses nor double-counts a record.
- :class:`~xtream.stream.kafka_replay.KafkaReplaySource` — a bounded re-read of a topic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from xtream.stream.records import Record

__all__ = ["Source"]


class Source(ABC):
    @abstractmethod
    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_ms`` for the first ones."""

    @abstractmethod
    def commit(self, offsets: dict[str, int]) -> None:
        """Commit ``{"topic:partition": next offset}``; called only after that work is durable."""

    def assigned(self) -> bool:
        return True

    #: Times partitions were (re)assigned to this consumer; sources without groups stay at 0.
    rebalances: int = 0

    def reachable(self) -> bool:
        """Whether the system behind the source answers (a file always does)."""
        return True

    def lag(self) -> dict[str, int]:
        """Records behind the end, per ``topic:partition`` (empty when unknown)."""
        return {}

    def positions(self) -> dict[str, int]:
        """Next offset to read per ``topic:partition``. After an empty poll it may be past the last
        record handed out (transaction markers, aborted records): committing it is safe then."""
        return {}

    def exhausted(self) -> bool:
        """True when a finite source has nothing more (files); a Kafka topic never is."""
        return False

    def group_metadata(self) -> Any:
        """The consumer group's metadata, for a transactional producer (a source in a group only)."""
        raise NotImplementedError(f"{type(self).__name__} reads in no consumer group")

    def close(self) -> None:
        pass

