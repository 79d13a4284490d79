"""Exactly-once outputs: a Kafka transaction per checkpoint interval.

Every output of the interval (assignments, dead letters, snapshots, lineage) is sent inside the
transactional producer's open transaction; at the checkpoint the input offsets it covers join the
same transaction (``send_offsets_to_transaction``) and it commits. A ``read_committed`` reader of
the outputs then sees each document's assignment once, and the group's committed offsets are
exactly those of the last committed transaction. The service writes its model checkpoint before
committing, and on start keeps only a checkpoint whose offsets the group has committed (see
:func:`covered_by`): a crash between the two leaves a checkpoint that is skipped, so its outputs,
aborted with the transaction, are produced again.

kafka-python's transactional calls wait without a deadline; each runs here on a helper thread and
the caller waits at most ``timeout`` seconds, so a gone broker cannot hold a stop forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from xtream.stream.errors import TransactionFailed
from xtream.stream.records import split_offset_key

__all__ = ["OutputTransactions", "covered_by"]

logger = logging.getLogger(__name__)


def covered_by(checkpoint_offsets: dict[str, int], committed: dict[str, int]) -> bool:
    """Whether every offset of a checkpoint is at or below the group's committed offset: the
    checkpoint's transaction committed (equal), or an older one of this run did (below)."""
    return all(committed.get(key, -1) >= off for key, off in checkpoint_offsets.items())


class OutputTransactions:
    """The open transaction of a transactional producer (``make_producer(transactional_id=...)``)."""

    def __init__(self, producer: Any, timeout: float = 30.0) -> None:
        self.producer = producer
        self.timeout = timeout
        self.open = False

    def init(self) -> None:
        """Fence older producers with this transactional id and finish (commit or abort) their open
        transaction; call once before reading the group's committed offsets."""
        self._bounded(self.producer.init_transactions, "init_transactions")

    def begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True

    def commit(self, offsets: dict[str, int], group_metadata: Any) -> None:
        """Add the input ``offsets`` to the open transaction and commit it; raises :class:`TransactionFailed`
        (after aborting, when the producer still can) if that does not succeed within ``timeout``."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        payload = {TopicPartition(*split_offset_key(key)): OffsetAndMetadata(off, "", -1)
                   for key, off in offsets.items()}
        try:
            if payload:
                self._bounded(lambda: self.producer.send_offsets_to_transaction(payload, group_metadata),
                              "send_offsets_to_transaction")
            self._bounded(self.producer.commit_transaction, "commit_transaction")
        except TransactionFailed:
            self.abort()
            raise
        self.open = False

    def abort(self) -> None:
        """Abort the open transaction, if the producer is still able to (best effort, bounded)."""
        if not self.open:
            return
        self.open = False
        try:
            self._bounded(self.producer.abort_transaction, "abort_transaction")
        except TransactionFailed as exc:
            logger.warning("aborting the transaction failed (the broker aborts it at its timeout): %s", exc)

    def _bounded(self, call: Callable[[], Any], what: str) -> None:
        from kafka.errors import KafkaError

        outcome: dict[str, BaseException] = {}

        def run() -> None:
            try:
                call()
            except BaseException as exc:   # handed to the caller's thread below
                outcome["error"] = exc

        worker = threading.Thread(target=run, name=f"xtream-{what}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            raise TransactionFailed(f"{what} did not finish within {self.timeout:.0f} s")
        error = outcome.get("error")
        if isinstance(error, (KafkaError, AssertionError)):
            raise TransactionFailed(f"{what} failed: {error!r}") from error
        if error is not None:
            raise error
