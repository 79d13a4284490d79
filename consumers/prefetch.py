"""Embedding the next batch while the loop finishes the current one.

The embedder is most of a document's cost, but the loop also parses, assigns, publishes, snapshots
and checkpoints. Run in sequence, the embedder idles during that work. :class:`BatchPrefetcher` moves the
preparation (parse, embed, tokenise) of each polled batch onto worker threads, so the loop's own
work for batch *n* overlaps the embedding of the batches after it.

What does not change, by construction:

- the Kafka consumer is only touched by the loop's thread (kafka-python is not thread-safe): the
  worker receives records that were already polled and returns prepared batches;
- batches are handed back in the order they were polled, and the loop still advances its offsets
  only after learning and publishing a batch, so a checkpoint (and a commit) never covers a batch
  still being embedded; a kill -9 loses at most work that the next start re-reads;
- a clean stop drains what was submitted, so the consumer's position (what was handed out) and
  the service's offsets (what was learned) agree again before the last checkpoint.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

from xtream.stream.records import Record

__all__ = ["BatchPrefetcher"]

Prepared = TypeVar("Prepared")


class BatchPrefetcher(Generic[Prepared]):
    """A FIFO of polled batches being prepared by worker threads.

    Parameters
    ----------
    prepare
        Records -> prepared batch. It runs on the worker and must not raise on bad input (the
        intakes dead-letter it); an unexpected exception is re-raised by :meth:`take`.
    workers
        Batches prepared at once. Two pay off when the embedder runs in its own process: while
        one worker waits for the embedder, the other parses the next batch and has it queued
        the moment the embedder is free, and tokenising a batch overlaps embedding the next.
        ``prepare`` must then be thread-safe; results still come back in submission order.
    """

    def __init__(self, prepare: Callable[[list[Record]], Prepared], workers: int = 1) -> None:
        self._prepare = prepare
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xtream-embed")
        self._queue: deque[tuple[list[Record], Future]] = deque()

    def __len__(self) -> int:
        """Batches submitted and not yet taken."""
        return len(self._queue)

    def submit(self, records: list[Record]) -> None:
        self._queue.append((records, self._executor.submit(self._prepare, records)))

    def take(self) -> tuple[list[Record], Prepared]:
        """The oldest batch and its preparation, waiting for it if need be."""
        records, future = self._queue.popleft()
        return records, future.result()

    def close(self) -> None:
        """Stop the worker; batches not taken are dropped (their offsets were never advanced)."""
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=True)
