"""A Kafka consumer-group member as a :class:`~xtream.stream.sources.Source`.

Auto-commit is off. On assignment it seeks to offsets given by the service (its checkpoint), so a
crash between checkpoint and commit neither loses nor double-counts a record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from xtream.stream.errors import SourceUnavailable, map_kafka_errors
from xtream.stream.records import Record, offset_key
from xtream.stream.sources import Source

__all__ = ["KafkaSource", "committed_offsets", "position", "wait_for"]

COMMIT_TIMEOUT_MS = 10_000
#: Heartbeats every second (kafka-python's default is 3 s): a gone or frozen broker shows within
#: ~4 s as silence of more than three heartbeats.
HEARTBEAT_INTERVAL_MS = 1_000
HEARTBEAT_SILENCE_SECONDS = 3.5

logger = logging.getLogger(__name__)


class KafkaSource(Source):
    """A consumer-group member over ``topics``.

    Parameters
    ----------
    start_offsets
        Offsets from the service's checkpoint; partitions found here are sought to them on
        assignment, others resume from the group's committed offset (or ``auto_offset_reset``).
    on_revoke
        Called with the partitions being taken away. It runs on kafka-python's IO thread and must
        not block on Kafka. Partitions handed back to this process resume where it got to (not at
        the last commit), so a rebalance never makes the model learn a record twice.
    group_instance_id
        Static membership: a restart with the same id resumes its partitions without a rebalance.
    client_config
        Extra kafka-python settings (security: ``security_protocol``, ``sasl_*``, ``ssl_*``).
    """

    def __init__(self, bootstrap_servers: str, topics: list[str], group_id: str, *,
                 start_offsets: dict[str, int] | None = None,
                 on_revoke: Callable[[list[str]], None] | None = None,
                 auto_offset_reset: str = "earliest", max_poll_interval_ms: int = 300_000,
                 session_timeout_ms: int = 45_000, group_instance_id: str | None = None,
                 isolation_level: str = "read_committed", client_config: dict[str, Any] | None = None) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        self.start_offsets = dict(start_offsets or {})
        self._positions: dict[str, int] = {}   # next offset after what poll_batch handed out
        self._reachable = True
        #: Partition assignments received (the first one included): a storm shows as a fast climb.
        self.rebalances = 0
        self._on_revoke = on_revoke
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset, max_poll_interval_ms=max_poll_interval_ms,
            session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            group_instance_id=group_instance_id, isolation_level=isolation_level,
            metadata_max_age_ms=30_000, **(client_config or {}))
        # Join the group only once the topics' partitions are known: a group leader that assigns
        # from metadata lacking the topic hands out nothing until the next metadata refresh.
        for topic in topics:
            if not wait_for(lambda: bool(self._consumer.partitions_for_topic(topic)), timeout=30.0):
                logger.warning("topic %s has no partition metadata yet; joining anyway", topic)
        source = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            # kafka-python 3 calls these on its IO thread: nothing here may block on the network
            # (a commit or a producer flush from here deadlocks), so they only seek.
            def on_partitions_revoked(self, revoked: Any) -> None:
                if revoked and source._on_revoke is not None:
                    source._on_revoke([offset_key(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Any) -> None:
                source.rebalances += 1
                for tp in assigned:
                    key = offset_key(tp.topic, tp.partition)
                    # Where this process got to (a rebalance that hands a partition back must not
                    # re-read what the model already holds), else the checkpoint's offset, else the
                    # group's committed offset.
                    target = source._positions.get(key, source.start_offsets.get(key))
                    if target is not None:
                        source._consumer.seek(tp, target)
                logger.info("partitions assigned: %s", sorted(offset_key(tp.topic, tp.partition) for tp in assigned))

        self._consumer.subscribe(topics=topics, listener=_Listener())

    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        with map_kafka_errors(SourceUnavailable, "poll failed"):
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out = [Record(r.topic, r.partition, r.offset, r.value, r.key,
                      tuple((k, v if v is not None else b"") for k, v in (r.headers or ())), r.timestamp)
               for batch in polled.values() for r in batch]
        out.sort(key=lambda r: (r.topic, r.partition, r.offset))
        for r in out:
            self._positions[r.position] = r.offset + 1
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        mine = {offset_key(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        payload = {}
        for key, off in offsets.items():
            if key in mine:   # never commit for a partition we no longer own
                topic, part = key.rsplit(":", 1)
                payload[TopicPartition(topic, int(part))] = OffsetAndMetadata(off, "", -1)
        if not payload:
            return
        # Bounded: with the broker gone, commit would otherwise wait for it indefinitely; the
        # caller's checkpoint holds the offsets and the next checkpoint commits them.
        with map_kafka_errors(SourceUnavailable, "commit failed"):
            self._consumer.commit(payload, timeout_ms=COMMIT_TIMEOUT_MS)

    def assigned(self) -> bool:
        return bool(self._consumer.assignment())

    def reachable(self) -> bool:
        """Whether the group coordinator answered a heartbeat recently.

        poll() does not fail while the broker is down or stalled: it returns nothing. The
        heartbeats (every ``heartbeat_interval_ms``, from kafka-python's IO thread) do stop being
        answered, and that tells a dead or frozen broker from a quiet topic. kafka-python's
        ``last-heartbeat-seconds-ago`` metric counts from the last heartbeat *sent*, and attempts
        go on while the broker is gone, so the answers are read from its heartbeat state, with the
        metric as the fallback of a client that lacks it.
        """
        heartbeat = getattr(getattr(self._consumer, "_coordinator", None), "heartbeat", None)
        answered = getattr(heartbeat, "last_receive", None)
        if answered is not None:
            ago = time.monotonic() - max(answered, getattr(heartbeat, "last_reset", answered))
            self._reachable = ago < HEARTBEAT_SILENCE_SECONDS
            return self._reachable
        try:
            ago = self._consumer.metrics()["consumer-coordinator-metrics"]["last-heartbeat-seconds-ago"]
        except (KeyError, TypeError):
            return True    # a client without that metric: rely on poll errors alone
        except RuntimeError:   # read from another thread while the IO thread adds a sensor
            return self._reachable
        self._reachable = ago < HEARTBEAT_SILENCE_SECONDS
        return self._reachable

    def lag(self) -> dict[str, int]:
        """From the high-water marks of the last fetch responses: no request, so no blocking
        (``end_offsets`` waits up to ``request_timeout_ms`` when the broker is gone)."""
        out = {}
        for tp in self._consumer.assignment():
            key = offset_key(tp.topic, tp.partition)
            high, pos = self._consumer.highwater(tp), self._positions.get(key, self.start_offsets.get(key))
            if high is not None and pos is not None:
                out[key] = max(0, high - pos)
        return out

    def positions(self) -> dict[str, int]:
        out = {offset_key(tp.topic, tp.partition): position(self._consumer, tp) for tp in self._consumer.assignment()}
        return {k: v for k, v in out.items() if v is not None}

    def group_metadata(self) -> Any:
        """The consumer's group metadata, for a transactional producer's ``send_offsets_to_transaction``."""
        return self._consumer.group_metadata()

    def seek(self, offsets: dict[str, int]) -> None:
        """Read each assigned partition of ``offsets`` from that offset next."""
        from kafka import TopicPartition

        for key, off in offsets.items():
            topic, part = key.rsplit(":", 1)
            tp = TopicPartition(topic, int(part))
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, off)
            self._positions[key] = off
        self.start_offsets.update(offsets)

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=2_000)


def committed_offsets(bootstrap_servers: str, topic: str, group_id: str,
                      client_config: dict[str, Any] | None = None) -> dict[str, int]:
    """The group's committed offset per ``topic:partition`` (partitions without one are left out)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
                             **(client_config or {}))
    try:
        with map_kafka_errors(SourceUnavailable, f"reading {group_id}'s committed offsets failed"):
            wait_for(lambda: bool(consumer.partitions_for_topic(topic)), timeout=30.0)
            out = {}
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                off = consumer.committed(TopicPartition(topic, p))
                if off is not None:
                    out[offset_key(topic, p)] = off
            return out
    finally:
        consumer.close()


def position(consumer: Any, tp: Any) -> int | None:
    """The consumer's next offset for ``tp``, without waiting on the network (None if unknown)."""
    from kafka.errors import KafkaError

    try:
        return consumer.position(tp, timeout_ms=0)
    except KafkaError:
        return None


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
