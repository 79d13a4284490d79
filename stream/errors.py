"""Errors raised by ``stream``; kafka-python's are translated at this boundary.

    XtreamStreamError
    ├── SourceUnavailable   the broker cannot be reached (retry; report not-ready)
    └── SinkError           a publish did not reach the broker in time
        ├── RecordTooLarge  a record over the output topic's size limit: it can never be delivered
        └── TransactionFailed  an output transaction did not commit: its outputs are void
"""

from __future__ import annotations

__all__ = ["RecordTooLarge", "SinkError", "TransactionFailed", "SourceUnavailable", "XtreamStreamError"]


class XtreamStreamError(RuntimeError):
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
