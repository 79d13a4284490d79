"""Sinks: where results go. ``add()`` queues, ``flush()`` makes it durable (the checkpoint calls it
before committing offsets, so nothing committed can be missing downstream).

- :class:`KafkaSink` — one topic on a shared idempotent producer (``acks=all``).
- :class:`JsonlSink` — appends JSON lines to a file (the embedded default's outputs).
- :class:`MemorySink` — keeps everything in a list, for unit tests.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xtream.stream.errors import RecordTooLarge, SinkError

__all__ = ["JsonlSink", "KafkaSink", "MemorySink", "Sink", "close_sinks", "make_producer", "topic_record_limits"]

logger = logging.getLogger(__name__)


class Sink(ABC):
    """Where one output goes: :meth:`add` queues a record, :meth:`flush` makes everything added durable."""

    #: The largest value the sink takes, in bytes (None: no limit).
    max_value_bytes: int | None = None
    #: The Kafka producer this sink shares with other sinks (None: none); :func:`close_sinks` closes
    #: each shared producer once, after every sink that uses it.
    producer: Any = None
    #: Called with ``(topic, reason)`` when the sink drops a record for good (None: nobody listens).
    on_rejected: Callable[[str, str], None] | None = None
    #: Asked while a flush waits: True gives the wait up (the owner is stopping).
    interrupted: Callable[[], bool] = staticmethod(lambda: False)

    @abstractmethod
    def add(self, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None) -> None: ...

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


class MemorySink(Sink):
    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []

    def add(self, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        self.messages.append((key, value, list(headers or [])))


class JsonlSink(Sink):
    """One line per record. Plain mode writes the value (it must be one line of JSON already);
    ``envelope=True`` writes ``{"value", "key", "headers"}`` so that dead letters, whose value may
    be anything, keep their bytes (text if UTF-8, else ``value_base64``), key and reason headers."""

    def __init__(self, path: str | Path, envelope: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.envelope = envelope
        self._f = open(self.path, "ab")

    def add(self, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        if self.envelope:
            value = json.dumps({**_as_text("value", value), **_as_text("key", key),
                                "headers": [[k, (v or b"").decode("utf-8", "replace")] for k, v in headers or ()]},
                               ensure_ascii=False).encode()
        self._f.write(value.rstrip(b"\n") + b"\n")

    def flush(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:   # e.g. a full disk: the checkpoint waits instead of the run ending
            raise SinkError(f"writing {self.path} failed: {exc}") from exc

    def close(self) -> None:
        self.flush()
        self._f.close()


def _as_text(name: str, raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {name: None}
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(raw).decode("ascii")}


#: Kafka's default ``message.max.bytes``: what a topic accepts when nothing else is known.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
#: Room left for the record batch's own framing (headers, offsets, CRC) under the topic's limit.
BATCH_OVERHEAD_BYTES = 512
#: Longest a send may wait for a topic's metadata (a gone broker): the record then waits as unsent.
MAX_BLOCK_MS = 10_000
#: A flush waits on the producer in slices this long, so that a stop is noticed.
FLUSH_SLICE_SECONDS = 0.5
#: Broker answers that no re-send can change: the record is dropped, counted and logged.
_PERMANENT = ("MessageSizeTooLargeError", "RecordTooLargeError", "InvalidRecordError", "InvalidTopicError",
              "TopicAuthorizationFailedError", "CorruptRecordError")


def make_producer(bootstrap_servers: str, client_config: dict[str, Any] | None = None, *,
                  compression: str | None = "zstd", transactional_id: str | None = None) -> Any:
    """The ``acks=all`` producer shared by all Kafka sinks of a process.

    With ``transactional_id`` it is transactional (and idempotent): its sends belong to the
    transactions the caller opens. Without, it is not idempotent but keeps one request in flight
    per connection, so order holds: kafka-python's idempotent producer fails every later batch of a
    partition once the broker refuses one record, and a refused record must cost only itself.
    """
    from kafka import KafkaProducer

    extra = ({"transactional_id": transactional_id} if transactional_id
             else {"enable_idempotence": False, "max_in_flight_requests_per_connection": 1})
    return KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=20,
                         max_request_size=16 * 1024 * 1024, max_block_ms=MAX_BLOCK_MS,
                         compression_type=None if compression in (None, "none") else compression,
                         **extra, **(client_config or {}))


def _no_config_dump(record: logging.LogRecord) -> bool:
    """kafka-python's admin client logs its whole configuration, SASL password included, at DEBUG."""
    return not str(record.msg).startswith("Starting KafkaAdminClient with configuration")


logging.getLogger("kafka.admin.client").addFilter(_no_config_dump)


def topic_record_limits(bootstrap_servers: str, topics: list[str],
                        client_config: dict[str, Any] | None = None) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` (its own setting, else the broker's ``message.max.bytes``,
    else Kafka's default): the largest record batch the broker will take for it."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResourceType
    from kafka.errors import KafkaError

    limits = {t: DEFAULT_MAX_MESSAGE_BYTES for t in topics}
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client_config or {}))
    except KafkaError as exc:
        logger.warning("cannot read the output topics' record limits (%r); assuming %d bytes", exc,
                       DEFAULT_MAX_MESSAGE_BYTES)
        return limits
    try:
        broker_limit = _config_value(admin, ConfigResourceType.BROKER, "1", "message.max.bytes")
        for topic in topics:
            own = _config_value(admin, ConfigResourceType.TOPIC, topic, "max.message.bytes")
            limits[topic] = own or broker_limit or DEFAULT_MAX_MESSAGE_BYTES
    finally:
        admin.close()
    return limits


def _config_value(admin: Any, kind: Any, name: str, key: str) -> int | None:
    """One config value of a broker or topic (None if unknown, e.g. a topic not created yet)."""
    from kafka.admin import ConfigResource
    from kafka.errors import KafkaError

    try:
        described = admin.describe_configs([ConfigResource(kind, name, configs={key: None})], config_filter="all")
        for by_name in described.values():
            for configs in by_name.values():
                entry = configs.get(key)
                if entry is not None and entry.get("value") is not None:
                    return int(entry["value"])
    except (KafkaError, ValueError, TypeError, AttributeError) as exc:
        logger.debug("describe_configs %s %s: %r", name, key, exc)
    return None


class KafkaSink(Sink):
    """One topic. ``flush()`` returns only when every record added so far is acknowledged.

    A record the producer could not take (``send`` raised, e.g. no metadata with the broker gone)
    or whose delivery failed is sent again at the next ``flush()``, which raises until it is
    acknowledged: the checkpoint that depends on the flush is postponed instead of covering an
    output that never arrived. Records the broker can never accept (over the topic's size limit,
    or refused as invalid) raise :class:`RecordTooLarge` at ``add()`` when their size shows it, or
    are dropped at ``flush()`` and reported to ``on_rejected(topic, reason)``: retrying them
    forever would block every checkpoint.
    """

    def __init__(self, producer: Any, topic: str, flush_timeout: float = 30.0, max_record_bytes: int | None = None,
                 on_rejected: Callable[[str, str], None] | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout = flush_timeout
        self.max_record_bytes = max_record_bytes
        self.on_rejected = on_rejected
        #: When it returns True, a waiting ``flush()`` gives up at once (the owner is stopping).
        self.interrupted: Callable[[], bool] = lambda: False
        self._pending: list[tuple[tuple[Any, ...], Any]] = []   # ((value, key, headers), future or None if unsent)

    @property
    def max_value_bytes(self) -> int | None:  # type: ignore[override]
        """The largest value this topic takes (its limit less the batch's framing)."""
        return None if self.max_record_bytes is None else self.max_record_bytes - BATCH_OVERHEAD_BYTES

    def _send(self, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        from kafka.errors import KafkaError

        try:
            return self.producer.send(self.topic, value=value, key=key, headers=headers)
        except KafkaError as exc:
            if type(exc).__name__ in _PERMANENT:
                raise RecordTooLarge(f"{self.topic} refuses a record of {len(value)} bytes: {exc!r}") from exc
            logger.warning("send to %s failed (%r); it is sent again at the next flush", self.topic, exc)
            return None

    def add(self, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        args = (value, key, list(headers or []))
        size = len(value) + len(key or b"") + sum(len(k) + len(v or b"") for k, v in args[2])
        if self.max_value_bytes is not None and size > self.max_value_bytes:
            raise RecordTooLarge(f"a record of {size} bytes is over {self.topic}'s limit of "
                                 f"{self.max_record_bytes} bytes")
        self._pending.append((args, self._send(*args)))

    def flush(self) -> None:

        self._pending = [(args, self._send(*args) if fut is None else fut) for args, fut in self._pending]
        self._wait_for_producer()
        still, refused, failed = [], [], 0
        for args, fut in self._pending:
            if fut is None or not fut.is_done:
                still.append((args, fut))
            elif fut.failed():
                if type(fut.exception).__name__ in _PERMANENT:
                    refused.append(args)
                    continue
                failed += 1
                still.append((args, self._send(*args)))   # deliver it again
        # The broker refuses a whole batch for one bad record: send each refused record alone, so
        # only the one at fault is dropped.
        for args in refused:
            fut = self._send(*args)
            try:
                self._wait_for_producer()
            except SinkError:
                still.append((args, fut))
                continue
            if fut is not None and fut.is_done and fut.failed() and type(fut.exception).__name__ in _PERMANENT:
                logger.error("%s refused a record of %d bytes for good (%s); it is dropped", self.topic,
                             len(args[0]), fut.exception)
                if self.on_rejected is not None:
                    self.on_rejected(self.topic, type(fut.exception).__name__)
            elif fut is None or not fut.is_done or fut.failed():
                still.append((args, fut if fut is not None and not fut.is_done else None))
        self._pending = still
        if still:
            raise SinkError(f"{len(still)} records to {self.topic} not acknowledged yet ({failed} re-sent)")

    def _wait_for_producer(self) -> None:
        """``producer.flush`` within ``flush_timeout``, in short waits so a stop can cut it short."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + self.flush_timeout
        while True:
            if self.interrupted():
                raise SinkError(f"flush of {self.topic} given up: stopping")
            try:
                self.producer.flush(timeout=max(0.0, min(FLUSH_SLICE_SECONDS, deadline - time.monotonic())))
                return
            except KafkaError as exc:
                if time.monotonic() >= deadline:
                    raise SinkError(f"flush of {self.topic} timed out: {exc!r}") from exc

    def close(self) -> None:
        self.flush()


def close_sinks(*sinks: Sink | None, timeout: float = 8.0) -> list[SinkError]:
    """Close every sink (flushing it), then the Kafka producer they share, all within about
    ``timeout`` seconds (a stop must not wait on a gone broker); returns the errors."""
    errors: list[SinkError] = []
    producers: list[Any] = []
    present = [sink for sink in sinks if sink is not None]
    for sink in present:
        if isinstance(sink, KafkaSink):
            sink.flush_timeout = min(sink.flush_timeout, timeout / (2 * len(present)))
        try:
            sink.close()
        except SinkError as exc:
            errors.append(exc)
        producer = sink.producer
        if producer is not None and all(producer is not p for p in producers):
            producers.append(producer)
    from kafka.errors import KafkaError

    for producer in producers:
        try:
            producer.close(timeout=timeout / 2)
        except KafkaError as exc:   # records still unsent: they are covered by no checkpoint
            errors.append(SinkError(f"producer closed with records unsent: {exc!r}"))
    return errors
