"""Intake: records in, prepared documents (language, tokens, embedding, provenance) out.

Two intakes, one product, so the single-process service and the scale-out topology share code:

- :class:`TextIntake` parses raw :class:`~stream.schemas.Document` JSON, checks the language,
  embeds and tokenises (``--role all`` and ``--role embedder``);
- :class:`EmbeddedIntake` decodes the compact :class:`~stream.schemas.EmbeddedDocument` records
  that embedders publish, dropping re-deliveries by the source offsets already learned
  (``--role trainer``).

Both implement :class:`Intake` and return a :class:`PreparedBatch`; records that cannot be used
come back in ``dead`` with a reason for the dead-letter topic. Neither ever raises on bad input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from xtream.consumers.metrics import ServiceMetrics
from xtream.model.embedding import Embedder
from xtream.model.text import Tokenizer, detect_language
from xtream.stream.records import Record, offset_key
from xtream.stream.schemas import Document, EmbeddedDocument, InvalidRecord, parse_document

__all__ = ["EmbeddedIntake", "Intake", "PreparedBatch", "PreparedItem", "TextIntake"]

logger = logging.getLogger(__name__)

_EMBED_ERRORS = (ValueError, RuntimeError, FloatingPointError, IndexError)
TEXT_PREFIX_CHARS = 200   # characters of each text kept for the topics' representative documents


@dataclass(frozen=True)
class PreparedItem:
    """Where a prepared document came from: its id, language, time and original input position."""

    id: str
    lang: str
    timestamp: datetime | None
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int | None
    text_prefix: str = ""   # the first characters of the text (representative documents)


@dataclass
class PreparedBatch:
    items: list[PreparedItem] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    dead: list[tuple[Record, str, str]] = field(default_factory=list)
    #: The consumed record each item came from (for an embedded record, not the original input).
    records: list[Record] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def only(self, keep) -> "PreparedBatch":
        """The part of the batch whose consumed records ``keep(record)`` accepts."""
        idx = [i for i, rec in enumerate(self.records) if keep(rec)]
        return PreparedBatch(items=[self.items[i] for i in idx], tokens=[self.tokens[i] for i in idx],
                             embeddings=self.embeddings[idx],
                             dead=[d for d in self.dead if keep(d[0])], records=[self.records[i] for i in idx])


class Intake(Protocol):
    """Records in, a :class:`PreparedBatch` out; touches neither the model nor the consumer."""

    #: Worth preparing ahead of the loop, on the prefetch worker (its state, if any, is not read
    #: by a checkpoint while a batch is in flight).
    prefetch: bool

    def prepare(self, records: list[Record], metrics: ServiceMetrics | None = None) -> PreparedBatch:
        """The batch, timing its stages (and counting skipped records) in ``metrics`` if given."""
        ...

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint must keep of the intake (None: nothing)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class TextIntake:
    """Parse -> language check -> embed + tokenise, batched."""

    prefetch = True

    def __init__(self, embedder: Embedder, tokenizer: Tokenizer, languages: frozenset[str],
                 max_record_bytes: int) -> None:
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.languages = languages
        self.max_record_bytes = max_record_bytes

    def parse(self, records: list[Record]) -> tuple[list[Document], list[Record], list[tuple[Record, str, str]]]:
        docs, good, dead = [], [], []
        for rec in records:
            try:
                doc = parse_document(rec.value, max_bytes=self.max_record_bytes)
            except InvalidRecord as exc:
                dead.append((rec, exc.reason, exc.detail))
                continue
            if doc.lang is None:
                doc = doc.model_copy(update={"lang": detect_language(doc.text, self.languages)})
            if doc.lang not in self.languages:
                dead.append((rec, "unsupported_language", f"lang {doc.lang!r} is not in the accepted languages"))
                continue
            docs.append(doc)
            good.append(rec)
        return docs, good, dead

    def embed(self, docs: list[Document]) -> tuple[np.ndarray, list[list[str]]]:
        texts = [d.text for d in docs]
        langs = [d.lang for d in docs]
        return self.embedder.encode(texts), self.tokenizer.tokenize_many(texts, langs)

    def prepare(self, records: list[Record], metrics: ServiceMetrics | None = None) -> PreparedBatch:
        started = time.perf_counter()
        docs, good, dead = self.parse(records)
        if metrics is not None:
            metrics.stage_seconds.labels("parse").observe(time.perf_counter() - started)
            with metrics.stage_seconds.labels("embed").time():
                return self._embedded(docs, good, dead)
        return self._embedded(docs, good, dead)

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def _embedded(self, docs: list[Document], good: list[Record], dead: list[tuple[Record, str, str]]) -> PreparedBatch:
        batch = PreparedBatch(dead=list(dead))
        if not docs:
            return batch
        try:
            embeddings, tokens = self.embed(docs)
            keep = list(range(len(docs)))
        except _EMBED_ERRORS as exc:   # find the culprits one by one; the rest go on
            logger.exception("embedding a batch of %d failed (%s); retrying one by one", len(docs), exc)
            rows, tokens, keep = [], [], []
            for i, doc in enumerate(docs):
                try:
                    e, t = self.embed([doc])
                except _EMBED_ERRORS as one:
                    batch.dead.append((good[i], "processing_error", repr(one)[:500]))
                    continue
                rows.append(e)
                tokens.extend(t)
                keep.append(i)
            embeddings = np.concatenate(rows) if rows else np.zeros((0, self.embedder.dim), np.float32)
        batch.embeddings = embeddings
        batch.tokens = tokens
        batch.items = [PreparedItem(docs[i].id, docs[i].lang or "", docs[i].timestamp, good[i].topic, good[i].partition,
                                    good[i].offset, good[i].timestamp_ms, docs[i].text[:TEXT_PREFIX_CHARS])
                       for i in keep]
        batch.records = [good[i] for i in keep]
        return batch


class EmbeddedIntake:
    """Decode embedders' records; skip what was already learned (at-least-once upstream).

    An embedder that dies after publishing but before committing its input offsets makes its
    successor publish the same documents again. Embedders key their output by input partition,
    so each input partition's documents arrive in order; a document at or below the highest
    source offset already learned for its partition is a re-delivery and is skipped.
    ``source_hwm`` is part of the trainer's checkpoint.
    """

    #: Decoding is cheap, and ``source_hwm`` must match what the checkpoint covers.
    prefetch = False

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.source_hwm: dict[str, int] = {}
        self.duplicates = 0

    def prepare(self, records: list[Record], metrics: ServiceMetrics | None = None) -> PreparedBatch:
        started, before = time.perf_counter(), self.duplicates
        batch = self._decode(records)
        if metrics is not None:
            metrics.duplicates_skipped.inc(self.duplicates - before)
            metrics.stage_seconds.labels("parse").observe(time.perf_counter() - started)
        return batch

    def _decode(self, records: list[Record]) -> PreparedBatch:
        batch = PreparedBatch()
        rows = []
        for rec in records:
            try:
                doc = EmbeddedDocument.model_validate_json(rec.value or b"")
                vec = doc.vector()
            except (ValidationError, ValueError) as exc:
                batch.dead.append((rec, "invalid_embedded_record", str(exc)[:500]))
                continue
            if vec.shape != (self.dim,):
                batch.dead.append((rec, "invalid_embedded_record",
                                   f"embedding has dim {vec.shape}, expected {self.dim}"))
                continue
            key = offset_key(doc.source_topic, doc.source_partition)
            if doc.source_offset <= self.source_hwm.get(key, -1):
                self.duplicates += 1
                continue
            self.source_hwm[key] = doc.source_offset
            rows.append(vec)
            batch.tokens.append(list(doc.tokens))
            batch.records.append(rec)
            batch.items.append(PreparedItem(doc.id, doc.lang, doc.timestamp, doc.source_topic, doc.source_partition,
                                            doc.source_offset, doc.source_timestamp_ms, doc.text_prefix or ""))
        batch.embeddings = np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)
        return batch

    def state_dict(self) -> dict:
        return {"source_hwm": dict(self.source_hwm)}

    def load_state_dict(self, state: dict) -> None:
        self.source_hwm = {k: int(v) for k, v in state.get("source_hwm", {}).items()}
