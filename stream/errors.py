"""Errors raised by ``stream``; kafka-python's are translated at this boundary.

    XtreamStreamError
    ├── SourceUnavailable   the broker cannot be reached (retry; report not-ready)
    └── SinkError           a publish did not reach the broker in time
"""

from __future__ import annotations

__all__ = ["SinkError", "SourceUnavailable", "XtreamStreamError"]


class XtreamStreamError(RuntimeError):
    """Root of stream errors."""


class SourceUnavailable(XtreamStreamError):
    """Polling or committing failed because the broker is unreachable."""


class SinkError(XtreamStreamError):
    """Records could not be delivered (flush timed out or the broker refused them)."""
