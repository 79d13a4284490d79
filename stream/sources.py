"""Sources: where documents come from. A source hands out batches of :class:`Record` and commits
offsets when told; it never commits on its own.

- :class:`JsonlFileSource` — a JSONL file, FIFO or stdin (one document per line), streamed with
  bounded memory, optionally followed as it grows; the line number is the offset, the input is
  partition 0 of topic ``file:<name>``.
- :class:`KafkaSource` — a kafka-python consumer in a group, auto-commit off. On assignment it
  seeks to offsets given by the service (its checkpoint), so a crash between checkpoint and commit
  neither loses nor double-counts a record.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from xtream.stream.errors import SourceUnavailable, map_kafka_errors
from xtream.stream.records import Record, offset_key

__all__ = ["JsonlFileSource", "KafkaReplaySource", "KafkaSource", "Source", "committed_offsets"]

COMMIT_TIMEOUT_MS = 10_000
#: Heartbeats every second (kafka-python's default is 3 s): a gone or frozen broker shows within
#: ~4 s as silence of more than three heartbeats.
HEARTBEAT_INTERVAL_MS = 1_000
HEARTBEAT_SILENCE_SECONDS = 3.5

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

    def close(self) -> None:
        pass


class JsonlFileSource(Source):
    """JSON lines from a file, a FIFO, or standard input (``-``), read as a stream.

    The offset of a record is its line number (from 0); the input is partition 0 of topic
    ``file:<name>`` (``file:stdin`` for ``-``). A restart with ``start_offsets`` reads past the lines
    before its offset again without handing them out. Memory stays bounded whatever the input's
    size: at most one read chunk plus one line, and a line longer than ``max_line_bytes`` is handed
    out cut to ``max_line_bytes + 1`` bytes (so the parser rejects it as too large) with the rest
    of it skipped.

    Opening never blocks (a FIFO without a writer yet included) and :meth:`poll_batch` waits at most
    its ``timeout_ms`` for input, so the caller's loop keeps turning and can stop on SIGTERM.
    Without ``follow`` the source is exhausted at the end of the input; with ``follow`` it waits for
    more, like ``tail -F``: lines appended later are read as they come, a line without its newline
    yet is held until it is complete, and a file replaced (rotated) or truncated under the same
    path is reopened from its start, with line numbers continuing.
    """

    CHUNK_BYTES = 1 << 16

    def __init__(self, path: str | Path, start_offsets: dict[str, int] | None = None, *, follow: bool = False,
                 max_line_bytes: int = 16 << 20, poll_interval: float = 0.2) -> None:
        self.stdin = str(path) == "-"
        self.path = Path(path)
        self.topic = "file:stdin" if self.stdin else f"file:{self.path.name}"
        self.follow = follow
        self.max_line_bytes = max_line_bytes
        self.poll_interval = poll_interval
        self.committed: dict[str, int] = {}
        self._skip_to = (start_offsets or {}).get(offset_key(self.topic, 0), 0)
        self._line = 0                 # number of the next line
        self._buf = bytearray()
        self._discarding = False       # inside the rest of an over-long line
        self._eof = False
        self._fd = -1
        self._open()

    def _open(self) -> None:
        if self.stdin:
            self._fd = os.dup(sys.stdin.fileno())
        else:   # O_NONBLOCK: opening a FIFO must not wait for its writer; reads then block (after select)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(self._fd, True)
        info = os.fstat(self._fd)
        self._regular = stat.S_ISREG(info.st_mode)
        self._inode = (info.st_dev, info.st_ino)
        self._read_bytes = 0

    def _replaced(self) -> bool:
        """The path now names another file (rotated), or this one shrank (truncated)."""
        if self.stdin or not self._regular:
            return False
        try:
            info = os.stat(self.path)
        except OSError:   # between a rotation's rename and the new file's creation
            return False
        return (info.st_dev, info.st_ino) != self._inode or info.st_size < self._read_bytes

    def _fill(self, timeout: float) -> bool:
        """Read what is available within ``timeout`` seconds into the buffer; False if nothing came."""
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        data = os.read(self._fd, self.CHUNK_BYTES)
        if data:
            self._read_bytes += len(data)
            self._buf += data
            return True
        if not self.follow:
            self._eof = True
        elif self._replaced():
            logger.warning("%s was replaced or truncated; reading it from its start", self.path)
            os.close(self._fd)
            self._open()
        else:
            time.sleep(min(self.poll_interval, max(0.0, timeout)))
        return False

    def _take_line(self) -> bytes | None:
        """The next complete line from the buffer (a cut one if over-long), or None."""
        while True:
            if self._discarding:
                newline = self._buf.find(b"\n")
                if newline < 0:
                    self._buf.clear()
                    return None
                del self._buf[: newline + 1]
                self._discarding = False
                continue
            newline = self._buf.find(b"\n", 0, self.max_line_bytes + 1)
            if newline >= 0:
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buf) > self.max_line_bytes:
                line = bytes(self._buf[: self.max_line_bytes + 1])
                self._buf.clear()
                self._discarding = True
                return line
            if self._eof and self._buf:   # a last line without its newline
                line = bytes(self._buf)
                self._buf.clear()
                return line[:-1] if line.endswith(b"\r") else line
            return None

    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        deadline = time.monotonic() + timeout_ms / 1000
        out: list[Record] = []
        while len(out) < max_records:
            line = self._take_line()
            if line is not None:
                if self._line >= self._skip_to:
                    out.append(Record(self.topic, 0, self._line, line))
                self._line += 1
                continue
            if self._eof:
                break
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:   # hand out what we have; take only what is there already
                if not self._fill(0.0):
                    break
            else:
                self._fill(remaining)
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        self.committed.update(offsets)

    def exhausted(self) -> bool:
        return self._eof and not self._buf

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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
                 isolation_level: str = "read_committed", client_config: dict | None = None) -> None:
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

        class _Listener(ConsumerRebalanceListener):
            # kafka-python 3 calls these on its IO thread: nothing here may block on the network
            # (a commit or a producer flush from here deadlocks), so they only seek.
            def on_partitions_revoked(self, revoked):
                if revoked and source._on_revoke is not None:
                    source._on_revoke([offset_key(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned):
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
        answered, and that tells a dead or frozen broker from a quiet topic.
        """
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
        out = {offset_key(tp.topic, tp.partition): _position(self._consumer, tp) for tp in self._consumer.assignment()}
        return {k: v for k, v in out.items() if v is not None}

    def group_metadata(self):
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
                      client_config: dict | None = None) -> dict[str, int]:
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


def _position(consumer, tp) -> int | None:
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


class KafkaReplaySource(Source):
    """A bounded re-read of a topic, ``[start, stop)`` per partition, by manual assignment.

    It joins no rebalancing group (commits go to its own ``group_id`` purely as a record of
    progress), so a replay never disturbs the live service's consumer group.
    """

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, start: dict[int, int],
                 stop: dict[int, int], client_config: dict | None = None,
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
                pos = _position(self._consumer, tp)
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
                          client_config: dict | None = None) -> tuple[dict[int, int], dict[int, int]]:
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

        def resolve(spec: str | None, default: dict) -> dict[int, int]:
            if spec is None:
                return {tp.partition: default[tp] for tp in tps}
            spec = spec.strip()
            if spec.replace(",", "").replace(":", "").isdigit():
                if ":" not in spec:
                    return {tp.partition: min(max(int(spec), begins[tp]), ends[tp]) for tp in tps}
                given = {int(p): int(o) for p, o in (x.split(":") for x in spec.split(","))}
                return {tp.partition: min(max(given.get(tp.partition, default[tp]), begins[tp]), ends[tp]) for tp in tps}
            when = datetime.fromisoformat(spec.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            found = consumer.offsets_for_times({tp: int(when.timestamp() * 1000) for tp in tps})
            return {tp.partition: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}

        return resolve(start, begins), resolve(stop, ends)
    finally:
        consumer.close()
