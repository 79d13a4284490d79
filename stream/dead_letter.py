"""Dead-letter records: the original bytes, key and headers, plus why and where it came from."""

from __future__ import annotations

from xtream.stream.records import Record

__all__ = ["dead_letter_headers"]

MAX_HEADER_VALUE = 1024


def dead_letter_headers(record: Record, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Original headers first, then ``xtream.*`` headers a machine can route on."""
    ours = [
        ("xtream.error.reason", reason.encode()),
        ("xtream.error.detail", detail.encode("utf-8", "replace")[:MAX_HEADER_VALUE]),
        ("xtream.source.topic", record.topic.encode()),
        ("xtream.source.partition", str(record.partition).encode()),
        ("xtream.source.offset", str(record.offset).encode()),
    ]
    if record.timestamp_ms is not None:
        ours.append(("xtream.source.timestamp", str(record.timestamp_ms).encode()))
    return list(record.headers) + ours
