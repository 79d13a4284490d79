"""The unit that moves between sources, the service and sinks; free of any client library type."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Record", "offset_key", "split_offset_key"]


def offset_key(topic: str, partition: int) -> str:
    """``"topic:partition"``: how offsets are keyed in checkpoints and snapshots (JSON-friendly)."""
    return f"{topic}:{partition}"


def split_offset_key(key: str) -> tuple[str, int]:
    """The inverse of :func:`offset_key`."""
    topic, partition = key.rsplit(":", 1)
    return topic, int(partition)


@dataclass(frozen=True)
class Record:
    """One consumed message. ``offset`` is its own offset; the next one to read is ``offset + 1``."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    timestamp_ms: int | None = None

    @property
    def position(self) -> str:
        return offset_key(self.topic, self.partition)
