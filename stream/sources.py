"""Sources: where documents come from. A source hands out batches of :class:`Record` and commits
offsets when told; it never commits on its own.

- :class:`JsonlFileSource` — a JSONL file (one document per line), for the embedded default and
  for tests; the line number is the offset, the file is partition 0 of topic ``file:<name>``.
- :class:`KafkaSource` — a kafka-python consumer in a group, auto-commit off. On assignment it
  seeks to offsets given by the service (its checkpoint), so a crash between checkpoint and commit
  neither loses nor double-counts a record.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from stream.errors import SourceUnavailable
from stream.records import Record, offset_key

__all__ = ["JsonlFileSource", "KafkaSource", "Source"]

logger = logging.getLogger(__name__)


class Source(ABC):
    @abstractmethod
    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_ms`` for the first ones."""

    @abstractmethod
    def commit(self, offsets: dict[str, int]) -> None:
        """Commit ``{"topic:partition": next offset}``; called only after that work is durable."""

    def assigned(self) -> bool:
        return True

    def lag(self) -> dict[str, int]:
        """Records behind the end, per ``topic:partition`` (empty when unknown)."""
        return {}

    def exhausted(self) -> bool:
        """True when a finite source has nothing more (files); a Kafka topic never is."""
        return False

    def close(self) -> None:
        pass


class JsonlFileSource(Source):
    def __init__(self, path: str | Path, start_offsets: dict[str, int] | None = None) -> None:
        self.path = Path(path)
        self.topic = f"file:{self.path.name}"
        self._lines = self.path.read_bytes().splitlines()
        self._next = (start_offsets or {}).get(offset_key(self.topic, 0), 0)
        self.committed: dict[str, int] = {}

    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        end = min(len(self._lines), self._next + max_records)
        out = [Record(self.topic, 0, i, self._lines[i]) for i in range(self._next, end)]
        self._next = end
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        self.committed.update(offsets)

    def lag(self) -> dict[str, int]:
        return {offset_key(self.topic, 0): len(self._lines) - self._next}

    def exhausted(self) -> bool:
        return self._next >= len(self._lines)


class KafkaSource(Source):
    """A consumer-group member over ``topics``.

    Parameters
    ----------
    start_offsets
        Offsets from the service's checkpoint; partitions found here are sought to them on
        assignment, others resume from the group's committed offset (or ``auto_offset_reset``).
    on_revoke
        Called with the partitions being taken away, before they go: the service checkpoints and
        commits there, so the next owner starts exactly where this one stopped.
    client_config
        Extra kafka-python settings (security: ``security_protocol``, ``sasl_*``, ``ssl_*``).
    """

    def __init__(self, bootstrap_servers: str, topics: list[str], group_id: str, *,
                 start_offsets: dict[str, int] | None = None,
                 on_revoke: Callable[[list[str]], None] | None = None,
                 auto_offset_reset: str = "earliest", max_poll_interval_ms: int = 300_000,
                 session_timeout_ms: int = 45_000, client_config: dict | None = None) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        self.start_offsets = dict(start_offsets or {})
        self._on_revoke = on_revoke
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset, max_poll_interval_ms=max_poll_interval_ms,
            session_timeout_ms=session_timeout_ms, metadata_max_age_ms=30_000, **(client_config or {}))
        # Join the group only once the topics' partitions are known: a group leader that assigns
        # from metadata lacking the topic hands out nothing until the next metadata refresh.
        for topic in topics:
            if not wait_for(lambda: bool(self._consumer.partitions_for_topic(topic)), timeout=30.0):
                logger.warning("topic %s has no partition metadata yet; joining anyway", topic)
        source = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                if revoked and source._on_revoke is not None:
                    source._on_revoke([offset_key(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned):
                for tp in assigned:
                    key = offset_key(tp.topic, tp.partition)
                    if key in source.start_offsets:
                        source._consumer.seek(tp, source.start_offsets[key])
                logger.info("partitions assigned: %s", sorted(offset_key(tp.topic, tp.partition) for tp in assigned))

        self._consumer.subscribe(topics=topics, listener=_Listener())

    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        from kafka.errors import KafkaError

        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise SourceUnavailable(f"poll failed: {exc!r}") from exc
        out = [Record(r.topic, r.partition, r.offset, r.value, r.key,
                      tuple((k, v if v is not None else b"") for k, v in (r.headers or ())), r.timestamp)
               for batch in polled.values() for r in batch]
        out.sort(key=lambda r: (r.topic, r.partition, r.offset))
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        mine = {offset_key(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        payload = {}
        for key, off in offsets.items():
            if key in mine:   # never commit for a partition we no longer own
                topic, part = key.rsplit(":", 1)
                payload[TopicPartition(topic, int(part))] = OffsetAndMetadata(off, "", -1)
        if not payload:
            return
        try:
            self._consumer.commit(payload)
        except KafkaError as exc:
            raise SourceUnavailable(f"commit failed: {exc!r}") from exc

    def assigned(self) -> bool:
        return bool(self._consumer.assignment())

    def lag(self) -> dict[str, int]:
        from kafka.errors import KafkaError

        tps = list(self._consumer.assignment())
        if not tps:
            return {}
        try:
            ends = self._consumer.end_offsets(tps)
            return {offset_key(tp.topic, tp.partition): max(0, ends[tp] - self._consumer.position(tp)) for tp in tps}
        except KafkaError:
            return {}

    def close(self) -> None:
        self._consumer.close()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
