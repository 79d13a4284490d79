"""Learning prepared batches into the model and turning them into outputs.

A batch is learned all or nothing (:meth:`OnlineTopicModel.learn_many`); one the model refuses is
retried document by document so that only the culprits are dead-lettered. A learned batch is
assigned (theta, prevalence, representative documents) and its assignment records go to the outbox.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np

from xtream.consumers.assignments import assignments, latest_event_time, record_times
from xtream.consumers.intake import PreparedBatch, PreparedItem
from xtream.consumers.metrics import ServiceMetrics
from xtream.consumers.outbox import Outbox
from xtream.errors import ModelError
from xtream.model.embedding import Embedder, LanguageCentering
from xtream.model.online import MaintenanceFailed, OnlineTopicModel
from xtream.model.prevalence_shift import PrevalenceShift
from xtream.model.text import Tokenizer
from xtream.stream.dead_letter import dead_letter_headers
from xtream.stream.records import Record

__all__ = ["BatchLearner"]

logger = logging.getLogger(__name__)

#: Room left in a dead letter's value for its headers and framing.
DEAD_LETTER_HEADROOM_BYTES = 4096


class BatchLearner:
    """Learns and assigns prepared batches under ``lock``; calls ``on_learned(items)`` for every
    document the model learned and ``on_dead(reason)`` for every dead letter.

    Attributes
    ----------
    stream_time
        The latest event time learned so far (None before the first with one).
    """

    def __init__(self, model: OnlineTopicModel, centering: LanguageCentering | None, prevalence_shift: PrevalenceShift,
                 outbox: Outbox, metrics: ServiceMetrics, lock: threading.RLock,
                 on_learned: Callable[[list[PreparedItem]], None], on_dead: Callable[[str], None]) -> None:
        self.model = model
        self.centering = centering
        self.prevalence_shift = prevalence_shift
        self.outbox = outbox
        self.metrics = metrics
        self.lock = lock
        self.on_learned = on_learned
        self.on_dead = on_dead
        self.stream_time: datetime | None = None

    def learn(self, batch: PreparedBatch) -> None:
        """Dead-letter ``batch.dead``, learn and assign the rest; never raises on what the model refuses."""
        for rec, reason, detail in batch.dead:
            self.dead_letter(rec, reason, detail)
        if not len(batch):
            return
        try:
            self._learn_and_assign(batch)
        except ModelError as exc:
            # The model refused the batch before changing anything (learning is all or nothing):
            # retry one by one, dead-lettering the culprits.
            logger.exception("batch of %d failed (%s); retrying document by document", len(batch), exc)
            for i, item in enumerate(batch.items):
                one = PreparedBatch(items=[item], tokens=[batch.tokens[i]], embeddings=batch.embeddings[i:i + 1],
                                    records=[batch.records[i]])
                try:
                    self._learn_and_assign(one)
                except ModelError as err:
                    self.dead_letter(batch.records[i], "processing_error", repr(err)[:500])

    def _learn_and_assign(self, batch: PreparedBatch) -> None:
        """Learn the batch (all or nothing) and queue its assignments; a document the model learned
        but could not assign is dead-lettered (``processing_error``), never learned twice."""
        items, tokens = batch.items, batch.tokens
        langs = [it.lang for it in items]
        with self.lock:
            embeddings = self._learn(tokens, batch.embeddings, langs)
            try:
                with self.metrics.stage_seconds.labels("infer").time():
                    clusters, theta = self.model.predict_many(tokens, embeddings, langs)
                    self.model.observe_topics(theta, langs)
                    self.prevalence_shift.learn_many(clusters)
                    self.model.remember_documents([(it.id, it.text_prefix) for it in items], embeddings, langs)
            except ModelError as exc:
                logger.exception("documents learned but not assigned: dead-lettered")
                for rec in batch.records:
                    self.dead_letter(rec, "processing_error", f"learned, not assigned: {exc!r}"[:500])
                self.on_learned(items)
                return
            version = self.model.version
        self._publish(items, clusters, theta, version)

    def _learn(self, tokens: list[list[str]], embeddings: np.ndarray, langs: list[str]) -> np.ndarray:
        """Centre (learning the centring) and learn the batch; returns the centred embeddings. A
        refused batch leaves the centring as it was."""
        centering_before = None if self.centering is None else self.centering.state_dict()
        if self.centering is not None:
            self.centering.learn_many(embeddings, langs)
            embeddings = self.centering.transform_many(embeddings, langs)
        with self.metrics.stage_seconds.labels("assign").time():
            try:
                self.model.learn_many(tokens, embeddings, langs)
            except MaintenanceFailed as exc:
                logger.error("%s (cause: %r)", exc, exc.__cause__)
            except ModelError:
                if self.centering is not None and centering_before is not None:   # nothing may stay learned
                    self.centering.load_state_dict(centering_before)
                raise
        return embeddings

    def _publish(self, items: list[PreparedItem], clusters: np.ndarray, theta: np.ndarray, version: int) -> None:
        now = datetime.now(timezone.utc)
        for a in assignments(items, clusters, theta, version, now):
            self.outbox.emit("assignments", a.model_dump_json().encode(), key=a.document_id.encode())
        latest = latest_event_time(items, now)
        if latest is not None:
            self.stream_time = latest if self.stream_time is None else max(self.stream_time, latest)
        now_ms = now.timestamp() * 1000
        self.metrics.latencies(max(0.0, (now_ms - ms) / 1000) for ms in record_times(items))
        self.on_learned(items)

    def dead_letter(self, rec: Record, reason: str, detail: str) -> None:
        """Queue ``rec`` for the dead-letter output with its reason; a value too large for the sink is cut."""
        value = rec.value if rec.value is not None else b""
        sink = self.outbox.sink("dead_letters")
        limit = None if sink is None else sink.max_value_bytes
        headers = dead_letter_headers(rec, reason, detail)
        if limit is not None and len(value) > limit - DEAD_LETTER_HEADROOM_BYTES:
            headers.append(("xtream.error.truncated_from", str(len(value)).encode()))
            value = value[:max(0, limit - DEAD_LETTER_HEADROOM_BYTES)]
        self.outbox.emit("dead_letters", value, key=rec.key, headers=headers)
        self.metrics.dead_letter(reason)
        self.on_dead(reason)

    def assign_texts(self, embedder: Embedder, tokenizer: Tokenizer, texts: list[str],
                     langs: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """``(clusters, theta, model version)`` of new texts under the current model, which does not change."""
        embeddings = embedder.encode(texts)
        tokens = tokenizer.tokenize_many(texts, langs)
        with self.lock:
            if self.centering is not None:
                embeddings = self.centering.transform_many(embeddings, langs)
            clusters, theta = self.model.predict_many(tokens, embeddings, langs)
            return clusters, theta, self.model.version
