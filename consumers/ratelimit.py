"""Admission control for the HTTP API: per-client token buckets and a bounded assignment queue.

Assignment requests embed text on the same embedder as ingestion, so a client looping on
``/documents:assign`` would take the embedder from the stream. Two limits keep it in its lane:

- :class:`ClientRateLimiter`: each client (by address) gets ``burst`` requests, refilled at
  ``per_second``; past that, the caller answers 429 with ``Retry-After``. The table of clients is
  bounded (least recently seen clients are forgotten first).
- :class:`AssignmentQueue`: at most ``concurrency`` assignments run at once and ``depth`` more
  wait; the rest are refused at once (429 with ``Retry-After``). Assignment work is kept within
  ``max_share`` of wall time by a :class:`~consumers.backpressure.DutyCycle`, so ingestion keeps the
  rest of the embedder whatever the clients do.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from xtream.consumers.backpressure import DutyCycle
from xtream.errors import XtreamError

__all__ = ["AssignmentQueue", "Busy", "ClientRateLimiter"]


class Busy(XtreamError):
    """Refused for now; ``retry_after`` is the whole number of seconds after which to try again."""

    def __init__(self, retry_after: float, detail: str) -> None:
        super().__init__(detail)
        self.retry_after = max(1, math.ceil(retry_after))
        self.detail = detail


class ClientRateLimiter:
    """Token buckets per client key, ``burst`` deep, refilled at ``per_second``."""

    def __init__(self, per_second: float, burst: int, max_clients: int = 10_000) -> None:
        if per_second <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("per_second > 0, burst >= 1 and max_clients >= 1 are required")
        self.per_second = per_second
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> None:
        """Spend one token of ``key``'s bucket, or raise :class:`Busy` with the wait until the next."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.per_second)
            if tokens >= 1:
                tokens -= 1
                wait = 0.0
            else:
                wait = (1 - tokens) / self.per_second
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        if wait:
            raise Busy(wait, f"rate limit: {self.burst} requests, then {self.per_second:g} per second per client")


class AssignmentQueue:
    """At most ``concurrency`` assignments at once, ``depth`` waiting, within ``max_share`` of wall time."""

    def __init__(self, concurrency: int, depth: int, max_share: float, wait_seconds: float = 30.0) -> None:
        if concurrency < 1 or depth < 0:
            raise ValueError("concurrency >= 1 and depth >= 0 are required")
        self.concurrency = concurrency
        self.depth = depth
        self.wait_seconds = wait_seconds
        self._slots = threading.Semaphore(concurrency)
        self._admitted = 0
        self._lock = threading.Lock()
        self._duty = DutyCycle(max_share)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Run the body in a slot; raise :class:`Busy` when the queue is full or the share is spent."""
        with self._lock:
            if self._admitted >= self.concurrency + self.depth:
                raise Busy(1.0, f"assignment queue full ({self.concurrency} running, {self.depth} waiting)")
            self._admitted += 1
        try:
            if not self._slots.acquire(timeout=self.wait_seconds):
                raise Busy(1.0, "assignment queue: timed out waiting for a slot")
            try:
                with self._lock:
                    wait = self._duty.wait_seconds(time.monotonic())
                if wait > 0:
                    raise Busy(wait, "assignments have used their share of the embedder; try again later")
                started = time.monotonic()
                try:
                    yield
                finally:
                    with self._lock:
                        self._duty.ran(started, time.monotonic())
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._admitted -= 1
