"""Sinks: where results go. ``add()`` queues, ``flush()`` makes it durable (the checkpoint calls it
before committing offsets, so nothing committed can be missing downstream).

- :class:`KafkaSink` — one topic on a shared idempotent producer (``acks=all``).
- :class:`JsonlSink` — appends JSON lines to a file (the embedded default's outputs).
- :class:`MemorySink` — keeps everything in a list, for unit tests.
"""

from __future__ import annotations

import base64
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

from stream.errors import SinkError

__all__ = ["JsonlSink", "KafkaSink", "MemorySink", "Sink", "close_sinks", "make_producer"]


class Sink(ABC):
    @abstractmethod
    def add(self, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None) -> None: ...

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


class MemorySink(Sink):
    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []

    def add(self, value, key=None, headers=None) -> None:
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

    def add(self, value, key=None, headers=None) -> None:
        if self.envelope:
            value = json.dumps({**_as_text("value", value), **_as_text("key", key),
                                "headers": [[k, (v or b"").decode("utf-8", "replace")] for k, v in headers or ()]},
                               ensure_ascii=False).encode()
        self._f.write(value.rstrip(b"\n") + b"\n")

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self.flush()
        self._f.close()


def _as_text(name: str, raw: bytes | None) -> dict:
    if raw is None:
        return {name: None}
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(raw).decode("ascii")}


def make_producer(bootstrap_servers: str, client_config: dict | None = None):
    """An idempotent, ``acks=all`` producer shared by all Kafka sinks of a process."""
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=20,
                         max_request_size=16 * 1024 * 1024, compression_type=None,
                         **(client_config or {}))


class KafkaSink(Sink):
    """One topic. ``flush()`` returns only when every record added so far is acknowledged.

    A record whose delivery failed (e.g. the broker was gone past the producer's delivery timeout)
    is sent again, and ``flush()`` raises until it is acknowledged: the checkpoint that depends on
    the flush is postponed instead of covering an output that never arrived.
    """

    def __init__(self, producer, topic: str, flush_timeout: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout = flush_timeout
        self._pending: list[tuple[tuple, object]] = []   # ((value, key, headers), future)

    def _send(self, value, key, headers):
        return self.producer.send(self.topic, value=value, key=key, headers=headers)

    def add(self, value, key=None, headers=None) -> None:
        from kafka.errors import KafkaError

        args = (value, key, list(headers or []))
        try:
            self._pending.append((args, self._send(*args)))
        except KafkaError as exc:
            raise SinkError(f"send to {self.topic} failed: {exc!r}") from exc

    def flush(self) -> None:
        from kafka.errors import KafkaError

        try:
            self.producer.flush(timeout=self.flush_timeout)
        except KafkaError as exc:
            raise SinkError(f"flush of {self.topic} timed out: {exc!r}") from exc
        still, failed = [], 0
        for args, fut in self._pending:
            if not fut.is_done:
                still.append((args, fut))
            elif fut.failed():
                failed += 1
                still.append((args, self._send(*args)))   # deliver it again
        self._pending = still
        if still:
            raise SinkError(f"{len(still)} records to {self.topic} not acknowledged yet ({failed} re-sent)")

    def close(self) -> None:
        self.flush()


def close_sinks(*sinks: Sink | None) -> list[SinkError]:
    """Close every sink (flushing it), then the Kafka producer they share; returns the errors."""
    errors, producers = [], []
    for sink in sinks:
        if sink is None:
            continue
        try:
            sink.close()
        except SinkError as exc:
            errors.append(exc)
        producer = getattr(sink, "producer", None)
        if producer is not None and all(producer is not p for p in producers):
            producers.append(producer)
    for producer in producers:
        producer.close(timeout=10)
    return errors
