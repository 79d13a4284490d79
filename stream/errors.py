"""Errors raised by ``stream``; kafka-python's are translated at this boundary (:func:`map_kafka_errors`).

The whole tree is drawn in :mod:`xtream.errors`; this package's part of it::

    XtreamStreamError
    ├── SourceUnavailable   the broker cannot be reached (retry; report not-ready)
    ├── SinkError           a publish did not reach the broker in time
    │   ├── RecordTooLarge  a record over the output topic's size limit: it can never be delivered
    │   └── TransactionFailed  an output transaction did not commit: its outputs are void
    └── KafkaSetupError     (xtream.stream.kafka_broker) the local broker could not be started

:class:`~xtream.stream.schemas.InvalidRecord` (a record that cannot become a document) is not a
failure of the stream: it sits directly under :class:`~xtream.errors.XtreamError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from xtream.errors import XtreamError

__all__ = ["RecordTooLarge", "SinkError", "SourceUnavailable", "TransactionFailed", "XtreamStreamError",
           "map_kafka_errors"]


class XtreamStreamError(XtreamError, RuntimeError):
    """Root of stream errors."""


class SourceUnavailable(XtreamStreamError):
    """Polling or committing failed because the broker is unreachable."""


class SinkError(XtreamStreamError):
    """Records could not be delivered (flush timed out or the broker refused them)."""


class RecordTooLarge(SinkError):
    """A record exceeds the output topic's size limit; sending it again would never succeed."""


class TransactionFailed(SinkError):
    """An output transaction did not commit (aborted, fenced or timed out): the outputs and offsets
    it carried are void, so the work since the last committed one must be done again."""


@contextmanager
def map_kafka_errors(to: type[XtreamStreamError], what: str) -> Iterator[None]:
    """Re-raise kafka-python's ``KafkaError`` inside the block as ``to(f"{what}: {error!r}")``.

    The one place where a foreign error becomes one of ours: the block's own errors (already in
    the tree) pass through unchanged.
    """
    from kafka.errors import KafkaError

    try:
        yield
    except KafkaError as exc:
        raise to(f"{what}: {exc!r}") from exc
