"""A bounded re-read of a Kafka topic (``[start, stop)`` per partition) as a
:class:`~xtream.stream.sources.Source`."""

from __future__ import annotations

import logging
from typing import Any

from xtream.stream.kafka_source import position, wait_for
from xtream.stream.records import Record, offset_key
from xtream.stream.sources import Source

__all__ = ["KafkaReplaySource", "resolve_replay_window"]

logger = logging.getLogger(__name__)


class KafkaReplaySource(Source):
    """A bounded re-read of a topic, ``[start, stop)`` per partition, by manual assignment.

    It joins no rebalancing group (commits go to its own ``group_id`` purely as a record of
    progress), so a replay never disturbs the live service's consumer group.
    """

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, start: dict[int, int],
                 stop: dict[int, int], client_config: dict[str, Any] | None = None,
                 isolation_level: str = "read_committed") -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id,
                                       enable_auto_commit=False, isolation_level=isolation_level,
                                       **(client_config or {}))
        self._tps = {p: TopicPartition(topic, p) for p in sorted(start)}
        self._consumer.assign(list(self._tps.values()))
        for p, tp in self._tps.items():
            self._consumer.seek(tp, start[p])
        self.start, self.stop = dict(start), dict(stop)
        self._next = dict(start)

    @property
    def total(self) -> int:
        return sum(max(0, self.stop[p] - self.start[p]) for p in self.start)

    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        done = [tp for p, tp in self._tps.items() if self._next[p] >= self.stop[p]]
        if done:
            self._consumer.pause(*done)
        if self.exhausted():
            return []
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out = []
        for batch in polled.values():
            for r in batch:
                if r.offset < self.stop[r.partition]:
                    out.append(Record(r.topic, r.partition, r.offset, r.value, r.key,
                                      tuple((k, v if v is not None else b"") for k, v in (r.headers or ())),
                                      r.timestamp))
                self._next[r.partition] = max(self._next[r.partition], r.offset + 1)
        if not polled:   # transaction markers and aborted records move the position, not the records
            for p, tp in self._tps.items():
                pos = position(self._consumer, tp)
                if pos is not None:
                    self._next[p] = max(self._next[p], pos)
        out.sort(key=lambda r: (r.partition, r.offset))
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        payload = {self._tps[int(k.rsplit(":", 1)[1])]: OffsetAndMetadata(v, "", -1)
                   for k, v in offsets.items() if int(k.rsplit(":", 1)[1]) in self._tps}
        if payload:
            self._consumer.commit(payload)

    def exhausted(self) -> bool:
        return all(self._next[p] >= self.stop[p] for p in self._tps)

    def lag(self) -> dict[str, int]:
        return {offset_key(self.topic, p): max(0, self.stop[p] - self._next[p]) for p in self._tps}

    def close(self) -> None:
        self._consumer.close()


def resolve_replay_window(bootstrap_servers: str, topic: str, start: str, stop: str | None = None,
                          client_config: dict[str, Any] | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """Turn ``--from``/``--to`` specs into offsets per partition.

    A spec is an ISO 8601 time (via ``offsets_for_times``: the first record at or after it), an
    offset for every partition (``"1200"``), or per partition (``"0:1200,1:980"``). ``stop=None`` is
    the end of each partition as of now, so a replay of a live topic terminates.
    """
    from datetime import datetime, timezone

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, **(client_config or {}))
    try:
        if not wait_for(lambda: bool(consumer.partitions_for_topic(topic)), timeout=30.0):
            raise ValueError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)

        def resolve(spec: str | None, default: dict[str, Any]) -> dict[int, int]:
            if spec is None:
                return {tp.partition: default[tp] for tp in tps}
            spec = spec.strip()
            if spec.replace(",", "").replace(":", "").isdigit():
                if ":" not in spec:
                    return {tp.partition: min(max(int(spec), begins[tp]), ends[tp]) for tp in tps}
                given = {int(p): int(o) for p, o in (x.split(":") for x in spec.split(","))}
                return {tp.partition: min(max(given.get(tp.partition, default[tp]), begins[tp]), ends[tp])
                        for tp in tps}
            when = datetime.fromisoformat(spec.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            found = consumer.offsets_for_times({tp: int(when.timestamp() * 1000) for tp in tps})
            return {tp.partition: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}

        return resolve(start, begins), resolve(stop, ends)
    finally:
        consumer.close()
